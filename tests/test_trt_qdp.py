"""The Python (QDP) plugin form without TensorRT: signatures, shape math, and registration
against a stand-in for ``tensorrt.plugin`` that checks the schemas TensorRT's validators check
(inputs then attributes for ``register``; ``(inputs, attrs, outputs, stream)`` for ``impl``;
``(inputs, outputs)`` for ``autotune``)."""

from __future__ import annotations

import inspect
import re
import sys
import typing
from importlib.machinery import ModuleSpec
from types import SimpleNamespace
from typing import Any

import pytest

from trimformer import plugins_qdp
from trimformer.errors import UsageError
from trimformer.graph_passes.base import plugin_specs
from trimformer.ops import get_op, registered_ops
from trimformer.plugins_qdp import (
    QdpShapeError,
    descriptor_signature,
    impl_signature,
    output_dims,
    output_token_count,
    qdp_id,
    register_qdp_plugins,
)
from trimformer.runtime import trt_env

MERGE, SELECT = get_op("BipartiteMerge"), get_op("TopKSelect")


def test_ids_signatures_and_shapes_are_derived_from_the_registry():
    assert qdp_id(MERGE) == "trimformer::BipartiteMerge"

    class Desc:
        pass

    signature = descriptor_signature(MERGE, Desc)
    assert list(signature.parameters) == ["x", "metric", "size", "r", "protected"]
    assert [p.annotation for p in signature.parameters.values()] == [Desc, Desc, Desc, int, int]
    assert typing.get_origin(signature.return_annotation) is tuple
    assert typing.get_args(signature.return_annotation) == (Desc, Desc)
    assert str(impl_signature(SELECT)) == "(x, scores, size, k, protected, fuse, outputs, stream)"
    attrs = {"r": 13, "protected": 1}
    assert output_dims(MERGE, (None, 197, 384), attrs) == ((None, 184, 384), (None, 184, 1))
    assert output_dims(SELECT, (8, 197, 64), {"k": 98, "protected": 1, "fuse": 1})[0] == (
        8,
        100,
        64,
    )


@pytest.mark.parametrize(
    ("dims", "attrs", "match"),
    [
        ((1, None, 8), {"r": 1, "protected": 1}, "must be static"),
        ((1, 9, 8), {"r": 5, "protected": 1}, "exceeds the maximum 4"),
        ((1, 9), {"r": 1, "protected": 1}, r"must be \[B,N,C\]"),
    ],
)
def test_shape_errors_name_the_plugin(dims, attrs, match):
    with pytest.raises(QdpShapeError, match=match) as info:
        output_dims(MERGE, dims, attrs)
    assert "trimformer::BipartiteMerge" in str(info.value)
    assert output_token_count(MERGE, 9, {"r": 4, "protected": 1}) == 5


# ------------------------------------------------------------------ a stand-in tensorrt.plugin


class ShapeExpr:
    def __init__(self, value: int | None) -> None:
        self.value = value

    @property
    def is_constant(self) -> bool:
        return self.value is not None

    def constant_value(self) -> int:
        assert self.value is not None
        return self.value


class ShapeExprs(list):
    """As in TensorRT 10.6-10.8, an assigned value is stored as it is (an int would break)."""


class TensorDesc:
    def __init__(self, *dims: int | None, dtype: str = "float32") -> None:
        self.shape_expr = ShapeExprs(ShapeExpr(d) for d in dims)
        self.dtype = dtype

    def like(self) -> TensorDesc:
        return TensorDesc(*(e.value for e in self.shape_expr))

    @property
    def dims(self) -> tuple[int | None, ...]:
        return tuple(e.value for e in self.shape_expr)


class KernelLaunchParams:
    grid_x: Any = 1
    block_x: int = 1
    shared_mem: int = 0


class SymInt32:
    def __init__(self, expr: Any) -> None:
        self.expr = expr


class SymIntExprs(list):
    def __init__(self, count: int) -> None:
        super().__init__([None] * count)


def fake_trtp() -> SimpleNamespace:
    plugins: dict[str, dict[str, Any]] = {}

    def names(fn: Any) -> list[str]:
        return list(inspect.signature(fn).parameters)

    def register(plugin_id: str) -> Any:
        def decorate(fn: Any) -> Any:
            signature = inspect.signature(fn)
            params = list(signature.parameters.values())
            tensors = [p for p in params if p.annotation is TensorDesc]
            assert params[: len(tensors)] == tensors, "tensors first, then attributes"
            assert all(p.annotation in (int, float) for p in params[len(tensors) :])
            assert typing.get_origin(signature.return_annotation) is tuple
            plugins[plugin_id] = {"describe": fn, "inputs": [p.name for p in tensors]}
            plugins[plugin_id]["attrs"] = [p.name for p in params[len(tensors) :]]
            return fn

        return decorate

    def impl(plugin_id: str) -> Any:
        def decorate(fn: Any) -> Any:
            plugin = plugins[plugin_id]
            assert names(fn) == [*plugin["inputs"], *plugin["attrs"], "outputs", "stream"]
            plugin["impl"] = fn
            return fn

        return decorate

    def aot_impl(plugin_id: str) -> Any:
        def decorate(fn: Any) -> Any:
            plugin = plugins[plugin_id]
            signature = inspect.signature(fn)
            assert names(fn) == [*plugin["inputs"], *plugin["attrs"], "outputs", "tactic"]
            returns = typing.get_args(signature.return_annotation)
            assert returns[2:] == (KernelLaunchParams, SymIntExprs), "return annotation required"
            plugin["aot"] = fn
            return fn

        return decorate

    def autotune(plugin_id: str) -> Any:
        def decorate(fn: Any) -> Any:
            assert names(fn) == [*plugins[plugin_id]["inputs"], "outputs"]
            plugins[plugin_id]["autotune"] = fn
            return fn

        return decorate

    return SimpleNamespace(
        register=register,
        impl=impl,
        aot_impl=aot_impl,
        autotune=autotune,
        KernelLaunchParams=KernelLaunchParams,
        SymInt32=SymInt32,
        SymIntExprs=SymIntExprs,
        ShapeExpr=ShapeExpr,
        TensorDesc=TensorDesc,
        AutoTuneCombination=lambda types, layouts: (types, layouts),
        plugins=plugins,
    )


@pytest.fixture
def trtp(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    fake = fake_trtp()
    trt = SimpleNamespace(
        __version__="10.9.0.34",
        __spec__=ModuleSpec("tensorrt", None),  # torch's lazy imports look modules up by spec
        Builder=object,
        plugin=fake,
        float16="float16",
        float32="float32",
    )
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", fake)
    monkeypatch.setattr(trt_env, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(plugins_qdp, "_registered", [])
    monkeypatch.setattr(plugins_qdp, "_aot_registered", [])
    return fake


def test_every_op_registers_with_descriptor_impl_and_autotune(trtp):
    ids = register_qdp_plugins()
    assert ids == [qdp_id(spec) for spec in plugin_specs().values()]
    assert len(ids) == len(registered_ops())
    assert register_qdp_plugins() == ids  # once per process
    for plugin in trtp.plugins.values():
        assert {"describe", "impl", "autotune"} <= set(plugin)
    diverse = trtp.plugins["trimformer::DiverseSelect"]  # DivPrune's plugin
    assert str(impl_signature(get_op("DiverseSelect"))) == (
        "(x, features, size, k, protected, outputs, stream)"
    )
    # TensorRT passes the descriptor's attributes by keyword
    x_out, size_out = diverse["describe"](
        TensorDesc(2, 17, 8), TensorDesc(2, 17, 6), TensorDesc(2, 17, 1), k=5, protected=1
    )
    assert x_out.dims == (2, 6, 8) and size_out.dims == (2, 6, 1)
    merge = trtp.plugins["trimformer::BipartiteMerge"]
    x_out, size_out = merge["describe"](
        TensorDesc(None, 17, 8), TensorDesc(None, 17, 4), TensorDesc(None, 17, 1), r=4, protected=1
    )
    assert x_out.dims == (None, 13, 8) and size_out.dims == (None, 13, 1)
    merge_inputs = [TensorDesc(None, 17, 8), TensorDesc(None, 17, 4), TensorDesc(None, 17, 1)]
    types, layouts = merge["autotune"](*merge_inputs, [x_out, size_out])[0]
    assert types == ", ".join(["FP32|FP16"] * 5) and layouts == "LINEAR"
    with pytest.raises(QdpShapeError, match="must be static"):
        merge["describe"](
            TensorDesc(1, None, 8), TensorDesc(1, None, 4), TensorDesc(1, None, 1), r=1, protected=1
        )


def test_the_jit_impl_takes_the_stream_by_keyword_and_runs_the_torch_face(trtp):
    import torch

    register_qdp_plugins()
    generator = torch.Generator().manual_seed(0)
    x, metric = (
        torch.randn(2, 17, 8, generator=generator),
        torch.randn(2, 17, 4, generator=generator),
    )
    size = torch.ones(2, 17, 1)
    outputs = [torch.full((2, 13, 8), float("nan")), torch.full((2, 13, 1), float("nan"))]
    # TensorRT's call: inputs, attribute values, outputs, then the stream by keyword
    trtp.plugins["trimformer::BipartiteMerge"]["impl"](x, metric, size, 4, 1, outputs, stream=0)
    want = MERGE.torch_op(x, metric, size, 4, 1)
    for got, expected in zip(outputs, want, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_old_tensorrt_has_no_qdp(trtp, monkeypatch):
    old = SimpleNamespace(__version__="10.3.0.26", Builder=object)
    monkeypatch.setattr(trt_env, "import_tensorrt", lambda: old)
    with pytest.raises(UsageError, match=r"has no tensorrt.plugin \(needs 10.6\+\)"):
        register_qdp_plugins()


def test_the_aot_form_compiles_each_layer_s_triton_kernel_for_the_target_gpu(trtp):
    register_qdp_plugins(aot_capability=87)
    diverse = trtp.plugins["trimformer::DiverseSelect"]
    x = TensorDesc(None, 197, 384, dtype="float16")
    features, size = TensorDesc(None, 197, 384), TensorDesc(None, 197, 1)
    outputs = diverse["describe"](x, features, size, k=98, protected=1)
    name, ptx, launch, scalars = diverse["aot"](x, features, size, 98, 1, outputs, 0)
    assert name == "diverse_select_kernel" and ".target sm_87" in ptx
    assert ".param .u64 .ptr .global .align 1 diverse_select_kernel_param_0" in ptx
    assert launch.block_x == 256 and 0 < launch.shared_mem <= 48 * 1024
    # one program per batch item: the grid and the kernel's int32 scalar are the batch dim
    assert launch.grid_x.expr is x.shape_expr[0] and scalars[0] is launch.grid_x
    with pytest.raises(QdpShapeError, match="the channel count must be static"):
        diverse["aot"](TensorDesc(1, 197, None), features, size, 98, 1, outputs, 0)
    with pytest.raises(UsageError, match="registered for compute capability 87"):
        register_qdp_plugins(aot_capability=90)


def test_aot_needs_tensorrt_10_9(trtp, monkeypatch):
    older = SimpleNamespace(__version__="10.8.0.43", Builder=object)
    monkeypatch.setattr(trt_env, "import_tensorrt", lambda: older)
    with pytest.raises(UsageError, match=r"no AOT Python plugins \(needs 10.9\+\)"):
        register_qdp_plugins(aot_capability=87)
    assert register_qdp_plugins()  # the JIT form still registers


def _plugin_graph(tokens: int, channels: int) -> Any:
    from onnx import TensorProto, helper

    from trimformer.graph_passes.base import PLUGIN_DOMAIN, PLUGIN_NAMESPACE

    def value(name: str, dims: list[Any]) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    node = helper.make_node(
        "BipartiteMerge",
        ["x", "metric", "size"],
        ["x_out", "size_out"],
        name="merge0",
        domain=PLUGIN_DOMAIN,
        plugin_version=str(MERGE.version),
        plugin_namespace=PLUGIN_NAMESPACE,
        r=tokens // 5,
        protected=1,
    )
    inputs = [
        value("x", ["batch", tokens, channels]),
        value("metric", ["batch", tokens, 64]),
        value("size", ["batch", tokens, 1]),
    ]
    outputs = [value("x_out", None), value("size_out", None)]
    graph = helper.make_graph([node], "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(PLUGIN_DOMAIN, 1)])


def test_aot_blocker_checks_every_plugin_node_before_a_build(tome_bundle):
    from trimformer.runtime.trt_build import prepared_graph

    model, _ = prepared_graph(tome_bundle, "model.onnx", ("cleanup", "to-plugins"))
    assert plugins_qdp.aot_blocker(model, 87) is None
    reason = plugins_qdp.aot_blocker(_plugin_graph(2049, 64), 87)
    assert reason is not None and "node 'merge0'" in reason and "2049 tokens exceed" in reason
    assert "not static" in str(plugins_qdp.aot_blocker(_plugin_graph(577, None), 87))


def test_a_build_without_the_library_chooses_aot_only_where_it_fits(trtp, monkeypatch):
    from trimformer.runtime import trt_build

    def no_library(explicit: Any = None) -> Any:
        raise UsageError("libtrimformer_plugins.so not found")

    monkeypatch.setattr(trt_env, "find_plugin_library", no_library)
    flags = SimpleNamespace(PREFER_AOT_PYTHON_PLUGINS=3, PREFER_JIT_PYTHON_PLUGINS=2)
    trt = sys.modules["tensorrt"]
    trt.NetworkDefinitionCreationFlag = flags
    fits, too_big = _plugin_graph(577, 1024), _plugin_graph(2049, 64)
    choice = trt_build.load_plugins(trt, None, None, fits, 87)
    assert choice == trt_build.PluginChoice("qdp-aot") and choice.network_flags(trt) == 1 << 3
    assert "aot" in trtp.plugins["trimformer::BipartiteMerge"]
    choice = trt_build.load_plugins(trt, None, None, too_big, 87)
    assert choice.source == "qdp" and "2049 tokens exceed" in str(choice.aot_blocked)
    assert choice.network_flags(trt) == 1 << 2  # both forms registered: JIT asked for
    assert trt_build.PluginChoice("library").network_flags(trt) == 0


def test_a_graph_over_the_kernels_token_cap_skips_the_library(trtp, monkeypatch, tmp_path):
    from trimformer.runtime import trt_build

    library = tmp_path / "libtrimformer_plugins.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setenv(trt_env.PLUGIN_LIBRARY_ENV, str(library))
    flags = SimpleNamespace(PREFER_AOT_PYTHON_PLUGINS=3, PREFER_JIT_PYTHON_PLUGINS=2)
    trt = sys.modules["tensorrt"]
    trt.NetworkDefinitionCreationFlag = flags
    loads: list[str] = []
    registry = SimpleNamespace(
        get_creator=lambda *key: None, load_library=lambda path: loads.append(path) or "HANDLE"
    )
    assert trt_build.load_plugins(trt, registry, None, _plugin_graph(577, 64), 87).source == (
        "library"
    )
    choice = trt_build.load_plugins(trt, registry, None, _plugin_graph(2049, 64), 87)
    assert choice.source == "qdp" and "2049 tokens exceed" in str(choice.aot_blocked)
    assert loads == [str(library)]  # loaded for the graph that fits only
    with pytest.raises(UsageError, match=r"'merge0' \(BipartiteMerge\) takes 2049 tokens, more "):
        trt_build.load_plugins(trt, registry, library, _plugin_graph(2049, 64), 87)


def test_the_token_cap_is_the_cuda_kernels_own():
    from pathlib import Path

    from trimformer.graph_passes.base import PLUGIN_MAX_TOKENS

    plugins = Path(__file__).resolve().parents[1] / "plugins"
    caps = [
        re.findall(r"MaxTokens = (\d+);", header.read_text())
        for header in sorted(plugins.glob("*/*_kernel.h"))
    ]
    assert caps == [[str(PLUGIN_MAX_TOKENS)]] * 3  # one cap per op's kernel, all the same

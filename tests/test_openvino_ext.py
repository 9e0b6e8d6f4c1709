"""trimformer's OpenVINO extension: the fused library (built here with cmake + g++ against the
openvino wheel), the decomposed fallback, which ops each reads, and their errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TINY_BUNDLE_MODEL, TINY_BUNDLE_SIZE
from test_cli import cli

from trimformer.errors import UsageError
from trimformer.exporter import ExportRequest, export_bundle
from trimformer.ops.registry import DOMAIN, get_op
from trimformer.profiles import ReductionConfig
from trimformer.runtime import load
from trimformer.runtime.bench import random_inputs

openvino = pytest.importorskip("openvino")

from trimformer.runtime.openvino_backend import OpenVinoBackend  # noqa: E402
from trimformer.runtime.openvino_ext import (  # noqa: E402  (after the importorskip)
    FUSED_OPS,
    ExtensionInfo,
    add_extensions,
    float_scopes,
    library_status,
    read_model,
)


def _types(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        counts[op.get_type_name()] = counts.get(op.get_type_name(), 0) + 1
    return counts


def test_the_library_fuses_each_op_at_its_registered_version() -> None:
    for name, version in FUSED_OPS.items():
        assert get_op(name).version == version, name


@pytest.fixture(scope="module")
def op_bundles(tome_bundle, tmp_path_factory) -> dict[str, Path]:
    """A DeiT-Ti bundle per fused op: ToMe (BipartiteMerge), EViT (TopKSelect), DivPrune
    (DiverseSelect)."""
    bundles = {"BipartiteMerge": tome_bundle}
    for op_name, config in {
        "TopKSelect": ReductionConfig("evit", {"keep": 0.7}),
        "DiverseSelect": ReductionConfig("divprune", {"keep": 0.7}),
    }.items():
        path = tmp_path_factory.mktemp("bundles") / config.method
        export_bundle(ExportRequest(TINY_BUNDLE_MODEL, path, config, image_size=TINY_BUNDLE_SIZE))
        bundles[op_name] = path
    return bundles


@pytest.mark.parametrize("op_name", list(FUSED_OPS))
def test_fused_and_decomposed_reads_match_onnx_runtime(op_bundles, op_name: str) -> None:
    bundle = op_bundles[op_name]
    pixels = random_inputs(load(bundle).inputs, 2)["pixel_values"]
    with load(bundle) as session:
        expected = session.run(pixels)["logits"]
    graph = onnx.load(str(bundle / "model.onnx"), load_external_data=False).graph
    calls = sum(node.op_type == op_name for node in graph.node)
    assert calls > 0
    for mode, fused in (("fused", calls), ("decomposed", 0)):
        core = openvino.Core()
        model = read_model(core, bundle / "model.onnx", add_extensions(core, mode))
        assert _types(model).get(op_name, 0) == fused, mode
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        logits = compiled.create_infer_request().infer({0: pixels})[compiled.outputs[0]]
        np.testing.assert_allclose(logits, expected, atol=1e-4, err_msg=mode)


def test_an_older_op_version_is_decomposed_not_fused(tome_bundle, tmp_path: Path) -> None:
    proto = onnx.load(str(tome_bundle / "model.onnx"), load_external_data=False)
    for opset in proto.opset_import:
        if opset.domain == DOMAIN:
            opset.version = 1  # a bundle of BipartiteMerge v1: the v2 kernel must not run it
    onnx.save(proto, str(tmp_path / "model.onnx"))
    shutil.copyfile(tome_bundle / "weights.bin", tmp_path / "weights.bin")
    core = openvino.Core()
    model = read_model(core, tmp_path / "model.onnx", add_extensions(core, "fused"))
    assert "BipartiteMerge" not in _types(model)


def test_float_scopes_cover_the_reduction_nodes_only(tome_bundle) -> None:
    import re

    for mode in ("fused", "decomposed"):
        core = openvino.Core()
        model = read_model(core, tome_bundle / "model.onnx", add_extensions(core, mode))
        patterns = [re.compile(p) for p in float_scopes(model)]
        kept = [
            op
            for op in model.get_ordered_ops()
            if any(p.search(op.get_friendly_name()) for p in patterns)
        ]
        assert kept, mode
        dense = [
            op
            for op in kept
            if op.get_type_name() == "MatMul"
            and op.input(1).get_partial_shape().rank.get_length() == 2
        ]
        assert not dense, f"{mode}: a dense layer would stay float"
        if mode == "fused":
            assert {op.get_type_name() for op in kept} == {"BipartiteMerge"}


def test_without_a_compiler_auto_decomposes_and_fused_refuses(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TRIMFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, no c++
    assert library_status()[0] is False
    with caplog.at_level(logging.WARNING, logger="trimformer"):
        info = add_extensions(openvino.Core(), "auto")
    assert info == ExtensionInfo("decomposed")
    assert "decomposed" in caplog.text and "cmake" in caplog.text
    with pytest.raises(UsageError, match="needs cmake and c\\+\\+, not found; install"):
        add_extensions(openvino.Core(), "fused")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.so"))


def test_openvino_build_and_status_commands(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("TRIMFORMER_CACHE", str(tmp_path))
    code, out, err = cli(capsys, "openvino", "status")
    assert code == 0, err
    assert "not built" in out and "trimformer openvino build" in out
    code, out, err = cli(capsys, "openvino", "build")
    assert code == 0, err
    assert "BipartiteMerge v2" in out
    (library,) = tmp_path.rglob("libtrimformer_openvino.so")
    assert not [p for p in library.parent.iterdir() if p.name.startswith(".build-")]
    code, out, _ = cli(capsys, "openvino", "status")
    assert str(library) in out.replace("\n", "")


def test_unknown_extensions_mode_is_one_line(capsys) -> None:
    with pytest.raises(UsageError, match="unknown extensions mode 'fast'"):
        add_extensions(openvino.Core(), "fast")


def test_node_times_attribute_the_fused_merge(tome_bundle) -> None:
    feed = random_inputs(load(tome_bundle).inputs, 1)
    backend = OpenVinoBackend(threads=1, extensions="fused", profile=True)
    spent = backend.open(tome_bundle / "model.onnx", "model").node_times(feed, runs=2)
    assert spent["Reference"] > 0  # the fused BipartiteMerge calls
    assert "FullyConnected" in spent and list(spent.values()) == sorted(spent.values())[::-1]
    unprofiled = OpenVinoBackend(threads=1).open(tome_bundle / "model.onnx", "model")
    with pytest.raises(UsageError, match="open with profile"):
        unprofiled.node_times(feed)

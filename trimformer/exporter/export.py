"""Export a model with a reduction method as a bundle: load, patch, trace, verify, write.

One ``ExportRequest`` in, one bundle directory out (written atomically by trimformer.bundle).
The bundle holds the reduced graph and, when a method reduces, the un-reduced graph of the same
weights, so that ``bench --vs-full`` compares like with like without storing the weights twice.
With ``bank`` it holds one graph per named config (a config bank): the runtime switches between
them at run time, all graphs reading the one weights.bin.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from trimformer import __version__
from trimformer.bundle import check_config_name, default_config_name, write_bundle
from trimformer.errors import RuntimeFailure, UsageError
from trimformer.exporter.flops import count_flops
from trimformer.exporter.onnx_export import export_onnx
from trimformer.methods import (
    ConfigError,
    MethodPlan,
    ModelGeometry,
    get_method,
    parse_params,
    with_method_inputs,
)
from trimformer.models import AdapterError, GraphIO, adapter_for
from trimformer.models.loading import ModelOptions, load_model
from trimformer.ops import MAX_OPSET, MIN_OPSET, OpValidationError
from trimformer.profiles import ReductionConfig

__all__ = ["VERIFY_ATOL", "ExportRequest", "export_bundle"]

VERIFY_ATOL = 1e-4


@dataclass(frozen=True)
class ExportRequest:
    """Everything ``trimformer export`` needs, as one typed value."""

    model: str
    output: Path
    reduction: ReductionConfig = field(default_factory=lambda: ReductionConfig("none"))
    checkpoint: Path | None = None
    pretrained: bool = False
    batch: int | None = None  # None: dynamic batch dimension
    image_size: int | None = None
    seq_len: int | None = None  # text models: fixed sequence length (default: 128 or less)
    opset: int = 20
    verify: bool = True
    force: bool = False
    seed: int = 0
    # (name, config) pairs: export a config bank instead of ``reduction``; the first is the default
    bank: tuple[tuple[str, ReductionConfig], ...] = ()


Step = Callable[[str], None]


def _configs(request: ExportRequest) -> list[tuple[str, ReductionConfig]]:
    """The named configs to export: the bank, or the one reduction (named after its params)."""
    if not request.bank:
        reduction = request.reduction
        return [(default_config_name(reduction.method, reduction.params), reduction)]
    if request.reduction.method != "none":
        raise UsageError("give either a reduction or a bank of configs, not both")
    names = [name for name, _ in request.bank]
    for name, reduction in request.bank:
        check_config_name(name)
        if name == "none" and reduction.method != "none":
            raise UsageError(
                f"config name none means no reduction; rename the {reduction.method} config"
            )
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise UsageError(f"config name {', '.join(repeated)} is given twice; give each config once")
    return list(request.bank)


def _plan(adapter: Any, reduction: ReductionConfig, model: nn.Module) -> MethodPlan | None:
    try:
        if reduction.method == "none":
            if reduction.params:
                raise ConfigError("method none takes no params; drop them or choose a method")
            return None
        method = get_method(reduction.method)
        if adapter.methods is not None and method.name not in adapter.methods:
            raise ConfigError(
                f"{adapter.family} models support {', '.join(adapter.methods)}, not "
                f"{method.name}; choose a supported method"
            )
        params = parse_params(method.name, method.params_type, reduction.params)
        return method.plan(params, ModelGeometry.of(adapter, model))
    except (ConfigError, AdapterError, OpValidationError) as exc:
        raise UsageError(str(exc)) from None


def _variants(
    adapter: Any, model: nn.Module, plans: list[tuple[str, MethodPlan | None]], graph_io: GraphIO
) -> tuple[dict[str, tuple[nn.Module, GraphIO]], dict[str, str]]:
    """Graph name -> (module to export, its inputs), and config name -> its graph name.

    The first config's graph is "model" and the un-reduced one "full" (so every tool that reads
    "model", and ``bench --vs-full``, works on a bank as on a one-config bundle); a further
    reducing config NAME is graph "cfg-NAME". Configs that reduce nothing share one graph, and
    config "none" (added when not given) names it. A method's own inputs (ToDRE's query, ...)
    extend its graph's inputs.
    """
    variants: dict[str, tuple[nn.Module, GraphIO]] = {}
    graph_of: dict[str, str] = {}
    full: str | None = None
    for i, (name, plan) in enumerate(plans):
        if plan is None or not plan.reduces:
            full = full or ("model" if i == 0 else "full")
            variants.setdefault(full, (model, graph_io))
            graph_of[name] = full
        else:
            graph_of[name] = "model" if i == 0 else f"cfg-{name}"
            reduced = adapter.insert(model, plan.reducer).eval()
            variants[graph_of[name]] = with_method_inputs(reduced, plan, graph_io)
    if full is None:  # the un-reduced graph is cheap beside the weights: keep it
        variants["full"] = (model, graph_io)
    graph_of.setdefault("none", full or "full")  # "none" is always a config
    return variants, graph_of


def _reduction_entry(reduction: ReductionConfig, plan: MethodPlan | None) -> dict[str, Any]:
    return {
        "method": plan.method if plan else "none",
        "config": reduction.source,
        "params": plan.params if plan else {},
        "tokens_per_layer": list(plan.tokens_per_layer) if plan else [],
        "layers": list(plan.layers) if plan else [],
    }


def _max_abs_error(model: onnx.ModelProto, torch_model: nn.Module, io: GraphIO) -> float:
    """The largest difference between ONNX Runtime and torch over every output."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: t.numpy() for name, t in io.example.items()})
    with torch.no_grad():
        want = torch_model(*io.example.values())
    want = want if isinstance(want, tuple) else (want,)
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))


def _tensor_spec(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return {"name": value.name, "shape": shape, "dtype": dtype}


def _tool_versions(source: str) -> dict[str, str]:
    import onnxruntime
    import onnxscript

    versions = {
        "trimformer": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
    if source == "hf":
        import transformers

        versions["transformers"] = transformers.__version__
    else:
        import timm

        versions["timm"] = timm.__version__
    return versions


def _labels(num_classes: int | None) -> list[str] | None:
    if num_classes != 1000:
        return None
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(num_classes)]


def export_bundle(request: ExportRequest, step: Step = lambda _: None) -> dict[str, Any]:
    """Run the export; return the manifest written. Raises UsageError / RuntimeFailure."""
    if not MIN_OPSET <= request.opset <= MAX_OPSET:
        raise UsageError(f"--opset {request.opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    if request.batch is not None and request.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {request.batch}")
    if request.output.exists() and not request.force:
        raise UsageError(
            f"{request.output} already exists; choose another -o folder or pass --force"
        )
    started = time.perf_counter()
    step("load model")
    torch.manual_seed(request.seed)
    options = ModelOptions(
        request.checkpoint, request.pretrained, request.image_size, request.seq_len, request.batch
    )
    configs = _configs(request)
    loaded = load_model(request.model, options)
    model = loaded.model
    try:
        adapter = adapter_for(model)
    except AdapterError as exc:
        raise UsageError(str(exc)) from None
    plans = [(name, _plan(adapter, reduction, model)) for name, reduction in configs]
    variants, graph_of = _variants(adapter, model, plans, loaded.io)
    if all(name != "none" for name, _ in configs):
        configs.append(("none", ReductionConfig("none", source="un-reduced graph")))
        plans.append(("none", None))
    graphs: dict[str, onnx.ModelProto] = {}
    graph_info: dict[str, dict[str, Any]] = {}
    errors: dict[str, float] = {}
    ops: dict[str, int] = {}
    for name, (module, graph_io) in variants.items():
        step(f"export {'full' if module is model else 'reduced'} graph {name}")
        with adapter.export_patches(module):
            graph, used = export_onnx(module, graph_io, request.opset)
        ops.update(used)
        if request.verify:
            step(f"verify {name}.onnx against torch")
            errors[name] = _max_abs_error(graph, module, graph_io)
            if not errors[name] <= VERIFY_ATOL:
                raise RuntimeFailure(
                    f"{name}.onnx differs from the torch model by {errors[name]:.3g} "
                    f"(> {VERIFY_ATOL:g}); nothing was written. Re-run with --no-verify to "
                    "inspect it anyway"
                )
        graphs[name] = graph
        graph_info[name] = {
            "file": f"{name}.onnx",
            "inputs": [_tensor_spec(v) for v in graph.graph.input],
            "outputs": [_tensor_spec(v) for v in graph.graph.output],
            "flops": count_flops(module, graph_io),
        }
    num_tokens = adapter.num_tokens(model)
    (default, reduction), plan = configs[0], plans[0][1]
    manifest = {
        "model": {
            "id": loaded.model_id,
            "source": loaded.source,
            "family": adapter.family,
            "weights": loaded.weights,
            "num_classes": loaded.num_classes,
            "tokens": num_tokens,
            "protected_tokens": adapter.protected_tokens(model),
        },
        "reduction": _reduction_entry(reduction, plan),
        "configs": {  # config name -> its reduction, graph and FLOPs; "none" is the full graph
            name: {
                **_reduction_entry(cfg, p),
                "graph": graph_of[name],
                "flops": graph_info[graph_of[name]]["flops"],
            }
            for (name, cfg), (_, p) in zip(configs, plans, strict=True)
        },
        "default_config": default,
        "graphs": graph_info,
        "opset": request.opset,
        "ops": ops,
        "preprocess": loaded.preprocess,
        "labels": _labels(loaded.num_classes),
        "verify": {"atol": VERIFY_ATOL, "max_abs_error": errors} if request.verify else None,
        "tools": _tool_versions(loaded.source),
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    step("write bundle")
    write_bundle(request.output, graphs, manifest, request.force, loaded.assets)
    return manifest

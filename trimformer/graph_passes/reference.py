"""Reference implementations of our TensorRT plugins, and a CPU runner for plugin graphs.

Every registered op has a reference here, keyed by op name (a test checks that none is
missing). A plugin implements its op's spec, so its reference is the op's torch face. Running a
``to-plugins`` graph through ``run_reference`` and comparing with the function-call graph in
ONNX Runtime checks the rewrite's semantics without TensorRT. The runner refuses a graph with a
plugin that has no reference before running anything (Polygraphy's pluginref does the same).
trimformer calls run their reference too: onnx's evaluator cannot run our function bodies
(its OneHot rejects the rank-1 depth the bodies pass, valid ONNX, with numpy 2). A call of an
older op version (a model importing our domain below the op's version) has no reference and is
refused like a missing one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import torch
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from trimformer.graph_passes.base import (
    PLUGIN_DOMAIN,
    attribute_values,
    ensure_opset,
    iter_node_scopes,
    older_call,
    plugin_specs,
)
from trimformer.ops import DOMAIN, OpSpec, get_op, registered_ops

__all__ = [
    "MissingReferenceError",
    "Reference",
    "get_reference",
    "references",
    "register_reference",
    "run_reference",
    "torch_face",
]

Reference = Callable[[Sequence[np.ndarray], Mapping[str, Any]], tuple[np.ndarray, ...]]
"""(inputs in spec order, the op's attributes) -> outputs in spec order."""


class MissingReferenceError(LookupError):
    """A plugin node has no registered op or no reference implementation."""


def torch_face(op_name: str) -> Reference:
    """A reference that runs the op's torch face on numpy arrays."""
    spec = get_op(op_name)

    def run(inputs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]
        outputs = spec.torch_op(*tensors, *(attrs[a.name] for a in spec.attributes))
        return tuple(t.numpy() for t in outputs)

    return run


_REFERENCES: dict[str, Reference] = {
    "BipartiteMerge": torch_face("BipartiteMerge"),
    "TopKSelect": torch_face("TopKSelect"),
    "DiverseSelect": torch_face("DiverseSelect"),
}


def register_reference(op_name: str, reference: Reference) -> None:
    """Register the reference of a registered op (names unique)."""
    get_op(op_name)
    if op_name in _REFERENCES:
        raise ValueError(f"op {op_name} already has a reference")
    _REFERENCES[op_name] = reference


def references() -> dict[str, Reference]:
    """All references by op name (a copy)."""
    return dict(_REFERENCES)


def get_reference(op_name: str) -> Reference:
    """The reference of an op, with an error listing the ops that have one."""
    try:
        return _REFERENCES[op_name]
    except KeyError:
        raise MissingReferenceError(
            f"op {op_name} has no reference implementation (have: {', '.join(sorted(_REFERENCES))})"
        ) from None


def _op_run_class(spec: OpSpec, domain: str, reference: Reference) -> type[OpRun]:
    """An onnx.reference operator running ``reference`` for ``spec``'s nodes of ``domain``."""

    def _run(self: OpRun, *inputs: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
        attrs.pop("plugin_version", None)  # checked before the run
        attrs.pop("plugin_namespace", None)
        return reference(inputs, attrs)

    name = spec.trt_plugin_name if domain == PLUGIN_DOMAIN else spec.name
    return type(name, (OpRun,), {"op_domain": domain, "_run": _run})


def run_reference(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run a model on CPU: standard ops as onnx's reference evaluator defines them, each of our
    ops (plugin node or trimformer call) through its reference.

    Other model-local functions are inlined first, so our nodes inside them run their reference
    too. Returns the requested outputs (default: all graph outputs) by name.
    """
    by_domain = {PLUGIN_DOMAIN: plugin_specs(), DOMAIN: registered_ops()}
    scopes = list(iter_node_scopes(model))
    ours = [n for nodes, _ in scopes for n in nodes if n.domain in by_domain]
    used = sorted({(node.domain, node.op_type) for node in ours})
    unknown = [f"{d}::{t}" for d, t in used if t not in by_domain[d]]
    if unknown:
        raise MissingReferenceError(
            f"{', '.join(unknown)} match no registered op "
            f"(registered: {', '.join(sorted(registered_ops()))})"
        )
    for node in ours:
        spec = by_domain[node.domain][node.op_type]
        version = attribute_values(node).get("plugin_version")
        if node.domain == PLUGIN_DOMAIN and version != str(spec.version):
            raise MissingReferenceError(
                f"node {node.name!r}: plugin {node.op_type} version {version!r} has no "
                f"reference (only version {spec.version})"
            )
    for nodes, opset_import in scopes:
        for node in nodes:
            older = older_call(node, opset_import) if node.domain == DOMAIN else None
            if older is not None:
                raise MissingReferenceError(f"node {node.name!r}: {older}")
    new_ops = [
        _op_run_class(by_domain[d][t], d, get_reference(by_domain[d][t].name)) for d, t in used
    ]
    functions = [(f.domain, f.name) for f in model.functions if f.domain == DOMAIN]
    work = onnx.inliner.inline_selected_functions(model, functions, exclude=True)
    kept = [f for f in work.functions if f.domain != DOMAIN]
    del work.functions[:]
    work.functions.extend(kept)
    for domain, _ in used:
        ensure_opset(work.opset_import, domain)
    names = list(outputs) if outputs is not None else [o.name for o in model.graph.output]
    values = ReferenceEvaluator(work, new_ops=new_ops).run(names, dict(feeds))
    return dict(zip(names, values, strict=True))

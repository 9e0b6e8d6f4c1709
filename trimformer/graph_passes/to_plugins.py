"""to-plugins: swap each trimformer function call for a TensorRT plugin node.

TensorRT up to 10.6 prefers a model-local function over a plugin of the same name, so on
JetPack 6.1+ (TensorRT 10.3) an explicit plugin node is the only reliable way to get the fused
kernel. The plugin node keeps the call's inputs, outputs and name; it has domain ``trt.plugins``,
op_type the op's plugin name, ``plugin_version`` and ``plugin_namespace`` (strings), then the
op's own attributes.

requires  every trimformer call is a registered op at its current version (the model imports
          our domain at that version or later) whose attributes validate (against the static
          token count too, where shape inference knows it)
ensures   no trimformer node remains; the replaced ops' functions are gone; ``trt.plugins`` is
          imported by the model and by every function holding a plugin node
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx
from onnx import helper

from trimformer.graph_passes.base import (
    PLUGIN_DOMAIN,
    PLUGIN_NAMESPACE,
    GraphPass,
    PassError,
    PassResult,
    PostconditionError,
    attribute_values,
    drop_opset_if_unused,
    ensure_opset,
    iter_node_scopes,
    older_call,
    register_pass,
    token_counts,
)
from trimformer.ops import DOMAIN, OpSpec, OpValidationError, registered_ops

__all__ = ["TO_PLUGINS", "plugin_node", "to_plugins"]

_NAME = "to-plugins"


def _checked_spec(node: onnx.NodeProto, opset_import: Any, tokens: dict[str, int]) -> OpSpec:
    """The registered op a call node names, after checking its version and attributes."""
    ops = registered_ops()
    spec = ops.get(node.op_type)
    label = f"node {node.name!r} ({DOMAIN}::{node.op_type})"
    if spec is None:
        raise PassError(
            f"{_NAME}: {label} is not a registered op (registered: {', '.join(sorted(ops))}); "
            "export it with this trimformer version"
        )
    older = older_call(node, opset_import)
    if older is not None:
        raise PassError(f"{_NAME}: {label}: {older}")
    try:
        spec.validate(attribute_values(node), tokens.get(node.input[0]) if node.input else None)
    except OpValidationError as exc:
        raise PassError(f"{_NAME}: {label}: {exc}; fix it in the export config") from None
    return spec


def plugin_node(node: onnx.NodeProto, spec: OpSpec) -> onnx.NodeProto:
    """The TensorRT plugin node that replaces a call node of ``spec``."""
    plugin = helper.make_node(
        spec.trt_plugin_name,
        node.input,
        node.output,
        name=node.name,
        domain=PLUGIN_DOMAIN,
        plugin_version=str(spec.version),
        plugin_namespace=PLUGIN_NAMESPACE,
    )
    plugin.attribute.extend(node.attribute)
    return plugin


def to_plugins(model: onnx.ModelProto) -> PassResult:
    """Replace every trimformer call by its plugin node; refuse the model if one cannot be."""
    calls = [
        (node, opset_import)
        for nodes, opset_import in iter_node_scopes(model)
        for node in nodes
        if node.domain == DOMAIN
    ]
    if not calls:
        return PassResult(
            _NAME, model, modified=False, counts={"plugins": 0, "functions_removed": 0}
        )
    tokens = token_counts(model)
    # refuse before rewriting anything
    specs = [_checked_spec(node, opset_import, tokens) for node, opset_import in calls]

    out = onnx.ModelProto()
    out.CopyFrom(model)
    replaced: Counter[str] = Counter()
    by_name = {spec.name: spec for spec in specs}
    for nodes, opset_import in iter_node_scopes(out):
        scope_calls = [node for node in nodes if node.domain == DOMAIN]
        for node in scope_calls:
            node.CopyFrom(plugin_node(node, by_name[node.op_type]))
            replaced[by_name[node.op_type].name] += 1
        if scope_calls:
            ensure_opset(opset_import, PLUGIN_DOMAIN)
    ensure_opset(out.opset_import, PLUGIN_DOMAIN)  # also for plugins only inside functions
    kept = [f for f in out.functions if not (f.domain == DOMAIN and f.name in replaced)]
    removed = len(out.functions) - len(kept)
    del out.functions[:]
    out.functions.extend(kept)
    drop_opset_if_unused(out, DOMAIN)
    return PassResult(
        _NAME,
        out,
        modified=True,
        counts={"plugins": sum(replaced.values()), "functions_removed": removed},
    )


def _ensure(model: onnx.ModelProto) -> None:
    for nodes, opset_import in iter_node_scopes(model):
        if any(node.domain == DOMAIN for node in nodes):
            raise PostconditionError(f"{_NAME}: a trimformer call node remains")
        plugins = [node for node in nodes if node.domain == PLUGIN_DOMAIN]
        if plugins and not any(entry.domain == PLUGIN_DOMAIN for entry in opset_import):
            raise PostconditionError(f"{_NAME}: plugin nodes without a {PLUGIN_DOMAIN} import")


TO_PLUGINS = register_pass(
    GraphPass(
        _NAME,
        to_plugins,
        requires="every trimformer call is a registered op at its current version whose "
        "attributes validate",
        ensures="trimformer calls are trt.plugins nodes (plugin_version, plugin_namespace, op "
        "attributes); the replaced ops' functions are dropped",
        ensure=_ensure,
    )
)

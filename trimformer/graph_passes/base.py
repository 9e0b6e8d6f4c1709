"""The pass contract, the registry of passes by name, the pipeline, and shared graph walks.

A pass is a pure function ``model -> PassResult``: it never mutates its input, says whether it
changed the graph and counts what it rewrote. Its ``GraphPass`` entry states what it requires and
what it ensures; ``ensures`` is also checked on the output, so a pass that breaks its own promise
fails loudly here instead of in a runtime later. Passes find our ops by stable identity
(domain + op_type), never by tensor or node names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import onnx
from onnx import helper

from trimformer.errors import UsageError, first_line
from trimformer.graph_passes.model_io import check_model, infer_shapes
from trimformer.ops import DOMAIN, OpSpec, registered_ops

if TYPE_CHECKING:
    from trimformer.graph_passes.lint import LintReport

__all__ = [
    "PLUGIN_DOMAIN",
    "PLUGIN_MAX_TOKENS",
    "PLUGIN_NAMESPACE",
    "GraphPass",
    "PassError",
    "PassResult",
    "PostconditionError",
    "attribute_values",
    "drop_opset_if_unused",
    "ensure_opset",
    "get_pass",
    "import_graphsurgeon",
    "iter_node_scopes",
    "older_call",
    "over_token_cap",
    "plugin_specs",
    "register_pass",
    "registered_passes",
    "run_passes",
    "token_counts",
    "walk_nodes",
]

PLUGIN_DOMAIN = "trt.plugins"
"""The domain TensorRT's ONNX parser maps to its plugin registry."""

PLUGIN_NAMESPACE = DOMAIN
"""The plugin namespace our TensorRT plugins register under."""

PLUGIN_MAX_TOKENS = 2048
"""The most tokens a plugin kernel takes: the CUDA kernels' kMax*Tokens (plugins/*/*_kernel.h)
and the Triton kernels' alike; above it only the Python plugins' JIT form (torch) runs."""


class PassError(UsageError):
    """A pass refused a graph (unregistered op, bad attributes) or an unknown pass was named."""


class PostconditionError(RuntimeError):
    """A pass broke what it promises to ensure: a bug in the pass, not in the input."""


@dataclass(frozen=True)
class PassResult:
    """What one pass did: the new model, whether it changed, and counts of what it rewrote."""

    name: str
    model: onnx.ModelProto
    modified: bool
    counts: Mapping[str, int] = field(default_factory=dict)
    report: LintReport | None = None


@dataclass(frozen=True)
class GraphPass:
    """A registered pass and its contract; calling it runs the pass, then checks ``ensure``."""

    name: str
    run: Callable[[onnx.ModelProto], PassResult]
    requires: str
    ensures: str
    ensure: Callable[[onnx.ModelProto], None] | None = None
    aliases: tuple[str, ...] = ()

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        result = self.run(model)
        if self.ensure is not None:
            self.ensure(result.model)
        return result


_PASSES: dict[str, GraphPass] = {}
_ALIASES: dict[str, str] = {}


def register_pass(graph_pass: GraphPass) -> GraphPass:
    """Add a pass to the registry under its name and aliases (all unique)."""
    for name in (graph_pass.name, *graph_pass.aliases):
        if name in _PASSES or name in _ALIASES:
            raise ValueError(f"pass name {name!r} is already registered")
    _PASSES[graph_pass.name] = graph_pass
    _ALIASES.update(dict.fromkeys(graph_pass.aliases, graph_pass.name))
    return graph_pass


def registered_passes() -> dict[str, GraphPass]:
    """All registered passes by their main name (a copy)."""
    return dict(_PASSES)


def _known() -> str:
    names = [
        p.name + (f" ({', '.join(p.aliases)})" if p.aliases else "")
        for p in sorted(_PASSES.values(), key=lambda p: p.name)
    ]
    return ", ".join(names)


def get_pass(name: str) -> GraphPass:
    """Look a pass up by name or alias, with an error listing the known passes."""
    graph_pass = _PASSES.get(_ALIASES.get(name, name))
    if graph_pass is None:
        raise PassError(f"unknown pass {name!r}; known passes: {_known()}")
    return graph_pass


def run_passes(
    model: onnx.ModelProto, names: Sequence[str], check: bool = True
) -> tuple[onnx.ModelProto, list[PassResult]]:
    """Run the named passes in order; every name is resolved before any pass runs.

    With ``check`` each output must also pass ``onnx.checker.check_model``.
    """
    passes = [get_pass(name) for name in names]
    results = []
    for graph_pass in passes:
        result = graph_pass(model)
        if check:
            try:
                check_model(result.model)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
                raise PostconditionError(
                    f"pass {graph_pass.name} produced an invalid model: {first_line(exc)}"
                ) from exc
        results.append(result)
        model = result.model
    return model, results


# --------------------------------------------------------------------------------------------
# Shared walks and lookups
# --------------------------------------------------------------------------------------------


def _subgraph_node_lists(nodes: Any) -> Iterator[Any]:
    yield nodes
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _subgraph_node_lists(attr.g.node)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for graph in attr.graphs:
                    yield from _subgraph_node_lists(graph.node)


def walk_nodes(nodes: Any) -> Iterator[onnx.NodeProto]:
    """Every node of a node list and of the subgraphs (If/Loop/Scan bodies) nested in it."""
    for scope in _subgraph_node_lists(nodes):
        yield from scope


def iter_node_scopes(model: onnx.ModelProto) -> Iterator[tuple[Any, Any]]:
    """Yield (node list, the opset imports it resolves against) for every place nodes live.

    That is the main graph, the bodies of model-local functions other than our own ops' (which
    are what a call expands to), and every subgraph (If/Loop/Scan bodies) of either.
    """
    for nodes in _subgraph_node_lists(model.graph.node):
        yield nodes, model.opset_import
    for function in model.functions:
        if function.domain != DOMAIN:
            for nodes in _subgraph_node_lists(function.node):
                yield nodes, function.opset_import


def attribute_values(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values; strings decoded as UTF-8."""
    values = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        values[attr.name] = value.decode() if isinstance(value, bytes) else value
    return values


def older_call(node: onnx.NodeProto, opset_import: Any) -> str | None:
    """Why a trimformer call is not its op's current version, else None: the scope it resolves
    in imports our domain below the op's version, so it was exported before the op's semantics
    changed. Such a call still runs from the function body it carries (ONNX Runtime, OpenVINO),
    but no plugin or reference implements it."""
    spec = registered_ops().get(node.op_type)
    imported = next((entry.version for entry in opset_import if entry.domain == DOMAIN), None)
    if spec is None or imported is None or imported >= spec.version:
        return None
    return (
        f"{node.op_type} is the one of trimformer opset {imported}, older than the version "
        f"{spec.version} the plugins implement; re-export the model with this trimformer (as it "
        "is, it runs only from its function body, e.g. in ONNX Runtime)"
    )


def plugin_specs() -> dict[str, OpSpec]:
    """Registered ops by their TensorRT plugin name."""
    return {spec.trt_plugin_name: spec for spec in registered_ops().values()}


def over_token_cap(model: onnx.ModelProto) -> str | None:
    """The first plugin node whose static token count exceeds ``PLUGIN_MAX_TOKENS`` (named, with
    its count), or None: what no plugin kernel runs."""
    counts: dict[str, int] | None = None
    for nodes, _ in iter_node_scopes(model):
        for node in nodes:
            if node.domain != PLUGIN_DOMAIN or not node.input:
                continue
            counts = token_counts(model) if counts is None else counts
            tokens = counts.get(node.input[0], 0)
            if tokens > PLUGIN_MAX_TOKENS:
                return f"plugin node {node.name!r} ({node.op_type}) takes {tokens} tokens"
    return None


def token_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Static token counts (axis 1, as [B,N,...]) of every tensor whose shape inference knows it.

    Our ops take tokens as [B,N,...] in their first input; the count lets ``OpSpec.validate``
    check attributes against N (e.g. that r does not exceed what N tokens allow).
    """
    graph = infer_shapes(model).graph
    counts = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        shape = info.type.tensor_type.shape
        if len(shape.dim) >= 2 and shape.dim[1].HasField("dim_value"):
            counts[info.name] = shape.dim[1].dim_value
    return counts


def ensure_opset(opset_import: Any, domain: str, version: int = 1) -> None:
    """Import ``domain`` into an opset-import list unless it is there already."""
    if not any(entry.domain == domain for entry in opset_import):
        opset_import.append(helper.make_opsetid(domain, version))


def import_graphsurgeon() -> Any:
    """onnx_graphsurgeon, or a PassError that says how to install it."""
    try:
        import onnx_graphsurgeon
    except ImportError:
        raise PassError(
            "this pass needs onnx-graphsurgeon; install it with pip install 'trimformer[passes]'"
        ) from None
    return onnx_graphsurgeon


def drop_opset_if_unused(model: onnx.ModelProto, domain: str) -> None:
    """Remove ``domain`` from the opset imports of the model and of each function not using it."""
    owners = [(model.opset_import, model.graph.node)]
    owners += [(f.opset_import, f.node) for f in model.functions if f.domain != DOMAIN]
    for opset_import, nodes in owners:
        if not any(node.domain == domain for node in walk_nodes(nodes)):
            keep = [entry for entry in opset_import if entry.domain != domain]
            del opset_import[:]
            opset_import.extend(keep)

"""cleanup (alias fold): constant folding, dead-node removal, topological sort, shape inference.

onnx-graphsurgeon does the first three (``fold_constants`` evaluates constant subgraphs with
ONNX Runtime); onnx's shape inference then records every tensor's type and shape it can derive.
Our ops are never folded and their function bodies are left untouched: a body is the op's ONNX
face, owned by the op registry, not by a pass. Model-local functions no longer called are dropped.
Constant nodes given as ``value_float(s)``/``value_int(s)`` are first rewritten to the equivalent
``value`` tensor: graphsurgeon 0.6 folds ``value_floats`` to float64, which breaks the graph.

requires  nothing beyond a valid model
ensures   topologically sorted; every node feeds a graph output; no unused model-local function
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from trimformer.graph_passes.base import (
    PLUGIN_DOMAIN,
    GraphPass,
    PassResult,
    PostconditionError,
    import_graphsurgeon,
    iter_node_scopes,
    register_pass,
    walk_nodes,
)
from trimformer.graph_passes.model_io import infer_shapes
from trimformer.ops import DOMAIN

__all__ = ["CLEANUP", "cleanup"]

_NAME = "cleanup"
_OURS = (DOMAIN, PLUGIN_DOMAIN)


def _called_functions(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """(domain, name) of every model-local function reachable from the main graph."""
    defined = {(f.domain, f.name): f for f in model.functions}
    called: set[tuple[str, str]] = set()
    frontier = list(walk_nodes(model.graph.node))
    while frontier:
        node = frontier.pop()
        key = (node.domain, node.op_type)
        if key in defined and key not in called:
            called.add(key)
            frontier.extend(walk_nodes(defined[key].node))
    return called


_LIST_CONSTANTS = {
    "value_float": (TensorProto.FLOAT, False),
    "value_floats": (TensorProto.FLOAT, True),
    "value_int": (TensorProto.INT64, False),
    "value_ints": (TensorProto.INT64, True),
}


def _tensor_constants(model: onnx.ModelProto) -> None:
    """Rewrite Constant(value_float(s)/value_int(s)) of the main graph as Constant(value=tensor)."""
    for node in walk_nodes(model.graph.node):
        attr = node.attribute[0] if node.op_type == "Constant" and node.attribute else None
        if node.domain not in ("", "ai.onnx") or attr is None or attr.name not in _LIST_CONSTANTS:
            continue
        elem, is_list = _LIST_CONSTANTS[attr.name]
        value = helper.get_attribute_value(attr)
        tensor = helper.make_tensor(
            "value", elem, [len(value)] if is_list else [], value if is_list else [value]
        )
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("value", tensor))


def cleanup(model: onnx.ModelProto) -> PassResult:
    """Fold constants, remove dead nodes and functions, sort, and infer shapes."""
    gs = import_graphsurgeon()

    typed = onnx.ModelProto()
    typed.CopyFrom(model)
    _tensor_constants(typed)
    graph = gs.import_onnx(typed)
    nodes_before = len(graph.nodes)
    produced = {t.name for node in graph.nodes for t in node.outputs}
    graph.fold_constants(
        recurse_functions=False, should_exclude_node=lambda node: node.domain in _OURS
    )
    graph.cleanup(recurse_functions=False).toposort(recurse_functions=False)
    exported = gs.export_onnx(graph)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(exported.graph)
    called = _called_functions(out)
    kept = [f for f in out.functions if (f.domain, f.name) in called]
    functions_removed = len(out.functions) - len(kept)
    del out.functions[:]
    out.functions.extend(kept)
    out = infer_shapes(out, data_prop=True)
    folded = produced & {t.name for t in out.graph.initializer}
    return PassResult(
        _NAME,
        out,
        modified=out != model,
        counts={
            "nodes_removed": nodes_before - len(out.graph.node),
            "constants_folded": len(folded),
            "functions_removed": functions_removed,
        },
    )


def _ensure(model: onnx.ModelProto) -> None:
    used = {name for nodes, _ in iter_node_scopes(model) for n in nodes for name in n.input}
    used |= {o.name for o in model.graph.output}
    dead = [n.name or n.op_type for n in model.graph.node if not used.intersection(n.output)]
    if dead:
        raise PostconditionError(f"{_NAME}: dead nodes remain: {', '.join(dead[:5])}")


CLEANUP = register_pass(
    GraphPass(
        _NAME,
        cleanup,
        requires="a valid model",
        ensures="constants folded (never our ops), no dead nodes or unused functions, "
        "topologically sorted, shapes inferred",
        ensure=_ensure,
        aliases=("fold",),
    )
)

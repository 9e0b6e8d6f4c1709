"""fp16: convert a model to FP16 on the ONNX side, keeping numerically sensitive nodes in FP32.

TensorRT 11 removed weak typing (``--fp16``), so precision is decided in the graph before a build.

Library: ``onnxruntime.transformers.float16.convert_float_to_float16``, ONNX Runtime's maintained
fork of onnxconverter-common's converter, with ``node_block_list`` for the FP32 islands. Chosen
over onnxconverter-common 1.16 because (1) it ships inside onnxruntime, already a core
dependency, so nothing is added; (2) with ``keep_io_types`` it keeps graph outputs FP32 even when
a blocked node produces them (onnxconverter-common 1.16 returned FP16 outputs there, checked on
this pass's test model); (3) it clamps constants to float16's real range (65504), where
onnxconverter-common's default clips every constant above 1e4.

Kept in FP32, with Casts around them: LayerNormalization, Softmax, every trimformer call and
every TensorRT plugin node (their score computation: normalised similarities and a ranking,
where a rounding-flipped tie changes which tokens merge or stay), plus ONNX Runtime's default block
list (ops without FP16 kernels). The converter matches by op_type or node name only; to match on
domain + op_type we block by node name, naming unnamed or duplicate-named blocked nodes first.
Afterwards a Cast(FP32->FP16) -> Cast(FP16->FP32) pair is bypassed (between two FP32 nodes, or
from an FP32 node to an FP32 graph output), so FP32 data is not rounded on its way, and the
graph is sorted again (the converter appends its Casts at the end). Graph inputs and outputs
stay FP32, so the bundle's input specs still hold; initializers used only by FP32 nodes stay
FP32.

requires  no model-local function other than trimformer's (a body may not accept FP16 inputs);
          our ops not inlined yet (an inlined body is plain ops: it would become FP16); no FP16
          initializer or Cast to FP16 yet (the converter is not idempotent)
ensures   no FP32-kept node reads or writes an FP16 tensor
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import TensorProto, helper

from trimformer.graph_passes.base import (
    PLUGIN_DOMAIN,
    GraphPass,
    PassError,
    PassResult,
    PostconditionError,
    import_graphsurgeon,
    register_pass,
    walk_nodes,
)
from trimformer.graph_passes.inline import INLINED_KEY
from trimformer.graph_passes.model_io import infer_shapes
from trimformer.ops import DOMAIN

__all__ = ["FP16", "FP32_STANDARD_OPS", "convert_fp16", "keeps_fp32"]

_NAME = "fp16"

FP32_STANDARD_OPS = frozenset({"LayerNormalization", "Softmax"})
"""Standard-domain ops kept in FP32 (besides ONNX Runtime's default block list)."""


def keeps_fp32(node: onnx.NodeProto) -> bool:
    """Whether the fp16 pass keeps this node in FP32 (matched on domain and op_type)."""
    if node.domain in ("", "ai.onnx"):
        return node.op_type in FP32_STANDARD_OPS
    return node.domain in (DOMAIN, PLUGIN_DOMAIN)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = infer_shapes(model).graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _name_blocked_nodes(graph: onnx.GraphProto) -> list[str]:
    """Unique names of the FP32-kept nodes, renaming unnamed or duplicate-named ones."""
    counts = Counter(node.name for node in graph.node)
    taken = set(counts)
    names = []
    for index, node in enumerate(graph.node):
        if not keeps_fp32(node):
            continue
        if not node.name or counts[node.name] > 1:
            name = f"{node.op_type}_fp32_{index}"
            while name in taken:
                name += "_"
            taken.add(name)
            node.name = name
        names.append(node.name)
    return names


def _drop_initializer_value_info(graph: onnx.GraphProto) -> None:
    """Drop value_info naming initializers (torch's exporter writes them): the converter turns
    every one to FP16, also for initializers it keeps FP32, and the model would contradict
    itself. An initializer carries its own type."""
    weights = {t.name for t in graph.initializer}
    keep = [info for info in graph.value_info if info.name not in weights]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def _declare_op_outputs(model: onnx.ModelProto) -> None:
    """Give plugin and trimformer-call outputs a type: inference cannot see into plugins, nor
    into calls once the exporter has registered our ops' schemas (which carry no inference),
    and the converter only casts a blocked node's output back to FP16 when it knows its type."""
    types = _elem_types(model)
    for node in model.graph.node:
        if node.domain not in (PLUGIN_DOMAIN, DOMAIN):
            continue
        elem = types.get(node.input[0], TensorProto.FLOAT) if node.input else TensorProto.FLOAT
        for name in node.output:
            if name and name not in types:
                model.graph.value_info.append(helper.make_tensor_value_info(name, elem, None))


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _bypass_cast_pairs(model: onnx.ModelProto) -> int:
    """Read FP32 x directly where Cast(Cast(x, FP16), FP32) was read; drop Casts left unused.

    A pair that ends in a graph output becomes Identity(x): a graph output keeps its name.
    """
    graph = model.graph
    types = _elem_types(model)
    producer = {name: node for node in graph.node for name in node.output}
    outputs = {o.name for o in graph.output}
    bypass = {}
    for node in graph.node:
        first = producer.get(node.input[0]) if _cast_to(node) == TensorProto.FLOAT else None
        if (
            first is None
            or _cast_to(first) != TensorProto.FLOAT16
            or types.get(first.input[0]) != TensorProto.FLOAT
        ):
            continue
        if node.output[0] in outputs:
            node.CopyFrom(helper.make_node("Identity", [first.input[0]], node.output, node.name))
        bypass[node.output[0]] = first.input[0]
    for node in walk_nodes(graph.node):
        for i, name in enumerate(node.input):
            node.input[i] = bypass.get(name, name)
    while True:
        used = {name for node in walk_nodes(graph.node) for name in node.input} | outputs
        keep = [n for n in graph.node if _cast_to(n) is None or n.output[0] in used]
        if len(keep) == len(graph.node):
            return len(bypass)
        del graph.node[:]
        graph.node.extend(keep)


def _toposorted(model: onnx.ModelProto) -> onnx.ModelProto:
    gs = import_graphsurgeon()

    graph = gs.import_onnx(model)
    graph.toposort(recurse_functions=False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(gs.export_onnx(graph).graph)
    return out


def convert_fp16(model: onnx.ModelProto) -> PassResult:
    """Convert to FP16 with FP32 islands (see the module docstring); graph I/O stays FP32."""
    from onnxruntime.transformers import float16

    inlined = next((p.value for p in model.metadata_props if p.key == INLINED_KEY), None)
    if inlined:
        raise PassError(
            f"{_NAME}: {inlined} were inlined, so their bodies would become FP16; "
            "run fp16 before inline"
        )
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) or any(
        _cast_to(n) == TensorProto.FLOAT16 for n in model.graph.node
    ):
        raise PassError(
            f"{_NAME}: the model already has FP16 weights or casts; run fp16 once, on the FP32 "
            "model"
        )
    foreign = sorted(f"{f.domain}::{f.name}" for f in model.functions if f.domain != DOMAIN)
    if foreign:
        raise PassError(
            f"{_NAME}: model-local function(s) {', '.join(foreign)} would get FP16 inputs their "
            "bodies may not accept; inline them first (onnx.inliner.inline_local_functions)"
        )
    work = onnx.ModelProto()
    work.CopyFrom(model)
    blocked = _name_blocked_nodes(work.graph)
    _drop_initializer_value_info(work.graph)
    _declare_op_outputs(work)
    casts_before = sum(_cast_to(n) is not None for n in work.graph.node)
    converted = float16.convert_float_to_float16(
        infer_shapes(work),  # ours works past 2 GiB; the converter's in-memory one does not
        keep_io_types=True,
        op_block_list=float16.DEFAULT_OP_BLOCK_LIST,
        node_block_list=blocked,
        disable_shape_infer=True,
    )
    pairs = _bypass_cast_pairs(converted)
    out = _toposorted(converted)
    fp16 = {t.name for t in out.graph.initializer if t.data_type == TensorProto.FLOAT16}
    was_fp16 = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16}
    return PassResult(
        _NAME,
        out,
        modified=out != model,
        counts={
            "fp32_nodes": len(blocked),
            "casts_added": sum(_cast_to(n) is not None for n in out.graph.node) - casts_before,
            "cast_pairs_bypassed": pairs,
            "initializers_fp16": len(fp16 - was_fp16),
        },
    )


def _ensure(model: onnx.ModelProto) -> None:
    types = _elem_types(model)
    for node in model.graph.node:
        if keeps_fp32(node):
            bad = [n for n in (*node.input, *node.output) if types.get(n) == TensorProto.FLOAT16]
            if bad:
                raise PostconditionError(
                    f"{_NAME}: FP32-kept node {node.name!r} touches FP16 tensors {bad}"
                )


FP16 = register_pass(
    GraphPass(
        _NAME,
        convert_fp16,
        requires="no model-local function other than trimformer's",
        ensures="FP16 except LayerNormalization, Softmax, trimformer calls and plugins (FP32, "
        "with Casts); graph inputs and outputs stay FP32",
        ensure=_ensure,
    )
)

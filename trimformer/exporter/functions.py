"""Keep each reduction as ONE call node in domain ``trimformer`` and attach its function body.

torch's ONNX exporter inlines onnxscript functions given as translations. So each registered op
gets an ``onnx.defs`` schema and a translation that emits a bare node of that domain; after
export the op's FunctionProto (retargeted to the model's opset) is attached to the model, which
makes the node a call to a model-local function that any ONNX runtime can inline.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import onnx
from onnx import defs
from onnxscript.values import Opset

from trimformer.ops import DOMAIN, OpSpec, domain_version, get_op, registered_ops

__all__ = ["attach_functions", "translation_table"]

_FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def _infer(spec: OpSpec) -> Callable[[Any], None]:
    """Shape inference for a call node: output ``<name>_out`` is input ``<name>`` with the
    static output-token count on axis 1 (when the input's token count is known)."""
    inputs = {name: i for i, name in enumerate(spec.inputs)}

    def infer(ctx: Any) -> None:
        attrs = {}
        for a in spec.attributes:
            proto = ctx.get_attribute(a.name)
            if proto is not None:
                attrs[a.name] = onnx.helper.get_attribute_value(proto)
        for j, name in enumerate(spec.outputs):
            source = ctx.get_input_type(inputs.get(name.removesuffix("_out"), 0))
            if source is None:
                continue
            out = onnx.TypeProto()
            out.CopyFrom(source)
            dims = out.tensor_type.shape.dim
            if len(dims) > 1:
                dims[1].Clear()
                n = source.tensor_type.shape.dim[1]
                if n.HasField("dim_value") and len(attrs) == len(spec.attributes):
                    # invalid attributes are reported by validation, not by inference
                    with contextlib.suppress(ValueError):
                        dims[1].dim_value = spec.output_tokens(n.dim_value, attrs)
            ctx.set_output_type(j, out)

    return infer


def _schema(spec: OpSpec) -> defs.OpSchema:
    attr_type = {int: defs.OpSchema.AttrType.INT, float: defs.OpSchema.AttrType.FLOAT}
    schema = defs.OpSchema(
        spec.name,
        spec.domain,
        spec.version,
        doc=spec.doc,
        inputs=[defs.OpSchema.FormalParameter(n, "T") for n in spec.inputs],
        outputs=[defs.OpSchema.FormalParameter(n, "T") for n in spec.outputs],
        type_constraints=[("T", _FLOAT_TYPES, "floating-point tensors")],
        attributes=[
            defs.OpSchema.Attribute(a.name, attr_type[a.kind], a.doc) for a in spec.attributes
        ],
    )
    schema.set_type_and_shape_inference_function(_infer(spec))
    return schema


def _translation(spec: OpSpec) -> Callable[..., Any]:
    """A translation with the op's own signature, emitting a bare ``trimformer`` node."""
    opset = Opset(spec.domain, domain_version())
    input_names = spec.inputs
    attr_names = tuple(a.name for a in spec.attributes)

    def translate(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        inputs = [bound.arguments[n] for n in input_names]
        attrs = {n: bound.arguments[n] for n in attr_names}
        return getattr(opset, spec.name)(*inputs, **attrs, _outputs=len(spec.outputs))

    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in input_names]
    params += [
        inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=a.kind)
        for a in spec.attributes
    ]
    signature = inspect.Signature(params)
    translate.__signature__ = signature  # type: ignore[attr-defined]
    translate.__name__ = f"translate_{spec.name}"
    return translate


def translation_table() -> dict[Callable[..., Any], Callable[..., Any]]:
    """The exporter's custom translation table for every registered op (schemas registered once)."""
    table = {}
    for spec in registered_ops().values():
        if not defs.has(spec.name, spec.domain):
            defs.register_schema(_schema(spec))
        table[spec.torch_op] = _translation(spec)
    return table


def attach_functions(model: onnx.ModelProto) -> dict[str, int]:
    """Attach the FunctionProto of every trimformer op the graph calls; return {op: version}."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    used = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
    present = {f.name for f in model.functions if f.domain == DOMAIN}
    versions = {}
    for name in used:
        spec = get_op(name)
        versions[name] = spec.version
        if name not in present:
            model.functions.append(spec.onnx_function(opset))
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, domain_version()))
    return versions

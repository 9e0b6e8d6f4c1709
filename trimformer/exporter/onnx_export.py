"""Trace a torch module to an ONNX ModelProto with trimformer ops kept as function calls."""

from __future__ import annotations

import contextlib
import inspect
import io
import warnings
from typing import Any

import onnx
import torch
from torch import nn

from trimformer.errors import RuntimeFailure
from trimformer.exporter.functions import attach_functions, translation_table
from trimformer.models.base import GraphIO

__all__ = ["export_onnx"]


def _summary(exc: BaseException) -> str:
    """The line of torch's export error report that names the actual exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("## Exception summary") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else type(exc).__name__


def _dynamic_shapes(module: nn.Module, graph_io: GraphIO) -> Any:
    """torch.export dims for ``io.dynamic``; one Dim object per name, shared across inputs.

    A forward taking ``*args`` gets them under that name, as torch.export matches its structure.
    """
    if not graph_io.dynamic:
        return None
    dims = {
        name: torch.export.Dim(name, min=1, max=4096)
        for axes in graph_io.dynamic.values()
        for name in axes.values()
    }
    specs = tuple(
        {axis: dims[dim] for axis, dim in graph_io.dynamic.get(name, {}).items()}
        for name in graph_io.example
    )
    parameters = inspect.signature(module.forward).parameters.values()
    varargs = [p.name for p in parameters if p.kind is inspect.Parameter.VAR_POSITIONAL]
    return {varargs[0]: specs} if varargs else specs


def _name_dims(model: onnx.ModelProto, graph_io: GraphIO) -> None:
    """Name dynamic dims as ``graph_io.dynamic`` does (torch writes its own symbols); outputs
    get a leading "batch" dim when the batch is dynamic."""
    for value in model.graph.input:
        for axis, dim_name in graph_io.dynamic.get(value.name, {}).items():
            dim = value.type.tensor_type.shape.dim[axis]
            dim.ClearField("dim_value")
            dim.dim_param = dim_name
    if any("batch" in axes.values() for axes in graph_io.dynamic.values()):
        for value in model.graph.output:
            dim = value.type.tensor_type.shape.dim[0]
            dim.ClearField("dim_value")
            dim.dim_param = "batch"


def export_onnx(
    module: nn.Module, graph_io: GraphIO, opset: int
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Export ``module(*graph_io.example)``; return the model and the trimformer ops it calls.

    Inputs and outputs are named as ``graph_io`` names them, its dynamic axes symbolic.
    """
    log = io.StringIO()
    try:
        with (
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
            warnings.catch_warnings(),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                tuple(graph_io.example.values()),
                dynamo=True,
                input_names=list(graph_io.example),
                output_names=list(graph_io.outputs),
                opset_version=opset,
                dynamic_shapes=_dynamic_shapes(module, graph_io),
                custom_translation_table=translation_table(),
                verbose=False,
                optimize=True,
            )
    except Exception as exc:
        raise RuntimeFailure(
            f"torch could not export the model to ONNX: {_summary(exc)[:300]}"
        ) from exc
    model = program.model_proto
    _name_dims(model, graph_io)
    ops = attach_functions(model)
    onnx.checker.check_model(model)
    return model, ops

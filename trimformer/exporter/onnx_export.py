"""Trace a torch module to an ONNX ModelProto with trimformer ops kept as function calls."""

from __future__ import annotations

import contextlib
import io
import warnings

import onnx
import torch
from torch import nn

from trimformer.errors import RuntimeFailure
from trimformer.exporter.functions import attach_functions, translation_table

__all__ = ["export_onnx"]


def _summary(exc: BaseException) -> str:
    """The line of torch's export error report that names the actual exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("## Exception summary") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else type(exc).__name__


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    input_name: str,
    output_name: str,
    opset: int,
    dynamic_batch: bool,
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Export ``module(example)``; return the model and the trimformer ops it calls {name: version}.

    With ``dynamic_batch`` the first input dimension is symbolic ("batch"); the example should then
    have batch >= 2 so that torch does not specialise it to 1.
    """
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
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
                (example,),
                dynamo=True,
                input_names=[input_name],
                output_names=[output_name],
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=translation_table(),
                verbose=False,
                optimize=True,
            )
    except Exception as exc:
        raise RuntimeFailure(
            f"torch could not export the model to ONNX: {_summary(exc)[:300]}"
        ) from exc
    model = program.model_proto
    if dynamic_batch:
        for value in (*model.graph.input, *model.graph.output):
            dim = value.type.tensor_type.shape.dim[0]
            dim.ClearField("dim_value")
            dim.dim_param = "batch"
    ops = attach_functions(model)
    onnx.checker.check_model(model)
    return model, ops

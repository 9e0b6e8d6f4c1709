"""int8 graphs for ONNX Runtime, made by ``onnxruntime.quantization``.

Static (QDQ, calibrated): MatMul, Gemm and Conv get int8 weights (per channel, symmetric) and
uint8 activations whose ranges come from running the float graph on the calibration set.
Dynamic: int8 weights, activation ranges computed at run time, no calibration. Either way the
reductions stay float: ONNX Runtime's quantizer sees a trimformer op as one opaque function
call, so the matching and ranking inside it (which decide the surviving tokens) run in fp32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from trimformer.quantization.calibration import CalibrationSet

__all__ = ["CALIBRATION_BATCH", "OPS", "quantize_ort"]

OPS = ["MatMul", "Gemm", "Conv"]
"""The op types given int8 kernels: the model's dense layers and attention products."""
CALIBRATION_BATCH = 16


def quantize_ort(
    source: Path,
    dest: Path,
    calibration: CalibrationSet | None,
    inputs: list[str],
    fixed_batch: int | None,
    large: bool,
) -> str:
    """Write the int8 form of the ONNX graph ``source`` to ``dest``: static QDQ on
    ``calibration`` (fed the graph's ``inputs``), or dynamic without it. ``large`` (a model
    near protobuf's 2 GiB) writes the weights beside ``dest`` as external data. Returns the
    scheme."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if calibration is None:
        with _without_pre_processing_advice():
            quantize_dynamic(
                source,
                dest,
                op_types_to_quantize=OPS,
                weight_type=QuantType.QInt8,
                per_channel=True,
                use_external_data_format=large,
            )
        return "dynamic"

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            size = fixed_batch or CALIBRATION_BATCH
            self._feeds: Iterator[dict[str, np.ndarray]] = calibration.batches(
                inputs, size, fixed=fixed_batch is not None
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with _without_pre_processing_advice():
        quantize_static(
            source,
            dest,
            _Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=OPS,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            use_external_data_format=large,
        )
    return "static-qdq"


class _PreProcessingAdvice(logging.Filter):
    """Drops ONNX Runtime's "consider pre-processing before quantization" warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_pre_processing_advice() -> Iterator[None]:
    """Silence one warning of ``quantize_static``, which it gives for every graph not run through
    ``quant_pre_process``. That step optimises the graph with ONNX Runtime, which inlines
    trimformer's functions: their MatMuls would then be quantized, and the token matching would
    no longer run in fp32. Skipping it is deliberate, so the advice is noise to a user."""
    advice = _PreProcessingAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)

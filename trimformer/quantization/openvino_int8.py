"""int8 graphs for OpenVINO, made by NNCF's post-training quantization.

The bundle's ONNX graph is read with trimformer's OpenVINO extension, NNCF inserts quantize /
dequantize pairs where its transformer preset wants them (dense layers and attention products;
it leaves ops it does not know, such as trimformer's fused ops, in float) from statistics of the
calibration set, and the result is saved as OpenVINO IR (.xml + .bin) with fp32 constants kept
as they are. Where the ops are decomposed instead of fused, their nodes are excluded from
quantization by name, so the matching and ranking stay fp32 either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trimformer.quantization.calibration import CalibrationSet

__all__ = ["quantize_openvino"]

_CALIBRATION_BATCH = 16


def quantize_openvino(
    core: Any,
    model: Any,
    dest: Path,
    calibration: CalibrationSet,
    inputs: list[str],
    fixed_batch: int | None,
    keep_float: list[str],
) -> str:
    """Quantize the OpenVINO ``model`` (read from a bundle graph, fed the graph's ``inputs``)
    on ``calibration`` and save it as IR at ``dest`` (.xml, its .bin beside it). Node names
    matching a regular expression of ``keep_float`` stay float. Returns the scheme."""
    import nncf
    import openvino

    size = fixed_batch or _CALIBRATION_BATCH
    feeds = list(calibration.batches(inputs, size, fixed=fixed_batch is not None))
    ignored = nncf.IgnoredScope(patterns=keep_float, validate=False) if keep_float else None
    quantized = nncf.quantize(
        model,
        nncf.Dataset(feeds),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),  # NNCF counts dataset items: here, batches
        ignored_scope=ignored,
    )
    openvino.save_model(quantized, str(dest), compress_to_fp16=False)
    return "nncf-ptq"

"""int8 graphs of a bundle's configs: ONNX Runtime (static QDQ or dynamic) and OpenVINO (NNCF).

``quantize_bundle`` adds them to the bundle, recorded per config and backend in the manifest;
``load(bundle, backend=..., precision="int8")`` runs them.
"""

from __future__ import annotations

from trimformer.quantization.calibration import CalibrationSet
from trimformer.quantization.quantize import Quantized, QuantizeRequest, quantize_bundle

__all__ = ["CalibrationSet", "QuantizeRequest", "Quantized", "quantize_bundle"]

"""Apply a method to a model, export it to ONNX with its reductions as functions, write a bundle."""

from __future__ import annotations

from trimformer.exporter.export import VERIFY_ATOL, ExportRequest, export_bundle

__all__ = ["VERIFY_ATOL", "ExportRequest", "export_bundle"]

"""Which runtime a bundle runs on, at which precision: one value the CLI commands pass down.

``run``, ``bench``, ``eval``, ``sweep`` and ``tune`` take the same ``--backend``,
``--precision`` and ``--device`` flags; they become a ``RuntimeOptions`` that reaches
``load`` unchanged, so every command runs a bundle the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trimformer.errors import UsageError
from trimformer.runtime.precision import PRECISIONS

__all__ = ["BACKENDS", "EXTENSION_MODES", "FP32_ORT", "RuntimeOptions"]

BACKENDS = ("ort", "openvino")
"""The runtimes a ``Session`` runs a bundle's graphs on."""
EXTENSION_MODES = ("auto", "fused", "decomposed")
"""How OpenVINO runs trimformer's ops: the fused C++ library, or opset ops, or fused where it
can be built."""


@dataclass(frozen=True)
class RuntimeOptions:
    """A backend ("ort" or "openvino"), a precision ("fp32", "fp16", "bf16", "int8"), an OpenVINO
    device (None: CPU) and how OpenVINO loads trimformer's ops ("auto", "fused",
    "decomposed")."""

    backend: str = "ort"
    precision: str = "fp32"
    device: str | None = None
    extensions: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}"
            )
        if self.backend == "ort" and self.precision in ("fp16", "bf16"):
            raise UsageError(
                f"precision {self.precision} runs on OpenVINO (an inference precision ONNX "
                "Runtime does not have for these graphs); use --backend openvino, or --precision "
                "fp32 / int8"
            )
        if self.extensions not in EXTENSION_MODES:
            raise UsageError(
                f"unknown extensions mode {self.extensions!r}; choose from "
                f"{', '.join(EXTENSION_MODES)}"
            )
        if self.backend == "ort" and self.device is not None:
            raise UsageError("--device picks an OpenVINO device; add --backend openvino")

    def load_options(self) -> dict[str, Any]:
        """The keyword arguments of ``load`` / ``Session`` these options set."""
        return {
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "extensions": self.extensions,
        }

    def describe(self) -> str:
        """e.g. ``ort fp32``, ``openvino CPU bf16``."""
        where = f" {self.device}" if self.device else ""
        return f"{self.backend}{where} {self.precision}"


FP32_ORT = RuntimeOptions()
"""The reference: ONNX Runtime at fp32, what agreement is measured against."""

"""The OpenVINO backend of ``Session``: compiles a bundle graph for an OpenVINO device.

The bundle's ONNX graphs load as they are: trimformer's extension (``openvino_ext``) maps every
``trimformer``-domain node to a fused C++ op, or, without the compiled library, to OpenVINO
opset ops built from the op's ONNX function. fp32 and bf16 are OpenVINO's inference precision
(``INFERENCE_PRECISION_HINT``), as is fp16 (iGPU, NPU); OpenVINO's CPU plugin would pick bf16 by
itself on an AMX CPU, so fp32 is always set explicitly. int8 graphs (NNCF, ``trimformer
quantize``) are OpenVINO IR.

An ``InferRequest`` serves one call at a time, so each opened graph keeps a pool of them: a call
takes a free request (or makes one), which lets several threads run one graph at once.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trimformer.errors import RuntimeFailure, UsageError, first_line

__all__ = ["OpenVinoBackend", "import_openvino"]

_log = logging.getLogger("trimformer")
_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
"""OpenVINO's inference precision per trimformer precision: int8 graphs carry their own
quantize/dequantize ops and run the rest at fp32."""


def import_openvino() -> Any:
    """The ``openvino`` module, or a UsageError saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise UsageError(
            "backend openvino needs the openvino package; pip install 'trimformer[openvino]'"
        ) from None
    return openvino


class _OpenVinoGraph:
    """A compiled model and its pool of infer requests."""

    def __init__(self, compiled: Any, file: Path) -> None:
        self._compiled = compiled
        self._file = file
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.input_names = [port.get_any_name() for port in compiled.inputs]
        self.output_names = [port.get_any_name() for port in compiled.outputs]

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            request = self._free.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            results = request.infer(dict(feed), share_inputs=True, share_outputs=False)
        except RuntimeError as exc:
            raise RuntimeFailure(
                f"openvino failed running {self._file}: {first_line(exc)}"
            ) from None
        finally:
            self._free.put(request)
        return [results[port] for port in self._compiled.outputs]

    def profile(self) -> list[Any]:
        """Per-node profiling info of one run on a request of this graph (PERF_COUNT)."""
        request = self._free.get_nowait()
        try:
            return list(request.profiling_info)
        finally:
            self._free.put(request)


class OpenVinoBackend:
    """Compiles graphs for one OpenVINO device at one precision, with trimformer's ops added.

    ``extensions``: "fused" (the compiled C++ library, built on first use), "decomposed"
    (OpenVINO opset ops, no compiler needed) or "auto" (fused where it can be built).
    ``profile`` turns OpenVINO's per-node performance counters on.
    """

    name = "openvino"
    precisions = ("fp32", "fp16", "bf16", "int8")

    def __init__(
        self,
        device: str = "CPU",
        threads: int | None = None,
        precision: str = "fp32",
        extensions: str = "auto",
        profile: bool = False,
    ) -> None:
        openvino = import_openvino()
        from trimformer.runtime.openvino_ext import add_extensions

        self._core = openvino.Core()
        available = self._core.available_devices
        if device.split(".")[0] not in {d.split(".")[0] for d in available}:
            raise UsageError(
                f"OpenVINO device {device!r} is not available here; choose from "
                f"{', '.join(available)}"
            )
        self.device = device
        self.precision = _supported_precision(self._core, device, precision)
        self.extension = add_extensions(self._core, extensions)
        self._config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS[self.precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = threads
        if profile:
            self._config["PERF_COUNT"] = True

    def open(self, file: Path, graph: str, weights: object = None) -> _OpenVinoGraph:
        """Read and compile ``file`` (ONNX, or OpenVINO IR .xml); ``weights`` is unused: each
        compiled model holds its own constants."""
        from trimformer.runtime.openvino_ext import read_model

        try:
            model = read_model(self._core, file)
            compiled = self._core.compile_model(model, self.device, self._config)
        except RuntimeError as exc:
            raise UsageError(
                f"{file} cannot be loaded by openvino: {first_line(exc)}; re-export the bundle"
            ) from None
        return _OpenVinoGraph(compiled, file)

    def providers_of(self, opened: _OpenVinoGraph) -> tuple[tuple[str, ...], dict[str, Any]]:
        """What runs the graph, for reports: ``openvino:DEVICE``, with its precision and how
        trimformer's ops run."""
        options = {"precision": self.precision, "extensions": self.extension.mode}
        return (f"openvino:{self.device}",), {f"openvino:{self.device}": options}


def _supported_precision(core: Any, device: str, precision: str) -> str:
    """``precision``, or fp32 with one warning where the device lacks fp16 / bf16 arithmetic
    (a CPU without AVX512-FP16 / AMX-FP16, or without AVX512-BF16 / AMX)."""
    if precision not in ("fp16", "bf16"):
        return precision
    capabilities = core.get_property(device, "OPTIMIZATION_CAPABILITIES")
    if precision.upper() in capabilities:
        return precision
    _log.warning(
        "%s has no %s support (OpenVINO reports %s); running fp32",
        device,
        precision,
        ", ".join(capabilities),
    )
    return "fp32"

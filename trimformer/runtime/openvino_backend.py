"""The OpenVINO backend of ``Session``: compiles a bundle graph for an OpenVINO device.

The bundle's ONNX graphs load as they are: trimformer's extension (``openvino_ext``) maps each
``trimformer``-domain node that has a fused C++ op to it, and the others (or all, without the
compiled library) to OpenVINO opset ops built from the op's ONNX function. fp32 and bf16 are
OpenVINO's inference precision (``INFERENCE_PRECISION_HINT``), as is fp16 (iGPU, NPU); OpenVINO's
CPU plugin would pick bf16 by itself on an AMX CPU, so fp32 is always set explicitly. int8
graphs (NNCF, ``trimformer quantize``) are OpenVINO IR.

A graph of a dynamic batch is compiled for each batch size it is run at (OpenVINO's static-shape
kernels are much faster than its dynamic-shape path). An ``InferRequest`` serves one call at a
time, so each compiled graph keeps a pool of them: a call takes a free request (or makes one),
which lets several threads run one graph at once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
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
    """A graph compiled once per input shape it is run at, each with a pool of infer requests.

    A bundle graph has a dynamic batch; compiled with it, OpenVINO's CPU plugin runs every
    node through its dynamic-shape path (DeiT-tiny ToMe, bf16: 12.5 ms at batch 1 dynamic,
    7.4 ms reshaped to batch 1). So the model is reshaped to the shapes of the call and compiled
    for them the first time they come (a few compilations: one per batch size used).
    """

    def __init__(self, core: Any, model: Any, device: str, config: Mapping[str, Any], file: Path):
        self._core, self._model, self._device, self._config = core, model, device, dict(config)
        self._file = file
        self._static = all(port.get_partial_shape().is_static for port in model.inputs)
        self._compiled: dict[tuple[tuple[int, ...], ...], tuple[Any, queue.SimpleQueue[Any]]] = {}
        self._lock = threading.Lock()
        self.input_names = [port.get_any_name() for port in model.inputs]
        self.output_names = [port.get_any_name() for port in model.outputs]
        if self._static:
            self._variant(())

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        compiled, free = self._variant(self._shapes(feed))
        try:
            request = free.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:
            results = request.infer(dict(feed), share_inputs=True, share_outputs=False)
        except RuntimeError as exc:
            raise RuntimeFailure(
                f"openvino failed running {self._file}: {first_line(exc)}"
            ) from None
        finally:
            free.put(request)
        return [results[port] for port in compiled.outputs]

    def node_times(self, feed: Mapping[str, np.ndarray], runs: int = 10) -> dict[str, float]:
        """Mean ms per run spent in each kind of executed node (OpenVINO's performance
        counters; the backend must be opened with ``profile``), over ``runs`` runs after one
        warm-up run, largest first. A fused trimformer op is kind "Reference"."""
        if not self._config.get("PERF_COUNT"):
            raise UsageError("node_times needs OpenVINO's performance counters: open with profile")
        request = self._variant(self._shapes(feed))[0].create_infer_request()
        request.infer(dict(feed))
        spent: Counter[str] = Counter()
        for _ in range(runs):
            request.infer(dict(feed))
            for node in request.profiling_info:
                if node.status == node.Status.EXECUTED:
                    spent[node.node_type] += node.real_time.total_seconds() * 1e3 / runs
        return dict(spent.most_common())

    def _shapes(self, feed: Mapping[str, np.ndarray]) -> tuple[tuple[int, ...], ...]:
        return () if self._static else tuple(tuple(feed[n].shape) for n in self.input_names)

    def _variant(self, shapes: tuple[tuple[int, ...], ...]) -> tuple[Any, queue.SimpleQueue[Any]]:
        """The model compiled for ``shapes`` (one per input; () for a static model)."""
        with self._lock:
            if shapes not in self._compiled:
                model = self._model
                if shapes:
                    model = self._model.clone()
                    model.reshape(dict(zip(self.input_names, map(list, shapes), strict=True)))
                try:
                    compiled = self._core.compile_model(model, self._device, self._config)
                except RuntimeError as exc:
                    raise UsageError(
                        f"{self._file} cannot be compiled by openvino for inputs {shapes}: "
                        f"{first_line(exc)}; re-export the bundle"
                    ) from None
                self._compiled[shapes] = (compiled, queue.SimpleQueue())
            return self._compiled[shapes]


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

        if self.extension.mode != "fused" and _uses_fused_ops(file):
            raise UsageError(
                f"{file} was saved with trimformer's fused OpenVINO ops, which are not loaded "
                f"here (extensions: {self.extension.mode}); build them with trimformer openvino "
                "build, or quantize again here (trimformer quantize --force)"
            )
        try:
            model = read_model(self._core, file, self.extension)
        except RuntimeError as exc:
            raise UsageError(
                f"{file} cannot be loaded by openvino: {first_line(exc)}; re-export the bundle"
            ) from None
        return _OpenVinoGraph(self._core, model, self.device, self._config, file)

    def providers_of(self, opened: _OpenVinoGraph) -> tuple[tuple[str, ...], dict[str, Any]]:
        """What runs the graph, for reports: ``openvino:DEVICE``, with its precision and how
        trimformer's ops run."""
        options = {"precision": self.precision, "extensions": self.extension.mode}
        return (f"openvino:{self.device}",), {f"openvino:{self.device}": options}


def _uses_fused_ops(file: Path) -> bool:
    """Whether an OpenVINO IR holds layers of trimformer's opsets (``trimformer_v<N>``), which
    only the compiled library can read; an ONNX graph never needs it (it carries its
    functions)."""
    if file.suffix != ".xml":
        return False
    try:
        return 'version="trimformer_v' in file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


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

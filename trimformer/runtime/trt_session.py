"""Run a bundle's TensorRT engine with the same API as the ONNX Runtime ``Session``.

``TrtSession(bundle, profile)`` checks the engine's and its record's sha256 against the manifest,
refuses an engine built for another TensorRT version or GPU (one line naming both), loads the
plugins the engine was built with (the plugin library, or the Python QDP form), deserialises the
engine and runs it on one CUDA stream. Device buffers and the stream are torch's (imported
lazily): no extra CUDA binding is needed. With ``cuda_graph=True`` each input shape is captured
once into a CUDA graph and replayed. Inputs are validated exactly as ``Session`` validates them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trimformer.bundle import read_manifest
from trimformer.errors import RuntimeFailure, UsageError
from trimformer.runtime.session import Session, TensorSpec
from trimformer.runtime.trt_build import check_engine_compatible, read_engine_record
from trimformer.runtime.trt_env import (
    TrtVersion,
    find_plugin_library,
    gpu_identity,
    import_tensorrt,
)

if TYPE_CHECKING:
    import tensorrt

__all__ = ["TrtSession", "load_engine"]


@dataclass
class _Bound:
    """Device buffers bound to the context for one set of input shapes (and its CUDA graph)."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    graph: Any = None


class TrtSession(Session):
    """One TensorRT engine of a bundle: ``inputs``, ``outputs``, ``run``, ``close``, ``with``.

    ``run`` is serialised by a lock (a TensorRT execution context runs one inference at a time).
    """

    def __init__(
        self,
        bundle: str | Path,
        profile: str,
        plugin_library: Path | None = None,
        cuda_graph: bool = False,
        device: int = 0,
    ) -> None:
        bundle = Path(bundle)
        self.manifest: dict[str, Any] = read_manifest(bundle)
        self.graph = "model"
        self.profile = profile
        plan_path, record = read_engine_record(bundle, self.manifest, profile)
        self._file = plan_path
        trt = import_tensorrt()
        version = TrtVersion.parse(trt.__version__)
        check_engine_compatible(record, version, gpu_identity(device), str(plan_path))
        try:
            self.inputs = tuple(TensorSpec.from_manifest(e) for e in record["inputs"])
            self.outputs = tuple(TensorSpec.from_manifest(e) for e in record["outputs"])
        except (KeyError, TypeError) as exc:
            raise UsageError(f"{plan_path}: its record is malformed ({exc}); rebuild it") from None
        self.providers: tuple[str, ...] = (f"TensorRT {version}",)
        self._cuda_graph = cuda_graph
        self._lock = threading.Lock()
        self._bound: dict[tuple[tuple[int, ...], ...], _Bound] = {}

        import torch

        self._torch = torch
        self._device = torch.device("cuda", device)
        self._logger: tensorrt.ILogger = trt.Logger(trt.Logger.WARNING)
        runtime: tensorrt.Runtime = trt.Runtime(self._logger)
        if record.get("plugins") == "qdp":
            from trimformer.plugins_qdp import register_qdp_plugins

            register_qdp_plugins()
        else:
            runtime.get_plugin_registry().load_library(str(find_plugin_library(plugin_library)))
        engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise RuntimeFailure(f"TensorRT could not deserialise {plan_path}; rebuild it")
        self._check_engine_io(trt, engine)
        self._trt = trt
        self._runtime = runtime
        self._engine: tensorrt.ICudaEngine | None = engine
        self._context: tensorrt.IExecutionContext | None = engine.create_execution_context()
        self._stream = torch.cuda.Stream(self._device)

    def _check_engine_io(self, trt: Any, engine: tensorrt.ICudaEngine) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        for kind, declared, actual in (
            ("inputs", self.inputs, [n for n in names if is_input[n]]),
            ("outputs", self.outputs, [n for n in names if not is_input[n]]),
        ):
            if sorted(s.name for s in declared) != sorted(actual):
                raise UsageError(
                    f"{self._file}: its record declares {kind} {[s.name for s in declared]} but "
                    f"the engine has {actual}; rebuild it"
                )

    def __repr__(self) -> str:
        state = "closed" if self._context is None else self.providers[0]
        return f"TrtSession({str(self._file)!r}, profile={self.profile!r}, {state})"

    def end_profiling(self) -> Path:
        raise UsageError("profiling is an ONNX Runtime feature; use trtexec --dumpProfile")

    def close(self) -> None:
        """Release the context, engine and buffers; later calls to ``run`` are errors."""
        self._bound.clear()
        self._context = None
        self._engine = None

    def _live(self) -> tuple[tensorrt.ICudaEngine, tensorrt.IExecutionContext]:
        if self._engine is None or self._context is None:
            raise UsageError(f"{self!r} is closed; load the engine again")
        return self._engine, self._context

    def _bind(self, feed: Mapping[str, np.ndarray]) -> _Bound:
        """Buffers for these input shapes, set on the context (made once per shape set)."""
        torch = self._torch
        key = tuple(tuple(feed[spec.name].shape) for spec in self.inputs)
        bound = self._bound.get(key)
        if bound is not None:
            return bound
        engine, context = self._live()
        inputs = {}
        for spec in self.inputs:
            array = feed[spec.name]
            inputs[spec.name] = torch.empty(
                array.shape, dtype=torch.from_numpy(array[:0]).dtype, device=self._device
            )
            if not context.set_input_shape(spec.name, tuple(array.shape)):
                raise UsageError(
                    f"input {spec.name!r} shape {array.shape} is outside the engine's profile; "
                    f"see engines/{self.profile}.json for its batch range"
                )
            context.set_tensor_address(spec.name, inputs[spec.name].data_ptr())
        outputs = {}
        for spec in self.outputs:
            dims = context.get_tensor_shape(spec.name)
            shape = tuple(dims[i] for i in range(len(dims)))
            dtype = np.dtype(self._trt.nptype(engine.get_tensor_dtype(spec.name)))
            outputs[spec.name] = torch.empty(
                shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, device=self._device
            )
            context.set_tensor_address(spec.name, outputs[spec.name].data_ptr())
        bound = _Bound(inputs, outputs)
        self._bound[key] = bound
        return bound

    def _enqueue(self, bound: _Bound) -> None:
        torch = self._torch
        if bound.graph is not None:
            bound.graph.replay()
            return
        _, context = self._live()
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeFailure(f"TensorRT failed running {self._file}")
        if self._cuda_graph:  # capture after one plain run, as TensorRT requires
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                context.execute_async_v3(self._stream.cuda_stream)
            bound.graph = graph

    def _run_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy inputs in, run the engine on the session's stream, copy outputs out."""
        self._live()
        torch = self._torch
        with self._lock, torch.cuda.stream(self._stream):
            bound = self._bind(feed)
            for name, buffer in bound.inputs.items():
                buffer.copy_(torch.from_numpy(np.ascontiguousarray(feed[name])))
            self._enqueue(bound)
            results = {name: t.cpu().numpy() for name, t in bound.outputs.items()}
        return {spec.name: results[spec.name] for spec in self.outputs}


def load_engine(
    bundle: str | Path, profile: str, cuda_graph: bool = False, plugin_library: Path | None = None
) -> TrtSession:
    """Load ``engines/<profile>.plan`` of a bundle (built by ``trimformer build``)."""
    return TrtSession(bundle, profile, plugin_library=plugin_library, cuda_graph=cuda_graph)

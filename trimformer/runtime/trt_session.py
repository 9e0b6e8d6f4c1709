"""Run a bundle's TensorRT engines with the same API as the ONNX Runtime ``Session``.

``TrtSession(bundle, profile)`` finds the profile's engines: ``engines/<profile>.plan`` (one
engine, for the default config) and ``engines/<profile>/<config>.plan`` (a config bank, built
with ``trimformer build --config``). Before loading anything it checks every engine's and
record's sha256 against the manifest and refuses an engine built for another TensorRT version
or GPU (one line naming both, per engine). It loads the plugins the engines were built with
(the plugin library, or the Python QDP form), deserialises an engine when its config is first
used (all at once with ``preload``), refits a weight-stripped one from the bundle's weights
(see ``trt_bank``), and runs each engine on its own CUDA stream and execution context.
``configs``, ``use`` and ``run(inputs, config=...)`` behave as in ``Session``: switching is
thread-safe and a call in flight finishes on its engine. Device buffers and the streams are
torch's (imported lazily): no extra CUDA binding is needed. With ``cuda_graph=True`` each input
shape is captured once into a CUDA graph and replayed. Inputs are validated exactly as
``Session`` validates them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from trimformer.bundle import bank_configs, read_manifest
from trimformer.errors import RuntimeFailure, UsageError
from trimformer.runtime.session import Session, TensorSpec
from trimformer.runtime.trt_bank import ConfigSwitch, engine_key, refit_engine
from trimformer.runtime.trt_build import (
    check_engine_compatible,
    prepared_graph,
    read_engine_record,
)
from trimformer.runtime.trt_env import (
    TrtVersion,
    find_plugin_library,
    gpu_identity,
    import_tensorrt,
    load_plugin_library,
    tensorrt_logger,
)

if TYPE_CHECKING:
    import tensorrt

__all__ = ["TrtSession", "engine_records", "load_engine"]


def engine_records(
    bundle: Path, manifest: Mapping[str, Any], profile: str
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Config name -> (plan, record) of every engine built for ``profile``, in config order,
    each checked against its sha256. The one-engine layout serves the config of graph "model"
    unless that config has its own engine."""
    configs, default = bank_configs(manifest)
    engines = manifest.get("engines") or {}
    found = {}
    for name in configs:
        if engine_key(profile, name) in engines:
            found[name] = read_engine_record(bundle, manifest, profile, name)
    if profile in engines or not found:  # no engine at all: read_engine_record says so
        model = next((n for n, e in configs.items() if e.get("graph") == "model"), default)
        if model not in found:
            found[model] = read_engine_record(bundle, manifest, profile)
    return {name: found[name] for name in configs if name in found}


@dataclass
class _Bound:
    """Device buffers bound to the context for one set of input shapes (and its CUDA graph)."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    graph: Any = None


class _Engine:
    """One deserialised engine: its execution context, CUDA stream and bound buffers."""

    def __init__(
        self,
        trt: ModuleType,
        torch: ModuleType,
        device: Any,
        engine: tensorrt.ICudaEngine,
        file: Path,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        cuda_graph: bool,
    ) -> None:
        self._trt = trt
        self._torch = torch
        self._device = device
        self._file = file
        self.inputs = inputs
        self.outputs = outputs
        self._check_engine_io(trt, engine)
        self._engine: tensorrt.ICudaEngine = engine
        self._context: tensorrt.IExecutionContext = engine.create_execution_context()
        self._stream = torch.cuda.Stream(device)
        self._cuda_graph = cuda_graph
        self._lock = threading.Lock()  # an execution context runs one inference at a time
        self._bound: dict[tuple[tuple[int, ...], ...], _Bound] = {}
        self._active: tuple[tuple[int, ...], ...] | None = None  # the shapes set on the context
        self._released = False

    def _check_engine_io(self, trt: ModuleType, engine: tensorrt.ICudaEngine) -> None:
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

    def _bind(self, feed: Mapping[str, np.ndarray]) -> _Bound:
        """The buffers for these input shapes (made once per shape set), with their shapes and
        addresses on the context whenever the previous run had other shapes."""
        key = tuple(tuple(feed[spec.name].shape) for spec in self.inputs)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = self._allocate(feed)
        if self._active != key:
            self._set_shapes(bound.inputs)
            for name, buffer in (*bound.inputs.items(), *bound.outputs.items()):
                self._context.set_tensor_address(name, buffer.data_ptr())
            self._active = key
        return bound

    def _set_shapes(self, inputs: Mapping[str, Any]) -> None:
        for name, buffer in inputs.items():
            if not self._context.set_input_shape(name, tuple(buffer.shape)):
                raise UsageError(
                    f"input {name!r} shape {tuple(buffer.shape)} is outside the engine's "
                    f"profile; see {self._file.with_suffix('.json')} for its batch range"
                )

    def _allocate(self, feed: Mapping[str, np.ndarray]) -> _Bound:
        """Device buffers for the inputs of ``feed`` and the outputs their shapes give."""
        torch, engine = self._torch, self._engine
        inputs = {
            spec.name: torch.empty(
                feed[spec.name].shape,
                dtype=torch.from_numpy(feed[spec.name][:0]).dtype,
                device=self._device,
            )
            for spec in self.inputs
        }
        self._set_shapes(inputs)
        self._active = None  # the context's shapes are these, its addresses not yet
        outputs = {}
        for spec in self.outputs:
            dims = self._context.get_tensor_shape(spec.name)
            shape = tuple(dims[i] for i in range(len(dims)))
            dtype = np.dtype(self._trt.nptype(engine.get_tensor_dtype(spec.name)))
            outputs[spec.name] = torch.empty(
                shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, device=self._device
            )
        return _Bound(inputs, outputs)

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeFailure(f"TensorRT failed running {self._file}")

    def _enqueue(self, bound: _Bound) -> None:
        torch = self._torch
        if bound.graph is not None:
            bound.graph.replay()
            return
        self._execute()
        if self._cuda_graph:  # capture after one plain run, as TensorRT requires
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                self._execute()
            bound.graph = graph

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy inputs in, run the engine on its stream and GPU, copy outputs out."""
        torch = self._torch
        with self._lock, torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            if self._released:
                raise UsageError(f"{self._file} was released; load the engines again")
            bound = self._bind(feed)
            for name, buffer in bound.inputs.items():
                buffer.copy_(torch.from_numpy(np.ascontiguousarray(feed[name])))
            self._enqueue(bound)
            results = {name: t.cpu().numpy() for name, t in bound.outputs.items()}
        return {spec.name: results[spec.name] for spec in self.outputs}

    def release(self) -> None:
        """Free the buffers, CUDA graphs and execution context once the call in flight (if
        any) returns; later runs are errors."""
        with self._lock:
            self._released = True
            self._bound.clear()
            self._active = None
            self._context = None  # type: ignore[assignment]


class TrtSession(Session):
    """A bundle's TensorRT engines for one device profile: ``inputs``, ``outputs``, ``configs``,
    ``use``, ``run``, ``close``, ``with``.

    ``config`` picks the config run by default (default: the bundle's default config when it
    has an engine, else the first built). Engines open on first use, or all now with
    ``preload``; each loaded engine holds its own device copy of the weights (``trt_bank``).
    """

    def __init__(
        self,
        bundle: str | Path,
        profile: str,
        plugin_library: Path | None = None,
        cuda_graph: bool = False,
        device: int = 0,
        config: str | None = None,
        preload: bool = False,
    ) -> None:
        bundle = Path(bundle)
        self.manifest: dict[str, Any] = read_manifest(bundle)
        self.profile = profile
        self._bundle = bundle
        configs, default = bank_configs(self.manifest)
        self._records = engine_records(bundle, self.manifest, profile)
        self._configs = {name: configs[name] for name in self._records}
        trt = import_tensorrt()
        version = TrtVersion.parse(trt.__version__)
        gpu = gpu_identity(device)
        for plan_path, record in self._records.values():
            check_engine_compatible(record, version, gpu, str(plan_path))
        io = {name: self._io(plan, record) for name, (plan, record) in self._records.items()}
        first = next(iter(io))
        for name, other in io.items():
            if other != io[first]:
                raise UsageError(
                    f"{bundle}: the engines of configs {first!r} and {name!r} declare different "
                    f"inputs or outputs; rebuild them with trimformer build --device {profile}"
                )
        self._engine_inputs, self.outputs = io[first]
        self.all_inputs = self._engine_inputs
        self.providers: tuple[str, ...] = (f"TensorRT {version}",)
        self._cuda_graph = cuda_graph

        import torch

        self._torch = torch
        self._device = torch.device("cuda", device)
        self._trt = trt
        self._logger: tensorrt.ILogger = tensorrt_logger(trt)
        self._runtime: tensorrt.Runtime = trt.Runtime(self._logger)
        self._load_plugins(
            {str(r.get("plugins")) for _, r in self._records.values()}, plugin_library
        )
        start = config if config is not None else (default if default in io else first)
        self._switch = ConfigSwitch(io, start, self._open_engine, f"{bundle} ({profile})")
        self._switch.get()
        if preload:
            self._switch.preload()

    def _io(
        self, plan: Path, record: Mapping[str, Any]
    ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        try:
            return (
                tuple(TensorSpec.from_manifest(e) for e in record["inputs"]),
                tuple(TensorSpec.from_manifest(e) for e in record["outputs"]),
            )
        except (KeyError, TypeError) as exc:
            raise UsageError(f"{plan}: its record is malformed ({exc}); rebuild it") from None

    def _inputs_for(self, config: str | None) -> tuple[TensorSpec, ...]:
        return self._engine_inputs  # every engine of a bank takes the same inputs (checked)

    def _load_plugins(self, sources: set[str], library: Path | None) -> None:
        if "qdp" in sources:
            from trimformer.plugins_qdp import register_qdp_plugins

            register_qdp_plugins()
        if sources - {"qdp", "qdp-aot"}:  # AOT engines carry their kernels: nothing to load
            path = find_plugin_library(library)
            load_plugin_library(self._runtime.get_plugin_registry(), path)

    def _open_engine(self, name: str) -> _Engine:
        """Deserialise ``name``'s engine on the session's GPU (TensorRT uses the current
        device), refit it when its weights were stripped."""
        plan_path, record = self._records[name]
        with self._torch.cuda.device(self._device):
            engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if engine is None:
                raise RuntimeFailure(f"TensorRT could not deserialise {plan_path}; rebuild it")
            if record.get("weights") == "stripped":
                from trimformer.graph_passes.model_io import saved_onnx

                passes = record["settings"]["onnx_passes"]
                model, _ = prepared_graph(self._bundle, str(record["graph_file"]), passes)
                with saved_onnx(model) as path:
                    refit_engine(self._trt, engine, self._logger, path)
            return _Engine(
                self._trt,
                self._torch,
                self._device,
                engine,
                plan_path,
                self.inputs,
                self.outputs,
                self._cuda_graph,
            )

    @property
    def configs(self) -> Mapping[str, Mapping[str, Any]]:
        """Config name -> its manifest entry, for the configs that have an engine here."""
        return MappingProxyType({k: MappingProxyType(v) for k, v in self._configs.items()})

    @property
    def config(self) -> str:
        return self._switch.current

    @property
    def graph(self) -> str:
        return str(self._configs[self.config].get("graph", "model"))

    @property
    def _file(self) -> Path:
        return self._records[self.config][0]

    def use(self, name: str) -> None:
        """Make ``name`` the config later ``run`` calls use (loading its engine first); calls
        in flight finish on theirs."""
        self._switch.use(name)

    def __repr__(self) -> str:
        state = "closed" if self._switch.closed else self.providers[0]
        return (
            f"TrtSession({str(self._bundle)!r}, profile={self.profile!r}, "
            f"config={self.config!r}, {state})"
        )

    def end_profiling(self) -> Path:
        raise UsageError("profiling is an ONNX Runtime feature; use trtexec --dumpProfile")

    def close(self) -> None:
        """Release the engines' buffers and contexts (each when its call in flight returns);
        later calls to ``run`` are errors."""
        for engine in self._switch.close():
            engine.release()

    def _run_impl(
        self, feed: Mapping[str, np.ndarray], config: str | None = None
    ) -> dict[str, np.ndarray]:
        """Run an already-checked feed on ``config``'s engine (default: the current one)."""
        return self._switch.get(config).run(feed)


def load_engine(
    bundle: str | Path,
    profile: str,
    cuda_graph: bool = False,
    plugin_library: Path | None = None,
    config: str | None = None,
    preload: bool = False,
    device: int = 0,
) -> TrtSession:
    """Load a bundle's engines for ``profile`` (built by ``trimformer build``) on GPU
    ``device``."""
    return TrtSession(
        bundle,
        profile,
        plugin_library=plugin_library,
        cuda_graph=cuda_graph,
        device=device,
        config=config,
        preload=preload,
    )

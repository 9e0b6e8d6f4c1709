"""Run a bundle's configs with ONNX Runtime, checking inputs against the manifest first.

The manifest is the contract between export and runtime: it names each graph's inputs with
their shapes (strings are dynamic dims) and dtypes. ``Session.run`` checks a call against it and
refuses a bad input with a message that names the problem and the fix, instead of letting ONNX
Runtime fail deep inside the graph with a message about an internal node.

A bundle is a bank of reduction configs over one set of weights (at least its reduction and
``none``, the full graph). A ``Session`` runs one config by default, switches with ``use`` and
runs any config per call; it reads each weight once and gives the same buffer to every config's
ONNX Runtime session (``SessionOptions.add_initializer``), so a bank costs one model's memory.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from trimformer.bundle import bank_configs, read_manifest
from trimformer.errors import UsageError
from trimformer.runtime.options import RuntimeOptions
from trimformer.runtime.ort_backend import OrtBackend, Provider
from trimformer.runtime.precision import quantized_graph_file
from trimformer.runtime.shared_weights import SharedWeights

if TYPE_CHECKING:
    from trimformer.runtime.openvino_backend import OpenVinoBackend

__all__ = ["Provider", "Session", "TensorSpec", "load"]


class _Opened(Protocol):
    """A graph opened by a backend: its real input / output names and a run of a feed."""

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as the manifest declares it; string dims are dynamic."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> TensorSpec:
        name, shape, dtype = entry["name"], entry["shape"], entry["dtype"]
        if not isinstance(name, str) or not isinstance(dtype, str) or not isinstance(shape, list):
            raise TypeError(f"malformed tensor entry {entry!r}")
        np.dtype(dtype)  # an unknown dtype name raises TypeError here, not at run time
        return cls(name, tuple(shape), dtype)

    def describe(self) -> str:
        return f"{self.name} {_shape_str(self.shape)} {self.dtype}"


def _shape_str(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _graph_entry(bundle: Path, manifest: Mapping[str, Any], graph: str) -> Mapping[str, Any]:
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or "model" not in graphs:
        raise UsageError(f"{bundle}: manifest declares no graphs; re-export the bundle")
    if graph in graphs:
        return graphs[graph]
    if graph == "full":
        raise UsageError(
            f"{bundle} has no full graph because it was exported with --method none "
            "(its model graph is the full model); use graph='model'"
        )
    raise UsageError(f"{bundle} has no graph {graph!r}; choose from {', '.join(graphs)}")


@dataclass(frozen=True)
class _Graph:
    """One graph file of the bundle with the inputs and outputs its manifest entry declares."""

    name: str
    file: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class Session:
    """A bundle's configs on one runtime: runs one config by default, switches with ``use``.

    ``backend`` is "ort" (ONNX Runtime, the default) or "openvino" (the ``openvino`` extra);
    ``precision`` "fp32", "bf16" (OpenVINO's inference precision; falls back to fp32, with one
    warning, on a device without bf16) or "int8" (the config's quantized graph, added to the
    bundle by ``trimformer quantize``). ``graph`` ("model": the bundle's default reduction,
    "full": un-reduced) or ``config`` (a name from ``configs``) picks the config run by default.
    Other configs open on first use, or all at once with ``preload`` (then ``use`` only swaps a
    reference).

    ONNX Runtime only: ``providers`` (default CUDA when present, then CPU), ``profile_prefix``
    (its profiler), ``spinning`` and ``share_weights``. With ``share_weights`` every fp32
    config's session reads the same weight buffers, held once; ONNX Runtime's weight prepacking
    is then off, as it would copy every weight per session (on CPU, DeiT-S ran 1.1-1.4x slower
    without it: benchmarks/config_bank.py). ``share_weights=False`` gives each session its own
    prepacked weights: fastest, but N copies for N configs. The default (None) shares for a bank
    of more than two graphs, where memory is the point, and not for a plain bundle (reduced +
    full), which usually runs one graph and should run it fastest. OpenVINO only: ``device``
    ("CPU" by default; "GPU" and "NPU" where this OpenVINO finds them) and ``extensions`` (how
    trimformer's ops load: "auto", "fused" or "decomposed"; see ``openvino_backend``).

    ``run`` may be called from several threads at once, also while another thread calls
    ``use``: a call takes its config's graph under a lock and finishes on it. NaN and inf
    inputs are not checked for; they propagate through the graph as in the original model.
    Use as a context manager, or call ``close``, to release the runtime's sessions.
    """

    def __init__(
        self,
        bundle: str | Path,
        graph: str = "model",
        providers: Sequence[Provider] | None = None,
        threads: int | None = None,
        profile_prefix: str | None = None,
        spinning: bool = True,
        config: str | None = None,
        preload: bool = False,
        share_weights: bool | None = None,
        backend: str = "ort",
        precision: str = "fp32",
        device: str | None = None,
        extensions: str = "auto",
    ) -> None:
        bundle = Path(bundle)
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise UsageError(f"threads must be a positive integer, got {threads!r}")
        self.manifest: dict[str, Any] = read_manifest(bundle)
        self._bundle = bundle
        configs, default = bank_configs(self.manifest)
        self._configs = configs
        self._graphs: dict[str, _Graph] = {}
        for entry in configs.values():
            name = entry.get("graph") if isinstance(entry, Mapping) else None
            if not isinstance(name, str):
                raise UsageError(
                    f"{bundle}: manifest entry configs is malformed (a config names no graph); "
                    "re-export the bundle"
                )
            if name not in self._graphs:
                self._graphs[name] = self._parse_graph(name)
        if graph not in self._graphs:
            _graph_entry(bundle, self.manifest, graph)  # raises the error that fits
        self.all_inputs: tuple[TensorSpec, ...] = self._check_same_io()
        self.outputs: tuple[TensorSpec, ...] = next(iter(self._graphs.values())).outputs
        if config is not None:
            start = self._config_name(config)
        else:
            start = default if self._configs[default]["graph"] == graph else self._config_of(graph)
        self._backend = _backend(
            backend, precision, providers, threads, profile_prefix, spinning, device, extensions
        )
        self.backend: str = backend
        self.precision: str = self._backend.precision
        """The precision the graphs run at (fp32 where bf16 was asked for but is not there)."""
        if share_weights is None:
            share_weights = len(self._graphs) > 2
        shareable = backend == "ort" and precision == "fp32"
        self._weights = (
            SharedWeights.of(bundle, self.manifest) if share_weights and shareable else None
        )
        self._lock = threading.Lock()  # guards _current, _opened and _closed
        self._open_lock = threading.Lock()  # one session is created at a time
        self._opened: dict[str, _Opened] = {}
        self._closed = False
        self._current = start
        opened = self._session(self._configs[start]["graph"])
        providers_in_use, options = self._backend.providers_of(opened)
        self.providers: tuple[str, ...] = providers_in_use
        """What runs the graphs: ONNX Runtime's providers, or the OpenVINO device."""
        # provider -> its options as ONNX Runtime applied them (e.g. CUDA's "device_id")
        self.provider_options: dict[str, dict[str, str]] = options
        if preload:
            for name in self._graphs:
                self._session(name)

    def _parse_graph(self, name: str) -> _Graph:
        entry = _graph_entry(self._bundle, self.manifest, name)
        try:
            graph = _Graph(
                name,
                self._bundle / entry["file"],
                tuple(TensorSpec.from_manifest(e) for e in entry["inputs"]),
                tuple(TensorSpec.from_manifest(e) for e in entry["outputs"]),
            )
        except (KeyError, TypeError) as exc:
            raise UsageError(
                f"{self._bundle}: manifest entry of graph {name!r} is malformed ({exc}); "
                "re-export the bundle"
            ) from None
        if entry["file"] not in self.manifest["files"]:
            raise UsageError(
                f"{self._bundle}: graph file {entry['file']!r} is not listed with a sha256 in the "
                "manifest; re-export the bundle"
            )
        return graph

    def _check_same_io(self) -> tuple[TensorSpec, ...]:
        """Every config is the same model: the same outputs (names, dtypes and ranks: a token
        output such as LLaVA's image features is shorter where tokens were removed), and an
        input of one name is the same tensor in every graph that takes it. A method may add
        inputs of its own (ToDRE's query, group_merge's group ids), so graphs may take more
        inputs than others. Returns every input any config takes, in order of first appearance.
        """
        graphs = list(self._graphs.values())
        union: dict[str, TensorSpec] = {}

        def kinds(outputs: tuple[TensorSpec, ...]) -> list[tuple[str, str, int]]:
            return [(o.name, o.dtype, len(o.shape)) for o in outputs]

        for graph in graphs:
            clash = any(union.get(spec.name, spec) != spec for spec in graph.inputs)
            if clash or kinds(graph.outputs) != kinds(graphs[0].outputs):
                raise UsageError(
                    f"{self._bundle}: graphs {graphs[0].name!r} and {graph.name!r} declare "
                    "different inputs or outputs; re-export the bundle"
                )
            union.update({spec.name: spec for spec in graph.inputs})
        return tuple(union.values())

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs of the current config's graph (``all_inputs``: of any config's)."""
        return self._inputs_for(None)

    def _inputs_for(self, config: str | None) -> tuple[TensorSpec, ...]:
        return self._graph_of(config).inputs

    def _graph_of(self, config: str | None) -> _Graph:
        if config is not None:
            self._config_name(config)
        with self._lock:
            name = self._current if config is None else config
        return self._graphs[self._configs[name]["graph"]]

    def _config_of(self, graph: str) -> str:
        for name, entry in self._configs.items():
            if entry["graph"] == graph:
                return name
        raise UsageError(
            f"{self._bundle}: no config runs graph {graph!r}; choose a config from "
            f"{', '.join(self._configs)}"
        )

    def _config_name(self, name: str) -> str:
        if not isinstance(name, str) or name not in self._configs:
            raise UsageError(
                f"{self._bundle} has no config {name!r}; choose from {', '.join(self._configs)}"
            )
        return name

    @property
    def configs(self) -> Mapping[str, Mapping[str, Any]]:
        """Config name -> its manifest entry (method, params, tokens_per_layer, graph, flops)."""
        return MappingProxyType({k: MappingProxyType(v) for k, v in self._configs.items()})

    @property
    def config(self) -> str:
        """The config ``run`` uses when not given one."""
        return self._current

    @property
    def graph(self) -> str:
        """The graph of the current config ("model", "full" or "cfg-NAME")."""
        return self._configs[self._current]["graph"]

    @property
    def _file(self) -> Path:
        return self._graphs[self.graph].file

    def use(self, name: str) -> None:
        """Make ``name`` the config later ``run`` calls use; calls in flight finish on theirs.

        Opens the config's session first if it is not open yet (see ``preload``).
        """
        name = self._config_name(name)
        self._session(self._configs[name]["graph"])
        with self._lock:
            self._current = name

    def _session(self, graph: str) -> _Opened:
        """The open session of ``graph``, created now if it is not open yet."""
        with self._lock:
            self._check_open()
            if graph in self._opened:
                return self._opened[graph]
        with self._open_lock:  # runs of open configs go on meanwhile
            with self._lock:
                if graph in self._opened:
                    return self._opened[graph]
            opened = self._open(self._graphs[graph])
            with self._lock:
                self._check_open()
                self._opened[graph] = opened
            return opened

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"{self!r} is closed; load the bundle again")

    def _open(self, graph: _Graph) -> _Opened:
        file = graph.file
        if self.precision == "int8":
            file = quantized_graph_file(
                self._bundle, self.manifest, self._config_of(graph.name), self.backend
            )
        opened = self._backend.open(file, graph.name, self._weights)
        _check_against_graph(graph, file, opened)
        return opened

    def __repr__(self) -> str:
        state = "closed" if self._closed else ", ".join(self.providers)
        return f"Session({str(self._bundle)!r}, config={self._current!r}, {state})"

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def end_profiling(self) -> Path:
        """Stop ONNX Runtime's profiler (session opened with profile_prefix) of the current
        config; return its JSON."""
        if not isinstance(self._backend, OrtBackend):
            raise UsageError("end_profiling is ONNX Runtime's profiler; load with backend='ort'")
        return self._backend.end_profiling(self._session(self.graph))

    def close(self) -> None:
        """Release the runtime's sessions; later calls to ``run`` are errors.

        Calls in flight finish first: each holds its session and weights until it returns.
        """
        with self._lock:
            self._closed = True
            self._opened.clear()
        self._weights = None

    def run(
        self, inputs: Mapping[str, Any] | np.ndarray, config: str | None = None
    ) -> dict[str, np.ndarray]:
        """Check ``inputs`` (name -> array, or one array for a one-input graph) and run the
        graph of ``config`` (default: the current one, see ``use``).

        Arrays are never cast: a dtype other than the declared one is refused with a hint.
        Returns output name -> array.
        """
        return self._run_impl(self.check_inputs(inputs, config), config)

    def check_inputs(
        self, inputs: Mapping[str, Any] | np.ndarray, config: str | None = None
    ) -> dict[str, np.ndarray]:
        """Validate inputs for ``config`` (default: the current one) against the manifest and
        return the feed. Inputs only other configs take (a method's own) are accepted, so an
        application can pass them always and switch configs freely."""
        expected = self._inputs_for(config)
        if isinstance(inputs, Mapping):
            feed = {name: np.asarray(value) for name, value in inputs.items()}
        elif len(expected) == 1:
            feed = {expected[0].name: np.asarray(inputs)}
        else:
            raise UsageError(
                f"graph {self.graph!r} takes {len(expected)} inputs ({_describe(expected)}); "
                "pass a dict of name -> array"
            )
        self._check_names(feed, expected)
        dims: dict[str, tuple[str, int]] = {}
        for spec in self.all_inputs:
            if spec.name in feed:
                _check_array(spec, feed[spec.name], dims)
        return feed

    def _check_names(self, feed: Mapping[str, np.ndarray], expected: Sequence[TensorSpec]) -> None:
        unknown = sorted(set(feed) - {spec.name for spec in self.all_inputs})
        if unknown:
            raise UsageError(
                f"unknown input {', '.join(map(repr, unknown))}; graph {self.graph!r} expects "
                f"{_describe(expected)}"
            )
        missing = [spec.name for spec in expected if spec.name not in feed]
        if missing:
            raise UsageError(
                f"missing input {', '.join(map(repr, missing))}; graph {self.graph!r} expects "
                f"{_describe(expected)}"
            )

    def _run_impl(
        self, feed: Mapping[str, np.ndarray], config: str | None = None
    ) -> dict[str, np.ndarray]:
        """Run an already-checked feed (the benchmark times this, without the checks)."""
        graph = self._graph_of(config)
        opened = self._session(graph.name)
        try:
            own = {spec.name: feed[spec.name] for spec in graph.inputs}
        except KeyError as exc:
            raise UsageError(
                f"missing input {exc.args[0]!r}; graph {graph.name!r} expects "
                f"{_describe(graph.inputs)}"
            ) from None
        results = opened.run(own)
        return {spec.name: value for spec, value in zip(graph.outputs, results, strict=True)}


def _describe(specs: Sequence[TensorSpec]) -> str:
    return "; ".join(spec.describe() for spec in specs)


def _check_against_graph(graph: _Graph, file: Path, opened: _Opened) -> None:
    """The manifest must name the graph's real inputs and outputs, in order."""
    for kind, declared, real in (
        ("inputs", graph.inputs, opened.input_names),
        ("outputs", graph.outputs, opened.output_names),
    ):
        names = [s.name for s in declared]
        if names != real:
            raise UsageError(
                f"{file}: manifest declares {kind} {names} but the graph has {real}; "
                "re-export the bundle"
            )


def _backend(
    backend: str,
    precision: str,
    providers: Sequence[Provider] | None,
    threads: int | None,
    profile_prefix: str | None,
    spinning: bool,
    device: str | None,
    extensions: str,
) -> OrtBackend | OpenVinoBackend:
    """The backend that opens the graphs, after checking the options fit it."""
    RuntimeOptions(backend, precision, device, extensions)  # refuses what does not fit
    if backend == "ort":
        return OrtBackend(providers, threads, profile_prefix, spinning, precision)
    if providers is not None or profile_prefix is not None:
        raise UsageError(
            "providers and profile_prefix are ONNX Runtime's; for OpenVINO choose device"
        )
    from trimformer.runtime.openvino_backend import OpenVinoBackend

    return OpenVinoBackend(device or "CPU", threads, precision, extensions)


def _check_array(spec: TensorSpec, array: np.ndarray, dims: dict[str, tuple[str, int]]) -> None:
    """Check one input's dtype, rank and static dims; ``dims`` ties named dims across inputs."""
    expected = np.dtype(spec.dtype)
    if array.dtype != expected:
        raise UsageError(
            f"input {spec.name!r} has dtype {array.dtype}, expected {expected}; "
            f"convert it with .astype(np.{expected})"
        )
    if array.ndim != len(spec.shape):
        hint = f"reshape it to {_shape_str(spec.shape)}"
        if array.ndim == len(spec.shape) - 1:
            hint = "add the batch dimension with x[None]"
        raise UsageError(
            f"input {spec.name!r} has rank {array.ndim} (shape {array.shape}), expected rank "
            f"{len(spec.shape)} {_shape_str(spec.shape)}; {hint}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if isinstance(want, int):
            if want != got:
                raise UsageError(
                    f"input {spec.name!r} dim {axis} is {got}, expected {want} "
                    f"(shape {array.shape} vs {_shape_str(spec.shape)}); resize the input"
                )
            continue
        first = dims.setdefault(want, (spec.name, got))
        if first[1] != got:
            raise UsageError(
                f"dynamic dim {want!r} is {first[1]} in input {first[0]!r} but {got} in "
                f"input {spec.name!r}; give every input the same {want}"
            )


def load(
    bundle: str | Path,
    graph: str = "model",
    providers: Sequence[Provider] | None = None,
    threads: int | None = None,
    spinning: bool = True,
    config: str | None = None,
    preload: bool = False,
    share_weights: bool | None = None,
    backend: str = "ort",
    precision: str = "fp32",
    device: str | None = None,
    extensions: str = "auto",
) -> Session:
    """Load a bundle after checking its hashes, to run ``graph`` ("model": reduced, "full":
    un-reduced) or the named ``config`` by default.

    ``providers`` defaults to CUDA (when this onnxruntime has it) then CPU; ``threads`` sets
    ONNX Runtime's intra-op thread count (None: its default); ``spinning=False`` stops the threads'
    busy-waiting at the end of each run, for fair timing of several sessions in one process.
    ``preload`` opens every config now, so that ``Session.use`` is a reference swap;
    ``share_weights`` holds the weights once for all configs (default: for banks of more than
    two graphs; see ``Session``). ``backend`` "ort" or "openvino", ``precision`` "fp32",
    "fp16", "bf16" or "int8", ``device`` and ``extensions`` (OpenVINO) as in ``Session``.
    """
    return Session(
        bundle,
        graph=graph,
        providers=providers,
        threads=threads,
        spinning=spinning,
        config=config,
        preload=preload,
        share_weights=share_weights,
        backend=backend,
        precision=precision,
        device=device,
        extensions=extensions,
    )

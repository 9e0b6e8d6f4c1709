"""Run one graph of a bundle with ONNX Runtime, checking inputs against the manifest first.

The manifest is the contract between export and runtime: it names each graph's inputs with
their shapes (strings are dynamic dims) and dtypes. ``Session.run`` checks a call against it and
refuses a bad input with a message that names the problem and the fix, instead of letting ONNX
Runtime fail deep inside the graph with a message about an internal node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from trimformer.bundle import read_manifest
from trimformer.errors import RuntimeFailure, UsageError

__all__ = ["Provider", "Session", "TensorSpec", "load"]

Provider = str | tuple[str, dict[str, Any]]
"""An execution provider: its name, or (name, options) as ONNX Runtime accepts."""

_PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")

# ONNX Runtime's own exceptions do not share a base class; these are the ones loading and
# running a model raise.
_ORT_ERRORS = (
    _ort_state.Fail,
    _ort_state.InvalidArgument,
    _ort_state.InvalidGraph,
    _ort_state.InvalidProtobuf,
    _ort_state.NoSuchFile,
    _ort_state.NotImplemented,
    _ort_state.RuntimeException,
    _ort_state.EPFail,
    RuntimeError,
    ValueError,
)


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _resolve_providers(providers: Sequence[Provider] | None) -> list[Provider]:
    """CUDA then CPU by default; an explicit list is passed through once every name is known."""
    available = ort.get_available_providers()
    if providers is None:
        return [p for p in _PREFERRED if p in available]
    if isinstance(providers, str):
        providers = [providers]
    providers = list(providers)
    if not providers:
        raise UsageError(f"no execution provider given; choose from {', '.join(available)}")
    for provider in providers:
        name = provider if isinstance(provider, str) else provider[0]
        if name not in available:
            raise UsageError(
                f"execution provider {name!r} is not available in this onnxruntime; "
                f"choose from {', '.join(available)}"
            )
    return providers


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


class Session:
    """One graph of a bundle, loaded in ONNX Runtime.

    ``run`` may be called from several threads at once: it keeps no per-call state on the
    session, and ONNX Runtime's ``InferenceSession.run`` is thread-safe. NaN and inf inputs are
    not checked for; they propagate through the graph as they would in the original model.
    Use as a context manager, or call ``close``, to release the ONNX Runtime session.
    """

    def __init__(
        self,
        bundle: str | Path,
        graph: str = "model",
        providers: Sequence[Provider] | None = None,
        threads: int | None = None,
        profile_prefix: str | None = None,
        spinning: bool = True,
    ) -> None:
        bundle = Path(bundle)
        self.manifest: dict[str, Any] = read_manifest(bundle)
        self.graph = graph
        entry = _graph_entry(bundle, self.manifest, graph)
        try:
            self._file = bundle / entry["file"]
            self.inputs = tuple(TensorSpec.from_manifest(e) for e in entry["inputs"])
            self.outputs = tuple(TensorSpec.from_manifest(e) for e in entry["outputs"])
        except (KeyError, TypeError) as exc:
            raise UsageError(
                f"{bundle}: manifest entry of graph {graph!r} is malformed ({exc}); "
                "re-export the bundle"
            ) from None
        if entry["file"] not in self.manifest["files"]:
            raise UsageError(
                f"{bundle}: graph file {entry['file']!r} is not listed with a sha256 in the "
                "manifest; re-export the bundle"
            )
        session = self._open(_resolve_providers(providers), threads, profile_prefix, spinning)
        self._check_against_graph(session)
        self.providers: tuple[str, ...] = tuple(session.get_providers())
        # provider -> its options as ONNX Runtime applied them (e.g. CUDA's "device_id")
        self.provider_options: dict[str, dict[str, str]] = session.get_provider_options()
        self._ort: ort.InferenceSession | None = session

    def _open(
        self,
        providers: list[Provider],
        threads: int | None,
        profile_prefix: str | None,
        spinning: bool,
    ) -> ort.InferenceSession:
        options = ort.SessionOptions()
        if not spinning:  # idle threads would steal the cores of another session timed next
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise UsageError(f"threads must be a positive integer, got {threads!r}")
            options.intra_op_num_threads = threads
        try:
            return ort.InferenceSession(str(self._file), options, providers=providers)
        except _ORT_ERRORS as exc:
            raise UsageError(
                f"{self._file} cannot be loaded by onnxruntime: {_first_line(exc)}; "
                "re-export the bundle"
            ) from None

    def _check_against_graph(self, session: ort.InferenceSession) -> None:
        """The manifest must name the graph's real inputs and outputs, in order."""
        for kind, declared, actual in (
            ("inputs", self.inputs, session.get_inputs()),
            ("outputs", self.outputs, session.get_outputs()),
        ):
            names = [s.name for s in declared]
            real = [a.name for a in actual]
            if names != real:
                raise UsageError(
                    f"{self._file}: manifest declares {kind} {names} but the graph has {real}; "
                    "re-export the bundle"
                )

    def __repr__(self) -> str:
        state = "closed" if self._ort is None else ", ".join(self.providers)
        return f"Session({str(self._file)!r}, graph={self.graph!r}, {state})"

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
        """Stop ONNX Runtime's profiler (session opened with profile_prefix); return its JSON."""
        if self._ort is None:
            raise UsageError("this Session is closed")
        return Path(self._ort.end_profiling())

    def close(self) -> None:
        """Release the ONNX Runtime session; later calls to ``run`` are errors."""
        self._ort = None

    def run(self, inputs: Mapping[str, Any] | np.ndarray) -> dict[str, np.ndarray]:
        """Check ``inputs`` (name -> array, or one array for a one-input graph) and run the graph.

        Arrays are never cast: a dtype other than the declared one is refused with a hint.
        Returns output name -> array.
        """
        return self._run_impl(self.check_inputs(inputs))

    def check_inputs(self, inputs: Mapping[str, Any] | np.ndarray) -> dict[str, np.ndarray]:
        """Validate inputs against the manifest and return the feed ONNX Runtime will get."""
        if isinstance(inputs, Mapping):
            feed = {name: np.asarray(value) for name, value in inputs.items()}
        elif len(self.inputs) == 1:
            feed = {self.inputs[0].name: np.asarray(inputs)}
        else:
            raise UsageError(
                f"graph {self.graph!r} takes {len(self.inputs)} inputs ({self._expected()}); "
                "pass a dict of name -> array"
            )
        self._check_names(feed)
        dims: dict[str, tuple[str, int]] = {}
        for spec in self.inputs:
            _check_array(spec, feed[spec.name], dims)
        return feed

    def _expected(self) -> str:
        return "; ".join(spec.describe() for spec in self.inputs)

    def _check_names(self, feed: Mapping[str, np.ndarray]) -> None:
        names = {spec.name for spec in self.inputs}
        unknown = sorted(set(feed) - names)
        if unknown:
            raise UsageError(
                f"unknown input {', '.join(map(repr, unknown))}; graph {self.graph!r} expects "
                f"{self._expected()}"
            )
        missing = [spec.name for spec in self.inputs if spec.name not in feed]
        if missing:
            raise UsageError(
                f"missing input {', '.join(map(repr, missing))}; graph {self.graph!r} expects "
                f"{self._expected()}"
            )

    def _run_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run an already-checked feed (the benchmark times this, without the checks)."""
        session = self._ort
        if session is None:
            raise UsageError(f"{self!r} is closed; load the bundle again")
        try:
            results = session.run(None, feed)
        except _ORT_ERRORS as exc:
            raise RuntimeFailure(
                f"onnxruntime failed running {self._file}: {_first_line(exc)}"
            ) from None
        return {spec.name: value for spec, value in zip(self.outputs, results, strict=True)}


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
) -> Session:
    """Load ``graph`` ("model": reduced, "full": un-reduced) of a bundle after checking its hashes.

    ``providers`` defaults to CUDA (when this onnxruntime has it) then CPU; ``threads`` sets
    ONNX Runtime's intra-op thread count (None: its default); ``spinning=False`` stops idle
    threads from busy-waiting, for fair timing of several sessions in one process.
    """
    return Session(bundle, graph=graph, providers=providers, threads=threads, spinning=spinning)

"""The ONNX Runtime backend of ``Session``: opens a bundle graph as an ``InferenceSession``.

The graphs run as exported (ONNX Runtime inlines the reductions' model-local functions). Weights
shared between a bank's graphs come in as ``SessionOptions.add_initializer`` values, which
switches ONNX Runtime's weight prepacking off (it would copy every weight per session).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from trimformer.errors import RuntimeFailure, UsageError, first_line
from trimformer.runtime.shared_weights import SharedWeights

__all__ = ["ORT_ERRORS", "OrtBackend", "Provider", "resolve_providers"]

Provider = str | tuple[str, dict[str, Any]]
"""An execution provider: its name, or (name, options) as ONNX Runtime accepts."""

_PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")

# ONNX Runtime's own exceptions do not share a base class; these are the ones loading and
# running a model raise.
ORT_ERRORS = (
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


def resolve_providers(providers: Sequence[Provider] | None) -> list[Provider]:
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


@dataclass(frozen=True)
class _OrtGraph:
    """An open ONNX Runtime session and the shared weight values it reads (kept alive with it)."""

    session: ort.InferenceSession
    weights: tuple[ort.OrtValue, ...]
    file: Path

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(self.session.run(None, dict(feed)))
        except ORT_ERRORS as exc:
            raise RuntimeFailure(
                f"onnxruntime failed running {self.file}: {first_line(exc)}"
            ) from None


class OrtBackend:
    """Opens graphs in ONNX Runtime with the given providers and session options.

    ``spinning=False`` stops the threads' busy-waiting at the end of every run
    (``session.force_spinning_stop``), so an idle session cannot steal the cores of another one
    timed next (fair timing of several sessions in one process); within a run they still spin,
    which keeps a reduction's small ops cheap at batch 1 (DeiT-S ToMe r=13, 2 threads: 1.44x vs
    1.39x over the full model than with spinning off altogether, and 13 % faster).
    ``profile_prefix`` turns ONNX Runtime's profiler on.
    """

    name = "ort"
    precisions = ("fp32", "int8")

    def __init__(
        self,
        providers: Sequence[Provider] | None = None,
        threads: int | None = None,
        profile_prefix: str | None = None,
        spinning: bool = True,
        precision: str = "fp32",
    ) -> None:
        self.precision = precision  # int8 runs the quantized graph files the session opens
        self._providers = resolve_providers(providers)
        self._threads = threads
        self._profile_prefix = profile_prefix
        self._spinning = spinning

    def open(self, file: Path, graph: str, weights: SharedWeights | None) -> _OrtGraph:
        """Open ``file``; ``weights`` (when given) supplies the initializers of ``graph``."""
        options = ort.SessionOptions()
        if not self._spinning:  # idle threads would steal the cores of another session timed next
            options.add_session_config_entry("session.force_spinning_stop", "1")
        if self._profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = self._profile_prefix
        if self._threads is not None:
            options.intra_op_num_threads = self._threads
        shared = weights.initializers(graph) if weights is not None else {}
        if shared:  # prepacking would give each session its own packed copy of every weight
            options.add_session_config_entry("session.disable_prepacking", "1")
        for name, value in shared.items():
            options.add_initializer(name, value)
        try:
            session = ort.InferenceSession(str(file), options, providers=self._providers)
        except ORT_ERRORS as exc:
            raise UsageError(
                f"{file} cannot be loaded by onnxruntime: {first_line(exc)}; re-export the bundle"
            ) from None
        return _OrtGraph(session, tuple(shared.values()), file)

    @staticmethod
    def providers_of(opened: _OrtGraph) -> tuple[tuple[str, ...], dict[str, dict[str, str]]]:
        """The providers in use and their options as ONNX Runtime applied them."""
        return tuple(opened.session.get_providers()), opened.session.get_provider_options()

    @staticmethod
    def end_profiling(opened: _OrtGraph) -> Path:
        return Path(opened.session.end_profiling())

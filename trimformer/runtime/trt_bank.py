"""A config bank on TensorRT: one engine per config, the weights held once on disk.

TensorRT compiles each config (each reduced graph) into its own engine; engines cannot share a
network, so a bank of N configs is N engines. What they can share is where the weights live:

- Disk. An engine built with ``BuilderFlag.STRIP_PLAN`` (TensorRT >= 10.0; documented as
  "strip the refittable weights from the engine plan file") holds no refittable weights, and
  is refitted when loaded with ``OnnxParserRefitter.refit_from_file`` from the graph it was
  built from. Each bank engine is built so, with ``REFIT_IDENTICAL`` ("refittable engine using
  identical weights"; TensorRT 11.3's notes say plain ``REFIT`` can drop a GEMM bias, which
  ``REFIT_IDENTICAL`` does not): the plans are small and weights.bin is the only copy on disk.
  The refit source is the config's bundle graph after the same graph passes the build ran
  (they are recorded, and deterministic), so the weights are identical by construction.
- Device. Each deserialised engine holds its own copy once refitted. TensorRT documents
  ``IRefitter.set_named_weights(name, weights, TensorLocation.DEVICE)`` as taking new weights
  from device memory, and that modifying them before ``refit_cuda_engine`` completes is
  undefined: so refit reads the buffers while it runs and the engine keeps what it read; it
  documents no way for several engines to alias one weight buffer set (our reading of the
  docs, not measured). Weight streaming (``BuilderFlag.WEIGHT_STREAMING``) keeps weights in
  host memory, but per engine ("deserialization allocates a host buffer to store all the
  weights"). So on the device a bank costs one weight copy per *loaded* engine: the Session
  loads engines lazily (only configs used), or all at once with ``preload``.

Verified from TensorRT's documentation: the flags (``STRIP_PLAN``, ``REFIT_IDENTICAL``, both in
the 10.x Python API), ``Refitter``, ``OnnxParserRefitter.refit_from_file``,
``get_missing_weights``, ``refit_cuda_engine``, and the weight-streaming and device-location
statements above. Not verified (no libnvinfer, no GPU here): that TensorRT 10/11 accept the refit
of these engines from the re-run passes, the engines' numbers, the device memory of N loaded
engines, and that a stripped engine's plan is small for these models. The trimformer plugins
carry no weights, so refit does not touch them. On DLA the engine keeps its weights embedded: a
cautious choice, as whether DLA layers refit was not checked.

Two halves, as in ``trt_build``: ``plan_bank`` and ``weight_flags`` decide everything as plain
values (tested without TensorRT); ``refit_engine`` makes the documented calls. ``ConfigSwitch``
is the thread-safe config bookkeeping the TensorRT Session uses (the ORT Session's semantics).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from trimformer.bundle import bank_configs
from trimformer.errors import RuntimeFailure, UsageError
from trimformer.runtime.trt_env import TrtVersion

if TYPE_CHECKING:
    from pathlib import Path

    import tensorrt

__all__ = [
    "REFIT_STEPS",
    "BankEngine",
    "ConfigSwitch",
    "engine_key",
    "plan_bank",
    "refit_engine",
    "weight_flags",
]

REFIT_STEPS = (
    "Refitter(engine, logger)",
    "OnnxParserRefitter(refitter, logger).refit_from_file(<graph after passes>)",
    "Refitter.get_missing_weights() == []",
    "Refitter.refit_cuda_engine()",
)
"""What loading a stripped engine does, in order (recorded in its .json)."""


def engine_key(profile: str, config: str | None) -> str:
    """The manifest's ``engines`` key: ``<profile>`` (one engine) or ``<profile>/<config>``."""
    return profile if config is None else f"{profile}/{config}"


def weight_flags(version: TrtVersion, dla_core: int | None) -> tuple[str, ...]:
    """Builder flags that keep a bank engine's weights out of its plan (refitted at load)."""
    if dla_core is not None or version.major < 10:
        return ()
    return ("STRIP_PLAN", "REFIT_IDENTICAL")


@dataclass(frozen=True)
class BankEngine:
    """One engine a build makes: its config and graph, and whether it is weight-stripped."""

    config: str | None
    graph: str
    graph_file: str
    stripped: bool


def plan_bank(
    manifest: Mapping[str, Any],
    selection: Iterable[str] | None,
    version: TrtVersion,
    dla_core: int | None,
) -> list[BankEngine]:
    """The engines ``trimformer build --config ...`` makes, in the manifest's config order.

    ``selection`` None: one full engine of graph "model" (the layout before banks). Otherwise
    config names, or "all": one stripped engine per config (full when the flags are unavailable).
    """
    graphs = manifest.get("graphs") or {}
    if selection is None:
        return [BankEngine(None, "model", graphs["model"]["file"], False)]
    configs, _ = bank_configs(manifest)
    chosen = list(dict.fromkeys(selection))
    if "all" in chosen:
        if len(chosen) > 1:
            raise UsageError("--config all builds every config; give it alone")
        chosen = list(configs)
    unknown = [name for name in chosen if name not in configs]
    if unknown:
        raise UsageError(
            f"the bundle has no config {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(configs)} or all"
        )
    stripped = bool(weight_flags(version, dla_core))
    plan = []
    for name in chosen:
        graph = configs[name].get("graph")
        entry = graphs.get(graph) if isinstance(graph, str) else None
        if not isinstance(graph, str) or not isinstance(entry, Mapping) or "file" not in entry:
            raise UsageError(
                f"config {name!r} names graph {graph!r}, which the manifest lacks; re-export "
                "the bundle"
            )
        plan.append(BankEngine(name, graph, entry["file"], stripped))
    return plan


def refit_engine(
    trt: ModuleType, engine: tensorrt.ICudaEngine, logger: tensorrt.ILogger, onnx_path: Path
) -> None:
    """Fill a weight-stripped engine's weights from the ONNX graph it was built from."""
    refitter: tensorrt.Refitter = trt.Refitter(engine, logger)
    parser: tensorrt.OnnxParserRefitter = trt.OnnxParserRefitter(refitter, logger)
    if not parser.refit_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise RuntimeFailure(
            f"TensorRT could not refit the engine from {onnx_path.name}: "
            f"{'; '.join(errors) or 'no reason given'}; rebuild it"
        )
    missing = [name for name in refitter.get_missing_weights() if name]
    if missing:
        raise RuntimeFailure(
            f"refitting left {len(missing)} weights unset ({', '.join(missing[:3])}); rebuild it"
        )
    if not refitter.refit_cuda_engine():
        raise RuntimeFailure("TensorRT refused the refit of a stripped engine; rebuild it")


T = TypeVar("T")


class ConfigSwitch(Generic[T]):
    """Config name -> an opened runner, with a current config; thread-safe like ``Session``.

    ``open`` makes a config's runner (once, lazily or by ``preload``); ``use`` switches the
    current config after opening it; ``get`` returns the runner a call should use, which keeps
    it to the end even if another thread switches or closes meanwhile.
    """

    def __init__(self, names: Iterable[str], start: str, open: Callable[[str], T], where: str):
        self._names = tuple(names)
        self._open_fn = open
        self._where = where
        self._lock = threading.Lock()  # guards _current, _opened, _closed
        self._open_lock = threading.Lock()  # one runner is opened at a time
        self._opened: dict[str, T] = {}
        self._closed = False
        self._current = self.check(start)

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def current(self) -> str:
        return self._current

    @property
    def closed(self) -> bool:
        return self._closed

    def check(self, name: str) -> str:
        if not isinstance(name, str) or name not in self._names:
            raise UsageError(
                f"{self._where} has no engine for config {name!r}; choose from "
                f"{', '.join(self._names)} (or build it with trimformer build --config)"
            )
        return name

    def opened(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._opened)

    def get(self, name: str | None = None) -> T:
        """The runner of ``name`` (default: the current config), opened now if needed."""
        if name is not None:
            self.check(name)
        with self._lock:
            self._check_open()
            name = self._current if name is None else name
            if name in self._opened:
                return self._opened[name]
        with self._open_lock:  # runs of opened configs go on meanwhile
            with self._lock:
                if name in self._opened:
                    return self._opened[name]
            runner = self._open_fn(name)
            with self._lock:
                self._check_open()
                self._opened[name] = runner
            return runner

    def use(self, name: str) -> None:
        self.get(self.check(name))
        with self._lock:
            self._current = name

    def preload(self) -> None:
        for name in self._names:
            self.get(name)

    def close(self) -> list[T]:
        """Forget every runner (calls in flight keep theirs) and return them for releasing."""
        with self._lock:
            self._closed = True
            runners = list(self._opened.values())
            self._opened.clear()
        return runners

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"{self._where} is closed; load the engines again")

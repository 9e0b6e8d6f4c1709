"""Time a bundle's reduced graph, optionally against its full graph, in one process.

With ``vs_full`` the two graphs are timed interleaved (reduced, full, then full, reduced, ...),
so drift in clock speed, temperature or background load falls on both alike and the speed-up
is a fair ratio. Timings cover ``Session`` runs only; inputs are checked once, before timing.

``benchmark_configs`` times several configs of one bundle (a config bank) the same way, one
``Session`` switching between them, interleaved, with the memory of the whole bank.

Beside the timings it reports what ``telemetry`` can read here: the process's peak RSS, GPU
memory (NVML) and energy per inference (RAPL, NVML, tegrastats), the Jetson power mode and clock
locks, and one note for each figure that applies but cannot be read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trimformer.errors import UsageError
from trimformer.runtime.options import FP32_ORT, RuntimeOptions
from trimformer.runtime.session import Provider, Session, TensorSpec, load
from trimformer.runtime.telemetry import RssMeter, Telemetry, Unavailable

__all__ = [
    "BankBenchResult",
    "BenchResult",
    "ConfigTiming",
    "benchmark",
    "benchmark_configs",
    "random_inputs",
    "render_bank_table",
    "render_table",
]

_SEED = 0
_FULL_KEYS = frozenset(
    {
        "full_latency_ms_p50",
        "full_latency_ms_p90",
        "full_throughput",
        "full_flops",
        "speedup",
        "flops_ratio",
        "full_energy_mj_per_inference",
    }
)
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class BenchResult:
    """Latency (ms), throughput (items/s at p50) and FLOPs of one batch; full_* with vs_full.

    ``threads`` is as requested (None: ONNX Runtime's default); ``providers`` as in use.
    Memory is the process's, in MB, from loading the graphs to the end of the timed runs (with
    vs_full both graphs are loaded, so it is theirs together); ``peak_rss_scope`` says whether
    the peak is that section's or the process's lifetime one. ``gpu_memory_mb`` is NVML's
    figure after the timed runs (ONNX Runtime's CUDA arena keeps its peak), ``gpu_memory_scope``
    "process" or "device". Energy is mJ per inference (one item of a batch) by source, whole
    device with idle draw, ``energy_covers`` says what each source measures. ``jetson`` holds
    the power mode and clock locks on Jetson; ``telemetry_notes`` one line per figure that
    applies here but could not be read, with why.
    """

    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_mean: float
    throughput: float
    flops: int
    batch: int
    runs: int
    threads: int | None
    providers: tuple[str, ...]
    backend: str = "ort"
    precision: str = "fp32"
    full_latency_ms_p50: float | None = None
    full_latency_ms_p90: float | None = None
    full_throughput: float | None = None
    full_flops: int | None = None
    speedup: float | None = None
    flops_ratio: float | None = None
    peak_rss_mb: float | None = None
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    peak_rss_scope: str | None = None
    gpu_memory_mb: float | None = None
    gpu_memory_scope: str | None = None
    energy_mj_per_inference: dict[str, float] = field(default_factory=dict)
    full_energy_mj_per_inference: dict[str, float] | None = None
    energy_covers: dict[str, str] = field(default_factory=dict)
    jetson: dict[str, Any] | None = None
    telemetry_notes: tuple[str, ...] = ()

    @property
    def vs_full(self) -> bool:
        return self.full_latency_ms_p50 is not None

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict; the full_* / ratio keys only when timed vs_full."""
        data = asdict(self)
        data["providers"] = list(self.providers)
        data["telemetry_notes"] = list(self.telemetry_notes)
        if not self.vs_full:
            for key in _FULL_KEYS:
                del data[key]
        return data


def random_inputs(specs: Sequence[TensorSpec], batch: int) -> dict[str, np.ndarray]:
    """Inputs of the declared shapes, dynamic dims set to ``batch``: floats ~ N(0, 1), integers
    0 (token ids, token types) except ``attention_mask``, 1 (no padding: every token is real)."""
    rng = np.random.default_rng(_SEED)
    feed = {}
    for spec in specs:
        shape = tuple(batch if isinstance(d, str) else d for d in spec.shape)
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            fill = 1 if spec.name == "attention_mask" else 0
            feed[spec.name] = np.full(shape, fill, dtype=dtype)
    return feed


def _graph_flops(session: Session, batch: int) -> int:
    flops = session.manifest["graphs"][session.graph].get("flops")
    if not isinstance(flops, int):
        raise UsageError(
            f"the manifest gives no FLOPs for graph {session.graph!r}; re-export the bundle"
        )
    return flops * batch


def _percentiles(times_s: list[float]) -> tuple[float, float, float]:
    ms = np.asarray(times_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 90)), float(ms.mean())


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


Runner = Callable[[], object]
"""One timed call: a session's run of a checked feed."""


def _warm_up(runners: Sequence[Runner], warmup: int) -> None:
    for _ in range(warmup):
        for runner in runners:
            runner()


def _time_runs(runners: Sequence[Runner], runs: int, bar: Progress) -> list[list[float]]:
    """Seconds per run of each runner; iteration i starts with runner i mod n."""
    times: list[list[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    task = bar.add_task("benchmark", total=runs)
    for i in range(runs):
        for k in order[i % len(order) :] + order[: i % len(order)]:
            start = time.perf_counter()
            runners[k]()
            times[k].append(time.perf_counter() - start)
        bar.advance(task)
    return times


def _energy_blocks(
    telemetry: Telemetry,
    sessions: Sequence[Session],
    feeds: Sequence[dict[str, np.ndarray]],
    runs: int,
    bar: Progress,
) -> list[dict[str, float]]:
    """Energy (mJ) of ``runs`` runs of each graph, measured over that graph's own runs.

    An energy counter cannot split an interleaved window between two graphs (NVML and
    tegrastats update every tens of ms, longer than a run), so after the interleaved timing
    each graph runs alone: reduced (first half), full (all), reduced (second half). The
    reduced graph's two blocks sit around the full one so that a linear drift (warming up,
    throttling) falls on both alike. A source missing from any block of a graph is dropped
    for that graph.
    """
    blocks = [(0, runs - runs // 2), (1, runs), (0, runs // 2)]
    task = bar.add_task("energy", total=2 * runs)
    totals: list[dict[str, float]] = [{}, {}]
    seen: list[list[set[str]]] = [[], []]
    for k, count in blocks:
        if count == 0:
            continue
        with telemetry.energy_window() as window:
            for _ in range(count):
                sessions[k]._run_impl(feeds[k])
                bar.advance(task)
        seen[k].append(set(window.mj))
        for source, mj in window.mj.items():
            totals[k][source] = totals[k].get(source, 0.0) + mj
    return [
        {source: mj for source, mj in total.items() if all(source in s for s in got)}
        for total, got in zip(totals, seen, strict=True)
    ]


def _gpu_device(session: Session) -> int | None:
    """The CUDA device the session runs on, or None when it uses no GPU provider."""
    for name in _GPU_PROVIDERS:
        if name in session.providers:
            return int(session.provider_options.get(name, {}).get("device_id", 0))
    return None


def benchmark(
    bundle: str | Path,
    batch: int = 1,
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 5,
    vs_full: bool = False,
    progress: bool = True,
    providers: Sequence[Provider] | None = None,
    runtime: RuntimeOptions = FP32_ORT,
) -> BenchResult:
    """Time the reduced graph (and the full one when ``vs_full``) on random inputs of ``batch``,
    both on ``runtime``'s backend and precision.

    Latencies are per batch; throughput is ``batch`` / p50. Nothing here asserts a speed-up:
    the numbers are what this machine measured. Energy is measured over the timed runs, or with
    ``vs_full`` over each graph's own extra runs after them (see ``_energy_blocks``).
    """
    _check_counts(batch, runs, warmup)
    notes: list[str] = []
    memory: RssMeter | None = None
    try:
        memory = RssMeter()
    except Unavailable as exc:
        notes.append(str(exc))
    else:
        memory.start()
    # Each graph on its own session with ONNX Runtime's prepacked weights: its fastest form.
    opts = _session_options(runtime, providers, threads, spinning=not vs_full)
    opts["share_weights"] = False
    sessions = [load(bundle, "model", **opts)]
    telemetry: Telemetry | None = None
    try:
        if vs_full:
            sessions.append(load(bundle, "full", **opts))
        flops = [_graph_flops(s, batch) for s in sessions]
        feeds = [s.check_inputs(random_inputs(s.inputs, batch)) for s in sessions]
        telemetry = Telemetry(_gpu_device(sessions[0]))
        runners = [partial(s._run_impl, f) for s, f in zip(sessions, feeds, strict=True)]
        with _progress(progress) as bar:
            _warm_up(runners, warmup)
            window = nullcontext() if vs_full else telemetry.energy_window()
            with window as timed:
                times = _time_runs(runners, runs, bar)
            rss = memory.stop() if memory is not None else None
            gpu = telemetry.gpu_memory_mb()
            if vs_full and telemetry.meters:
                energy = _energy_blocks(telemetry, sessions, feeds, runs, bar)
            else:
                energy = [timed.mj if timed is not None else {}, {}]
        if memory is not None and memory.note is not None:
            notes.append(memory.note)
        notes.extend(telemetry.notes)
        covers = {s: c for s, c in telemetry.covers.items() if s in energy[0] or s in energy[1]}
        jetson = telemetry.jetson.to_json() if telemetry.jetson else None
    finally:
        for session in sessions:
            session.close()
        if telemetry is not None:
            telemetry.close()
    per_inference = [{s: mj / (runs * batch) for s, mj in e.items()} for e in energy]
    p50, p90, mean = _percentiles(times[0])
    result = BenchResult(
        latency_ms_p50=p50,
        latency_ms_p90=p90,
        latency_ms_mean=mean,
        throughput=batch / (p50 / 1e3),
        flops=flops[0],
        batch=batch,
        runs=runs,
        threads=threads,
        providers=sessions[0].providers,
        backend=runtime.backend,
        precision=sessions[0].precision,
        peak_rss_mb=rss.peak_rss_mb if rss else None,
        rss_before_mb=rss.rss_before_mb if rss else None,
        rss_after_mb=rss.rss_after_mb if rss else None,
        peak_rss_scope=rss.peak_scope if rss else None,
        gpu_memory_mb=gpu[0] if gpu else None,
        gpu_memory_scope=gpu[1] if gpu else None,
        energy_mj_per_inference=per_inference[0],
        energy_covers=covers,
        jetson=jetson,
        telemetry_notes=tuple(notes),
    )
    if not vs_full:
        return result
    full_p50, full_p90, _ = _percentiles(times[1])
    return replace(
        result,
        full_latency_ms_p50=full_p50,
        full_latency_ms_p90=full_p90,
        full_throughput=batch / (full_p50 / 1e3),
        full_flops=flops[1],
        speedup=full_p50 / p50,
        flops_ratio=flops[1] / flops[0],
        full_energy_mj_per_inference=per_inference[1],
    )


def _session_options(
    runtime: RuntimeOptions,
    providers: Sequence[Provider] | None,
    threads: int | None,
    spinning: bool,
) -> dict[str, Any]:
    """``load``'s options for timing: without spinning (ONNX Runtime), one session's idle
    threads cannot slow the other one timed next."""
    opts: dict[str, Any] = {"threads": threads, **runtime.load_options()}
    if runtime.backend == "ort":
        opts.update(providers=providers, spinning=spinning)
    elif providers is not None:
        raise UsageError("providers are ONNX Runtime's; OpenVINO runs on --device")
    return opts


def _check_counts(batch: int, runs: int, warmup: int) -> None:
    for name, value, least in (("batch", batch, 1), ("runs", runs, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UsageError(f"{name} must be an integer >= {least}, got {value!r}")


@dataclass(frozen=True)
class ConfigTiming:
    """One config of a bank: latency (ms) and throughput (items/s at p50) of one batch, FLOPs."""

    config: str
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_mean: float
    throughput: float
    flops: int


@dataclass(frozen=True)
class BankBenchResult:
    """The configs of one bundle timed interleaved on one ``Session`` (see ``benchmark``).

    Memory (MB) is the process's from loading the bank to the end of the timed runs: every
    timed config open at once, weights held once when ``share_weights``.
    """

    configs: tuple[ConfigTiming, ...]
    batch: int
    runs: int
    threads: int | None
    providers: tuple[str, ...]
    share_weights: bool
    backend: str = "ort"
    precision: str = "fp32"
    peak_rss_mb: float | None = None
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    peak_rss_scope: str | None = None
    telemetry_notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["providers"] = list(self.providers)
        data["telemetry_notes"] = list(self.telemetry_notes)
        return data


def benchmark_configs(
    bundle: str | Path,
    configs: Sequence[str] | None = None,
    batch: int = 1,
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 5,
    progress: bool = True,
    providers: Sequence[Provider] | None = None,
    share_weights: bool = True,
    engine_profile: str | None = None,
    runtime: RuntimeOptions = FP32_ORT,
) -> BankBenchResult:
    """Time ``configs`` of a bundle (None: all of them), interleaved, on one ``Session``.

    With ``engine_profile``, the session is the TensorRT engines ``trimformer build --device
    PROFILE`` wrote (``TrtSession``; None: every config with an engine), each holding its own
    weights; ``threads``, ``providers`` and ``share_weights`` are ONNX Runtime's and unused.
    """
    _check_counts(batch, runs, warmup)
    notes: list[str] = []
    memory: RssMeter | None = None
    try:
        memory = RssMeter()
    except Unavailable as exc:
        notes.append(str(exc))
    else:
        memory.start()
    if engine_profile is not None:
        from trimformer.runtime.trt_session import load_engine

        session: Session = load_engine(bundle, engine_profile)
        share_weights = False
    else:
        opts = _session_options(runtime, providers, threads, spinning=False)
        session = load(bundle, share_weights=share_weights, **opts)
    try:
        names = list(session.configs) if configs is None else list(dict.fromkeys(configs))
        for name in names:  # opens each; an unknown name is refused here, before any timing
            session.use(name)
        feed = session.check_inputs(random_inputs(session.all_inputs, batch))
        runners = [partial(session._run_impl, feed, name) for name in names]
        with _progress(progress) as bar:
            _warm_up(runners, warmup)
            times = _time_runs(runners, runs, bar)
        rss = memory.stop() if memory is not None else None
        if memory is not None and memory.note is not None:
            notes.append(memory.note)
        flops = [session.configs[name].get("flops") for name in names]
    finally:
        session.close()
    timings = []
    for name, seconds, graph_flops in zip(names, times, flops, strict=True):
        if not isinstance(graph_flops, int):
            raise UsageError(
                f"the manifest gives no FLOPs for config {name!r}; re-export the bundle"
            )
        p50, p90, mean = _percentiles(seconds)
        timings.append(ConfigTiming(name, p50, p90, mean, batch / (p50 / 1e3), graph_flops * batch))
    return BankBenchResult(
        configs=tuple(timings),
        batch=batch,
        runs=runs,
        threads=threads,
        providers=session.providers,
        share_weights=share_weights,
        backend=runtime.backend if engine_profile is None else "tensorrt",
        precision=session.precision if engine_profile is None else "engine",
        peak_rss_mb=rss.peak_rss_mb if rss else None,
        rss_before_mb=rss.rss_before_mb if rss else None,
        rss_after_mb=rss.rss_after_mb if rss else None,
        peak_rss_scope=rss.peak_scope if rss else None,
        telemetry_notes=tuple(notes),
    )


def render_bank_table(result: BankBenchResult) -> Table:
    """A rich table with one row per config; speed-up is against ``none`` when it was timed."""
    table = Table(
        title=f"configs, batch {result.batch}, {result.runs} runs, "
        f"{', '.join(result.providers)}, {result.precision}"
    )
    full = next((t for t in result.configs if t.config == "none"), None)
    columns = ["config", "p50 ms", "p90 ms", "throughput/s", "GFLOPs"]
    columns += ["speed-up vs none"] if full else []
    for column in columns:
        table.add_column(column, justify="left" if column == "config" else "right")
    for t in result.configs:
        cells = _row(t.config, t.latency_ms_p50, t.latency_ms_p90, t.throughput, t.flops)
        speedup = [f"{full.latency_ms_p50 / t.latency_ms_p50:.2f}x"] if full else []
        table.add_row(*cells, *speedup)
    weights = "held once for all configs" if result.share_weights else "one copy per config"
    caption = [f"weights {weights}"]
    if result.peak_rss_mb is not None:
        caption.append(_rss_line(result.peak_rss_mb, result.rss_before_mb, result.peak_rss_scope))
    table.caption = "\n".join(caption)
    return table


def render_table(result: BenchResult) -> Table:
    """A rich table of the result: one row per graph (energy per source as columns when read);
    speed-up, FLOPs ratio, memory and Jetson state in the caption."""
    table = Table(
        title=f"batch {result.batch}, {result.runs} runs, {', '.join(result.providers)}, "
        f"{result.precision}",
    )
    sources = sorted(
        set(result.energy_mj_per_inference) | set(result.full_energy_mj_per_inference or {})
    )
    columns = ["graph", "p50 ms", "p90 ms", "throughput/s", "GFLOPs"]
    columns += [f"mJ/inf {source}" for source in sources]
    for column in columns:
        table.add_column(column, justify="left" if column == "graph" else "right")
    table.add_row(
        *_row(
            "reduced", result.latency_ms_p50, result.latency_ms_p90, result.throughput, result.flops
        ),
        *_energy_cells(result.energy_mj_per_inference, sources),
    )
    caption = []
    if result.vs_full:
        table.add_row(
            *_row(
                "full",
                result.full_latency_ms_p50,
                result.full_latency_ms_p90,
                result.full_throughput,
                result.full_flops,
            ),
            *_energy_cells(result.full_energy_mj_per_inference or {}, sources),
        )
        caption.append(
            f"speed-up {result.speedup:.2f}x, FLOPs ratio {result.flops_ratio:.2f}x "
            "(full / reduced)"
        )
    caption.extend(_telemetry_caption(result))
    table.caption = "\n".join(caption) or None
    return table


def _row(graph: str, p50: float, p90: float, throughput: float, flops: int) -> tuple[str, ...]:
    return graph, f"{p50:.3f}", f"{p90:.3f}", f"{throughput:.1f}", f"{flops / 1e9:.3f}"


def _energy_cells(energy: dict[str, float], sources: Sequence[str]) -> list[str]:
    return [f"{energy[s]:.2f}" if s in energy else "-" for s in sources]


def _rss_line(peak: float, before: float | None, scope: str | None) -> str:
    line = f"peak RSS {peak:.1f} MB"
    if before is not None:
        line += f" ({before:.1f} before loading)"
    if scope == "process":
        line += ", process lifetime"
    return line


def _telemetry_caption(result: BenchResult) -> list[str]:
    lines = []
    if result.peak_rss_mb is not None:
        lines.append(_rss_line(result.peak_rss_mb, result.rss_before_mb, result.peak_rss_scope))
    if result.gpu_memory_mb is not None:
        lines.append(f"GPU memory {result.gpu_memory_mb:.1f} MB ({result.gpu_memory_scope})")
    lines += [f"{source}: {covers}" for source, covers in result.energy_covers.items()]
    if result.jetson is not None:
        locked = {True: "yes", False: "no", None: "unknown"}[result.jetson["clocks_locked"]]
        lines.append(f"nvpmodel {result.jetson['power_mode']}, clocks locked: {locked}")
    return lines

"""Time a bundle's reduced graph, optionally against its full graph, in one process.

With ``vs_full`` the two graphs are timed interleaved (reduced, full, then full, reduced, ...),
so drift in clock speed, temperature or background load falls on both alike and the speed-up
is a fair ratio. Timings cover ``Session`` runs only; inputs are checked once, before timing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trimformer.errors import UsageError
from trimformer.runtime.session import Provider, Session, TensorSpec, load

__all__ = ["BenchResult", "benchmark", "random_inputs", "render_table"]

_SEED = 0
_FULL_KEYS = frozenset(
    {
        "full_latency_ms_p50",
        "full_latency_ms_p90",
        "full_throughput",
        "full_flops",
        "speedup",
        "flops_ratio",
    }
)


@dataclass(frozen=True)
class BenchResult:
    """Latency (ms), throughput (items/s at p50) and FLOPs of one batch; full_* with vs_full.

    ``threads`` is as requested (None: ONNX Runtime's default); ``providers`` as in use.
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
    full_latency_ms_p50: float | None = None
    full_latency_ms_p90: float | None = None
    full_throughput: float | None = None
    full_flops: int | None = None
    speedup: float | None = None
    flops_ratio: float | None = None

    @property
    def vs_full(self) -> bool:
        return self.full_latency_ms_p50 is not None

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict; the full_* / ratio keys only when timed vs_full."""
        data = asdict(self)
        data["providers"] = list(self.providers)
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
        TextColumn("benchmark"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


def _time_runs(
    sessions: Sequence[Session],
    feeds: Sequence[dict[str, np.ndarray]],
    runs: int,
    warmup: int,
    progress: bool,
) -> list[list[float]]:
    """Seconds per run of each session; iteration i starts with session i mod n."""
    for _ in range(warmup):
        for session, feed in zip(sessions, feeds, strict=True):
            session._run_impl(feed)
    times: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    with _progress(progress) as bar:
        task = bar.add_task("runs", total=runs)
        for i in range(runs):
            for k in order[i % len(order) :] + order[: i % len(order)]:
                start = time.perf_counter()
                sessions[k]._run_impl(feeds[k])
                times[k].append(time.perf_counter() - start)
            bar.advance(task)
    return times


def benchmark(
    bundle: str | Path,
    batch: int = 1,
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 5,
    vs_full: bool = False,
    progress: bool = True,
    providers: Sequence[Provider] | None = None,
) -> BenchResult:
    """Time the reduced graph (and the full one when ``vs_full``) on random inputs of ``batch``.

    Latencies are per batch; throughput is ``batch`` / p50. Nothing here asserts a speed-up:
    the numbers are what this machine measured.
    """
    for name, value, least in (("batch", batch, 1), ("runs", runs, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UsageError(f"{name} must be an integer >= {least}, got {value!r}")
    # Without spinning, one session's idle threads cannot slow the other one timed next.
    spinning = not vs_full
    sessions = [load(bundle, "model", providers=providers, threads=threads, spinning=spinning)]
    if vs_full:
        sessions.append(
            load(bundle, "full", providers=providers, threads=threads, spinning=spinning)
        )
    try:
        flops = [_graph_flops(s, batch) for s in sessions]
        feeds = [s.check_inputs(random_inputs(s.inputs, batch)) for s in sessions]
        times = _time_runs(sessions, feeds, runs, warmup, progress)
    finally:
        for session in sessions:
            session.close()
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
    )


def render_table(result: BenchResult) -> Table:
    """A rich table of the result: one row per graph, speed-up and FLOPs ratio in the caption."""
    table = Table(
        title=f"batch {result.batch}, {result.runs} runs, {', '.join(result.providers)}",
    )
    for column in ("graph", "p50 ms", "p90 ms", "throughput/s", "GFLOPs"):
        table.add_column(column, justify="left" if column == "graph" else "right")
    table.add_row(
        *_row(
            "reduced", result.latency_ms_p50, result.latency_ms_p90, result.throughput, result.flops
        )
    )
    if result.vs_full:
        table.add_row(
            *_row(
                "full",
                result.full_latency_ms_p50,
                result.full_latency_ms_p90,
                result.full_throughput,
                result.full_flops,
            )
        )
        table.caption = (
            f"speed-up {result.speedup:.2f}x, FLOPs ratio {result.flops_ratio:.2f}x "
            "(full / reduced)"
        )
    return table


def _row(graph: str, p50: float, p90: float, throughput: float, flops: int) -> tuple[str, ...]:
    return graph, f"{p50:.3f}", f"{p90:.3f}", f"{throughput:.1f}", f"{flops / 1e9:.3f}"

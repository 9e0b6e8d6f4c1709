"""Find, zero-shot, the config with the best task metric that meets a latency or speed-up budget.

For each method, speed grows with its strength knob (ToMe's r, the others' keep going down), so
the mildest config that meets the budget is that method's best: it is found by bisection over
the knob's values, timing O(log n) configs instead of all n, and only that config is scored on
the data. The winner across methods is the one with the best metric (ties: the faster one).
Timing noise can break monotonicity near the budget; a config is accepted only as measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trimformer.errors import UsageError
from trimformer.tuning.measure import BenchSettings, ModelSpec, Point, measure_point
from trimformer.tuning.points import Grid

__all__ = ["Budget", "best_within", "tune", "write_profile"]


@dataclass(frozen=True)
class Budget:
    """What the device allows: a p50 latency ceiling (ms) or a speed-up floor vs the full model."""

    latency_ms: float | None = None
    speedup: float | None = None

    def __post_init__(self) -> None:
        if (self.latency_ms is None) == (self.speedup is None):
            raise UsageError("give one budget: --latency-ms X or --speedup S")
        if (self.latency_ms is not None and self.latency_ms <= 0) or (
            self.speedup is not None and self.speedup <= 0
        ):
            raise UsageError("the budget must be positive")

    def met(self, point: Point) -> bool:
        if self.latency_ms is not None:
            return point.latency_ms <= self.latency_ms
        return point.speedup >= (self.speedup or 0.0)

    def describe(self) -> str:
        if self.latency_ms is not None:
            return f"p50 latency <= {self.latency_ms:g} ms"
        return f"speed-up >= {self.speedup:g}x"


def best_within(values: Sequence[float], meets: Callable[[float], bool]) -> float | None:
    """The first (mildest) value that ``meets``, by bisection; ``meets`` must be monotone."""
    if not values or not meets(values[-1]):
        return None
    lo, hi = 0, len(values) - 1  # meets(values[hi]) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(values[mid]):
            hi = mid
        else:
            lo = mid + 1
    return values[lo]


def _search(
    model: ModelSpec,
    method: str,
    budget: Budget,
    settings: BenchSettings,
    work: Path,
    on_point: Callable[[Point], None],
) -> tuple[Point | None, list[Point]]:
    """(``method``'s mildest config meeting the budget, scored; or None), and the points timed."""
    grid = Grid.search(method)
    configs = {c.source: c for c in grid.configs()}
    timed: dict[str, Point] = {}

    def label(value: float) -> str:
        return f"{method} {grid.knob.param}={value}"

    def meets(value: float) -> bool:
        if label(value) not in timed:
            bundle = work / f"{method}-{len(timed)}"
            point = measure_point(model, configs[label(value)], settings, bundle, score=False)
            timed[label(value)] = point
            on_point(point)
        return budget.met(timed[label(value)])

    chosen = best_within(grid.knob.mildest_first(list(grid.values)), meets)
    if chosen is None:
        return None, list(timed.values())
    scored = measure_point(model, configs[label(chosen)], settings, work / f"{method}-best")
    on_point(scored)
    # Re-timed while scoring: keep it only if it still fits.
    return (scored if budget.met(scored) else None), [*timed.values(), scored]


def tune(
    model: ModelSpec,
    methods: Sequence[str],
    budget: Budget,
    settings: BenchSettings,
    work: Path,
    on_point: Callable[[Point], None] = lambda _: None,
) -> tuple[Point | None, list[Point]]:
    """(the best point meeting ``budget`` or None, every point measured on the way)."""
    winners: list[Point] = []
    measured: list[Point] = []
    for method in methods:
        winner, points = _search(model, method, budget, settings, work, on_point)
        measured.extend(points)
        if winner is not None:
            winners.append(winner)
    best = max(winners, key=lambda p: (p.value, p.speedup), default=None)
    return best, measured


def write_profile(
    point: Point, model: ModelSpec, device: str, budget: Budget, path: Path
) -> dict[str, Any]:
    """Write ``point`` as a reductions profile usable with ``export --config`` (atomically)."""
    measured = {
        "model": model.name,
        "device": device,
        "budget": budget.describe(),
        "speedup": round(point.speedup, 3),
        "latency_ms_p50": round(point.latency_ms, 3),
        "full_latency_ms_p50": round(point.full_latency_ms, 3),
        "flops_ratio": round(point.flops_ratio, 3),
        "metric": point.metric,
        "value": round(point.value, 4),
        "full_value": round(point.full_value, 4),
        "agreement": None if math.isnan(point.agreement) else round(point.agreement, 4),
    }
    knob_params = {k: v for k, v in point.params.items() if v is not None}
    profile = {
        "description": (
            f"{point.label} for {model.name} on {device}: {point.speedup:.2f}x measured, "
            f"{point.metric} {point.value:.4f} (full {point.full_value:.4f}); found by "
            f"trimformer tune for {budget.describe()}"
        ),
        "method": point.method,
        "params": knob_params,
        "measured": measured,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(profile, sort_keys=False))
    tmp.replace(path)
    return profile

"""Sweep methods over their strength and show what each point costs and buys.

Every point is measured by ``measure_point``; the result is a JSON list, a table and a PNG of
speed-up against the task metric per method, with the Pareto front (no other point is both
faster and better) marked: the configs worth choosing from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from trimformer.tuning.measure import BenchSettings, ModelSpec, Point, measure_point
from trimformer.tuning.points import Grid

__all__ = ["pareto_front", "plot_sweep", "run_sweep", "write_sweep"]


def run_sweep(
    model: ModelSpec,
    grids: Sequence[Grid],
    settings: BenchSettings,
    work: Path,
    on_point: Callable[[Point], None] = lambda _: None,
) -> list[Point]:
    """Measure every config of every grid; bundles are written under ``work``."""
    points = []
    for grid in grids:
        for index, reduction in enumerate(grid.configs()):
            point = measure_point(model, reduction, settings, work / f"{grid.method}-{index}")
            points.append(point)
            on_point(point)
    return points


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """Points no other point beats on both speed-up and metric, fastest first."""
    front = [
        p
        for p in points
        if not any(
            q.speedup >= p.speedup
            and q.value >= p.value
            and (q.speedup, q.value) != (p.speedup, p.value)
            for q in points
        )
    ]
    return sorted(front, key=lambda p: -p.speedup)


def plot_sweep(points: Sequence[Point], title: str, path: Path, x: str = "speedup") -> None:
    """The metric (y) against the measured speed-up, or the FLOPs ratio with ``x="flops"``: one
    line per method in its sweep order (mildest first), the Pareto front circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def xs(ps: Sequence[Point]) -> list[float]:
        return [p.speedup if x == "speedup" else p.flops_ratio for p in ps]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(p.label.split()[0] for p in points):
        mine = [p for p in points if p.label.split()[0] == method]
        ax.plot(xs(mine), [p.value for p in mine], "-o", label=method)
        for p, px in zip(mine, xs(mine), strict=True):
            label = p.label.split(" ", 1)[1]
            ax.annotate(label, (px, p.value), fontsize=7, textcoords="offset points", xytext=(3, 3))
    front = pareto_front(points) if x == "speedup" else []
    if front:
        ax.scatter(
            xs(front),
            [p.value for p in front],
            s=160,
            facecolors="none",
            edgecolors="black",
            label="Pareto front",
        )
    speed = "measured speed-up vs the full model (x)"
    ax.set_xlabel(speed if x == "speedup" else "FLOPs ratio (full / reduced)")
    ax.set_ylabel(points[0].metric if points else "metric")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_sweep(points: Sequence[Point], title: str, out: Path) -> tuple[Path, Path]:
    """sweep.json and sweep.png in ``out``, each written to a temporary name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "title": title,
        "points": [p.to_json() for p in points],
        "pareto": [p.label for p in pareto_front(points)],
    }
    json_path, png_path = out / "sweep.json", out / "sweep.png"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(json_path)
    tmp_png = out / ".sweep.tmp.png"
    plot_sweep(points, title, tmp_png)
    tmp_png.replace(png_path)
    return json_path, png_path

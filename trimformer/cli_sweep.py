"""``trimformer sweep`` and ``trimformer tune``: choose a reduction by its measured cost and gain.

Thin shells over ``trimformer.tuning``: options in, a progress bar while points are exported,
timed and scored, then a table (and for sweep a PNG, for tune a reductions profile). Imports are
lazy so that ``--help`` is instant.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from trimformer.cli_eval import data_options
from trimformer.cli_runtime import runtime_choice, runtime_options
from trimformer.errors import UsageError

if TYPE_CHECKING:
    from trimformer.tuning.measure import BenchSettings, ModelSpec

__all__ = ["sweep_command", "tune_command"]


def _model_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Options every point's export and measurement share, handed to the command as ``spec``
    (a ModelSpec) and ``settings`` (BenchSettings)."""

    @functools.wraps(function)
    def command(
        model: str,
        data: str,
        limit: int | None,
        strict: bool,
        batch: int,
        runs: int,
        threads: int | None,
        checkpoint: Path | None,
        image_size: int | None,
        seq_len: int | None,
        **rest: Any,
    ) -> Any:
        from trimformer.tuning.measure import BenchSettings, ModelSpec

        spec = ModelSpec(model, checkpoint, image_size, seq_len)
        settings = BenchSettings(data, limit, batch, runs, threads, strict=strict)
        return function(spec, settings, **rest)

    options: list[Callable[[Any], Any]] = [
        click.argument("model"),
        data_options,
        click.option(
            "--batch",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Batch size timed.",
        ),
        click.option(
            "--runs",
            type=click.IntRange(min=1),
            default=30,
            show_default=True,
            help="Timed runs per graph.",
        ),
        click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads."),
        click.option(
            "--checkpoint",
            type=click.Path(path_type=Path),
            default=None,
            help="Weights: .safetensors or a torch state dict (as export).",
        ),
        click.option(
            "--image-size", type=int, default=None, help="Input resolution (default: the model's)."
        ),
        click.option("--seq-len", type=int, default=None, help="Text models: sequence length."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _param_names(method: str) -> set[str]:
    from trimformer.methods import ConfigError, get_method

    try:
        params_type = get_method(method).params_type
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return {f.name for f in dataclasses.fields(params_type)}


def _short(model: str) -> str:
    """A model folder's last two path parts (pkg/model), or the name as given."""
    path = Path(model)
    return "/".join(path.resolve().parts[-2:]) if path.is_dir() else model


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    return Progress(*columns, console=Console(stderr=True), transient=True)


FULL_OUTPUTS = "full-outputs"
"""The folder (beside a sweep's or tune's output) of the full model's outputs on the data."""


def _cache_line(cache: Any) -> str:
    return (
        f"full-model outputs: {cache.misses} computed, {cache.hits} reused from "
        f"{cache.folder} (keyed by graph, weights, runtime and data)"
    )


def _table(points: list[Any], title: str, marked: set[str]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for column in ("config", "speed-up", "p50 ms", "FLOPs ratio", "metric", "full", "agreement"):
        table.add_column(column, justify="left" if column == "config" else "right")
    for p in points:
        star = " *" if p.label in marked else ""
        table.add_row(
            f"{p.label}{star}",
            f"{p.speedup:.2f}x",
            f"{p.latency_ms:.2f}",
            f"{p.flops_ratio:.2f}x",
            f"{p.value:.4f}",
            f"{p.full_value:.4f}",
            f"{p.agreement:.4f}",
        )
    return table


@click.command("sweep")
@_model_options
@click.option(
    "--method",
    "methods",
    multiple=True,
    required=True,
    help="Method to sweep (repeatable: several on one plot).",
)
@click.option("--r", "r_values", default=None, help="ToMe r values: 0:16:2 or 0,4,8.")
@click.option("--keep", "keep_values", default=None, help="Keep shares: 1.0,0.9,0.7,0.5.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="A param fixed at every point of the methods that take it (e.g. --set layers=[1,2]).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for sweep.json and sweep.png.",
)
@runtime_options
def sweep_command(
    spec: ModelSpec,
    settings: BenchSettings,
    methods: tuple[str, ...],
    r_values: str | None,
    keep_values: str | None,
    sets: tuple[str, ...],
    output: Path,
    backend: str,
    precision: str,
    device: str | None,
) -> None:
    """Measure METHOD over its strength on MODEL: speed-up, FLOPs, task metric, agreement.

    One bundle per point, timed against the full model on --backend at --precision and scored
    on --data (int8: each bundle quantized first, calibrated on --data); off ONNX Runtime fp32,
    agreement is with the full model on ONNX Runtime fp32. The Pareto front (no point both
    faster and better) is starred and circled in the plot.
    """
    from rich.console import Console

    from trimformer.cli import _parse_sets
    from trimformer.evaluation.cache import EvalCache
    from trimformer.tuning.points import Grid, knob_of, parse_values
    from trimformer.tuning.sweep import pareto_front, run_sweep, write_sweep

    cache = EvalCache(output / FULL_OUTPUTS)
    runtime = runtime_choice(backend, precision, device)
    settings = dataclasses.replace(settings, runtime=runtime, cache=cache)
    given = {"r": r_values, "keep": keep_values}
    fixed = _parse_sets(sets)
    taken: set[str] = set()
    grids = []
    for method in methods:
        knob = knob_of(method)
        text = given.get(knob.param)
        values = parse_values(f"--{knob.param}", text) if text else list(knob.search)
        mine = {k: v for k, v in fixed.items() if k in _param_names(method)}
        taken.update(mine)
        grids.append(Grid(method, tuple(values), tuple(mine.items())))
    if unused := sorted(set(fixed) - taken):
        raise UsageError(f"--set {', '.join(unused)}: no method given takes it; check the name")
    total = sum(len(g.values) for g in grids)
    with _progress() as bar, tempfile.TemporaryDirectory() as work:
        task = bar.add_task(f"sweeping {total} configs", total=total)
        points = run_sweep(
            spec,
            grids,
            settings,
            Path(work),
            on_point=lambda p: bar.update(task, advance=1, description=f"measured {p.label}"),
        )
    title = (
        f"{_short(spec.name)} on {settings.data}, batch {settings.batch}, "
        f"{settings.runtime.describe()}"
    )
    json_path, png_path = write_sweep(points, title, output)
    front = {p.label for p in pareto_front(points)}
    Console().print(_table(points, title, front))
    Console().print(f"* Pareto front. Wrote {json_path} and {png_path}")
    Console().print(_cache_line(cache), highlight=False)


@click.command("tune")
@_model_options
@click.option(
    "--device",
    required=True,
    help="Device profile (cpu-ort, cpu-openvino, xeon-amx-bf16, ...): its backend and "
    "precision time and score.",
)
@click.option("--latency-ms", type=float, default=None, help="Budget: p50 latency ceiling.")
@click.option("--speedup", type=float, default=None, help="Budget: speed-up floor vs full.")
@click.option(
    "--methods", default="tome,evit", show_default=True, help="Methods to search, comma-separated."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Profile to write (default: tuned-MODEL-DEVICE.yaml).",
)
def tune_command(
    spec: ModelSpec,
    settings: BenchSettings,
    device: str,
    latency_ms: float | None,
    speedup: float | None,
    methods: str,
    output: Path | None,
) -> None:
    """Find the config with the best metric on --data that meets the budget on --device.

    Zero-shot: nothing is trained. Each method's strength is bisected (speed grows with it), so
    only O(log n) configs are timed and one per method is scored. The winner is written as a
    reductions profile with the measured figures, ready for `trimformer export --config`.
    The profile's backend and precision time and score the configs (cpu-ort; cpu-openvino,
    xeon-amx-bf16 and cpu-openvino-int8 on OpenVINO, int8 quantized per config on --data).
    """
    from rich.console import Console

    from trimformer.evaluation.cache import EvalCache
    from trimformer.profiles.device_profiles import load_device_profile
    from trimformer.tuning.points import knob_of
    from trimformer.tuning.tune import Budget, tune, write_profile

    budget = Budget(latency_ms, speedup)
    profile = load_device_profile(device)
    runtime = profile.runtime_options()  # refuses engine profiles in one line
    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        knob_of(name)  # a method without a knob is refused before anything runs
    path = output or Path(f"tuned-{Path(spec.name).name}-{profile.name}.yaml")
    cache = EvalCache(path.parent / f"{path.stem}.{FULL_OUTPUTS}")
    settings = dataclasses.replace(
        settings,
        threads=settings.threads if settings.threads is not None else profile.threads,
        providers=(list(profile.providers) or None) if runtime.backend == "ort" else None,
        runtime=runtime,
        cache=cache,
    )
    with _progress() as bar, tempfile.TemporaryDirectory() as work:
        task = bar.add_task("searching", total=None)
        best, points = tune(
            spec,
            names,
            budget,
            settings,
            Path(work),
            on_point=lambda p: bar.update(task, description=f"measured {p.label}"),
        )
    console = Console()
    scored = [p for p in points if p.metric]
    title = f"{_short(spec.name)} on {profile.name}, budget {budget.describe()}"
    console.print(f"timed {len(points)} configs, scored {len(scored)}")
    if scored:
        console.print(_table(scored, title, {best.label} if best else set()))
    if best is None:
        raise UsageError(
            f"no config of {', '.join(names)} meets {budget.describe()} on {profile.name}; "
            "relax the budget or add methods (--methods)"
        )
    write_profile(best, spec, profile.name, budget, path)
    console.print(
        f"best: {best.label}; wrote {path} (use: trimformer export MODEL --config {path})"
    )
    console.print(_cache_line(cache), highlight=False)

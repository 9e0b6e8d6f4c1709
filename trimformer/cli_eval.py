"""``trimformer eval BUNDLE --data D``: the task metric of the reduced and full graphs.

A thin shell over ``trimformer.evaluation``: progress bars (with examples/s) while the data is
read and the graphs run, then a table of the figures (reduced vs full) and their agreement,
optionally written as JSON. Imports are lazy so that ``--help`` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from trimformer.cli_runtime import runtime_choice, runtime_options

if TYPE_CHECKING:
    from trimformer.evaluation.scoring import EvalResult

__all__ = ["data_options", "eval_command", "eval_progress", "eval_table"]

_DATA_HELP = (
    "fashion-mnist | lee | polarity | images:DIR[?labels=FILE] (class subfolders, or a flat "
    "folder: unlabelled) | texts:FILE[?column=C&label=L&encoding=E] (.txt a text a line, "
    ".jsonl/.csv/.tsv) | pairs:FILE (text<TAB>text<TAB>score, STS)."
)


def data_options(command: Any) -> Any:
    """--data, --limit and --strict, shared by eval, sweep and tune."""
    command = click.option(
        "--strict",
        is_flag=True,
        help="Refuse a file that cannot be read instead of skipping and counting it.",
    )(command)
    command = click.option(
        "--limit",
        type=int,
        default=None,
        help="Score N examples: the first N of a built-in set, a seeded sample of your data.",
    )(command)
    return click.option("--data", required=True, help=_DATA_HELP)(command)


def eval_progress() -> Any:
    """A rich progress bar for ``evaluate``'s (label, done, total) reports: one bar per graph
    (and one for reading images), with examples per second. A context manager that is also the
    callback."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    labels = {
        "decode": "reading images",
        "model": "reduced graph",
        "full": "full graph",
        "reference": "reference (ort fp32)",
    }

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed:.0f}/s" if task.speed else "")

    class Bars(Progress):
        def __call__(self, label: str, done: int, total: int) -> None:
            task = next((t.id for t in self.tasks if t.fields.get("label") == label), None)
            if task is None:
                task = self.add_task(labels.get(label, label), total=total, label=label)
            self.update(task, completed=done)

    return Bars(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _pair(value: float | None, low: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" (min {low:.4f})" if low is not None else "")


def eval_table(result: EvalResult, title: str) -> Any:
    """The figures of one evaluation as a rich table: reduced, full."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure")
    table.add_column("reduced", justify="right")
    table.add_column("full", justify="right")
    table.add_row(result.metric, _pair(result.value), _pair(result.full_value))
    if result.top5 is not None:
        table.add_row("top-5 accuracy", _pair(result.top5), _pair(result.full_top5))
    if result.drop is not None and result.drop_ci95 is not None:
        low, high = result.drop_ci95
        table.add_row("top-1 drop (95 % CI)", f"{result.drop:+.4f} [{low:+.4f}, {high:+.4f}]", "")
    if result.agreement is not None:
        table.add_row(
            f"{result.agreement_metric} with full",
            _pair(result.agreement, result.agreement_min),
            "",
        )
    if result.agreement_p5 is not None:
        table.add_row("cosine with full, 5th percentile", _pair(result.agreement_p5), "")
    if result.top5_overlap is not None:
        table.add_row("top-5 overlap with full", _pair(result.top5_overlap), "")
    if result.kl is not None:
        table.add_row("KL(full || reduced), nats", f"{result.kl:.5f}", "")
    if result.reference_agreement is not None:
        table.add_row(
            f"{result.agreement_metric} with full on ort fp32",
            _pair(result.reference_agreement, result.reference_agreement_min),
            _pair(result.full_reference_agreement),
        )
    return table


@click.command("eval")
@click.argument("bundle", type=click.Path(path_type=Path))
@data_options
@click.option("--batch", type=int, default=64, show_default=True, help="Examples per run.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the figures as JSON.",
)
@runtime_options
def eval_command(
    bundle: Path,
    data: str,
    limit: int | None,
    strict: bool,
    batch: int,
    threads: int | None,
    json_path: Path | None,
    backend: str,
    precision: str,
    device: str | None,
) -> None:
    """Score BUNDLE's reduced and full graphs on --data and measure their agreement.

    With labels (class subfolders, a labels file, ?label=, the built-in sets) the metric is the
    task's: top-1 / top-5 accuracy and the drop with a 95 % bootstrap interval for classifiers,
    5-fold logistic accuracy or Spearman vs rated pairs for embeddings. Without labels the
    metric is agreement with the full model: top-1 agreement (plus top-5 overlap and KL) or the
    embeddings' cosine (mean, 5th percentile, min).

    With --backend openvino or --precision bf16 / int8 both graphs run there, and the full
    graph also runs on ONNX Runtime fp32: the table adds each graph's agreement with that
    reference (for the reduced graph, the cost of reduction and precision together).
    """
    from rich.console import Console
    from rich.markup import escape

    from trimformer.cli import _write_json
    from trimformer.evaluation.runner import evaluate

    runtime = runtime_choice(backend, precision, device)
    with eval_progress() as bars:
        result = evaluate(bundle, data, limit, batch, threads, bars, runtime, strict)
    where = f"{result.examples} examples, {result.runtime}"
    title = f"{escape(str(bundle))} on {escape(data)} ({where})"
    console = Console()
    console.print(eval_table(result, title))
    if result.skipped:
        console.print(
            f"skipped {result.skipped} unreadable files (--strict refuses them)", highlight=False
        )
    if result.note:
        console.print(escape(result.note), highlight=False, soft_wrap=True)
    if json_path is not None:
        _write_json(json_path, result.to_json())

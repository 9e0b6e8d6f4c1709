"""``trimformer eval BUNDLE --data NAME``: the task metric of the reduced and full graphs.

A thin shell over ``trimformer.evaluation``: a progress bar while the graphs run, then a table of
the metric (reduced vs full) and their agreement, optionally written as JSON. Imports are lazy so
that ``--help`` is instant.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["eval_command"]


@click.command("eval")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--data",
    required=True,
    help="fashion-mnist (image bundles: test top-1), lee or polarity (text bundles).",
)
@click.option("--limit", type=int, default=None, help="Use only the first N examples.")
@click.option("--batch", type=int, default=64, show_default=True, help="Examples per run.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the figures as JSON.",
)
def eval_command(
    bundle: Path,
    data: str,
    limit: int | None,
    batch: int,
    threads: int | None,
    json_path: Path | None,
) -> None:
    """Score BUNDLE's reduced and full graphs on a data set and measure their agreement.

    fashion-mnist: top-1 accuracy on the 10,000 test images, agreement = same top-1 class.
    lee: Spearman correlation of document cosine similarities with human ratings; polarity:
    5-fold logistic-regression accuracy on the embeddings; for both, agreement = cosine of the
    reduced and full embeddings (mean and min).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from trimformer.cli import _write_json
    from trimformer.evaluation.runner import evaluate

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, int] = {}

        def advance(graph: str, done: int, total: int) -> None:
            if graph not in tasks:
                label = "reduced graph" if graph == "model" else "full graph"
                tasks[graph] = bar.add_task(label, total=total)
            bar.update(tasks[graph], completed=done)

        result = evaluate(bundle, data, limit=limit, batch=batch, threads=threads, progress=advance)

    table = Table(title=f"{escape(str(bundle))} on {data} ({result.examples} examples)")
    table.add_column("figure")
    table.add_column("reduced", justify="right")
    table.add_column("full", justify="right")
    full = "-" if result.full_value is None else f"{result.full_value:.4f}"
    table.add_row(result.metric, f"{result.value:.4f}", full)
    if result.agreement is not None:
        agreement = f"{result.agreement:.4f}"
        if result.agreement_min is not None:
            agreement += f" (min {result.agreement_min:.4f})"
        table.add_row(f"{result.agreement_metric} with full", agreement, "")
    console = Console()
    console.print(table)
    if result.note:
        console.print(escape(result.note), highlight=False, soft_wrap=True)
    if json_path is not None:
        _write_json(json_path, result.to_json())

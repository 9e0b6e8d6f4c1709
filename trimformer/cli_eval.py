"""``trimformer eval BUNDLE --data NAME``: the task metric of the reduced and full graphs.

A thin shell over ``trimformer.evaluation``: a progress bar while the graphs run, then a table of
the metric (reduced vs full) and their agreement, optionally written as JSON. Imports are lazy so
that ``--help`` is instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from trimformer.cli_runtime import runtime_choice, runtime_options

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
@runtime_options
def eval_command(
    bundle: Path,
    data: str,
    limit: int | None,
    batch: int,
    threads: int | None,
    json_path: Path | None,
    backend: str,
    precision: str,
    device: str | None,
) -> None:
    """Score BUNDLE's reduced and full graphs on a data set and measure their agreement.

    fashion-mnist: top-1 accuracy on the 10,000 test images, agreement = same top-1 class.
    lee: Spearman correlation of document cosine similarities with human ratings; polarity:
    5-fold logistic-regression accuracy on the embeddings; for both, agreement = cosine of the
    reduced and full embeddings (mean and min).

    With --backend openvino or --precision bf16 / int8 both graphs run there, and the full
    graph also runs on ONNX Runtime fp32: the table adds each graph's agreement with that
    reference (for the reduced graph, the cost of reduction and precision together).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from trimformer.cli import _write_json
    from trimformer.evaluation.runner import evaluate

    runtime = runtime_choice(backend, precision, device)
    labels = {"model": "reduced graph", "full": "full graph", "reference": "reference (ort fp32)"}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, int] = {}

        def advance(graph: str, done: int, total: int) -> None:
            if graph not in tasks:
                tasks[graph] = bar.add_task(labels[graph], total=total)
            bar.update(tasks[graph], completed=done)

        result = evaluate(bundle, data, limit, batch, threads, progress=advance, runtime=runtime)

    title = f"{escape(str(bundle))} on {data} ({result.examples} examples, {result.runtime})"
    table = Table(title=title)
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
    if result.reference_agreement is not None:
        reference = f"{result.reference_agreement:.4f}"
        if result.reference_agreement_min is not None:
            reference += f" (min {result.reference_agreement_min:.4f})"
        full_reference = result.full_reference_agreement
        table.add_row(
            f"{result.agreement_metric} with full on ort fp32",
            reference,
            "-" if full_reference is None else f"{full_reference:.4f}",
        )
    console = Console()
    console.print(table)
    if result.note:
        console.print(escape(result.note), highlight=False, soft_wrap=True)
    if json_path is not None:
        _write_json(json_path, result.to_json())

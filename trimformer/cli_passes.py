"""``trimformer passes IN.onnx -o OUT.onnx --pass NAME ...``: run graph passes on a model file.

The input is loaded with its external data (a bundle's ``model.onnx`` reads ``weights.bin``
beside it). The output is self-contained: one ``OUT.onnx`` with every weight inside; a model
over protobuf's 2 GiB limit instead gets its own ``OUT.onnx.data`` beside it. Files are written
under temporary names and renamed into place, so a failure never leaves a half-written file.
Imports are lazy so that ``--help`` is instant.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from trimformer.errors import UsageError, first_line

if TYPE_CHECKING:
    import onnx
    from rich.table import Table

    from trimformer.graph_passes.base import PassResult
    from trimformer.graph_passes.lint import LintReport

__all__ = ["lint_table", "passes_command", "results_table", "save_model"]


@click.command("passes")
@click.argument("model_path", metavar="IN.onnx", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Model file to write (self-contained .onnx).",
)
@click.option(
    "--pass",
    "pass_names",
    multiple=True,
    required=True,
    metavar="NAME",
    help="A pass to run; repeat to run several, in order (inline, to-plugins, cleanup, fp16, "
    "lint). An unknown name lists the known ones.",
)
def passes_command(model_path: Path, output: Path, pass_names: tuple[str, ...]) -> None:
    """Run graph passes over IN.onnx and write the result to -o OUT.onnx."""
    from rich.console import Console

    from trimformer.graph_passes import get_pass, run_passes

    for name in pass_names:
        get_pass(name)  # an unknown name fails before a large model is loaded
    if output.resolve() == model_path.resolve():
        raise UsageError(
            f"-o {output} would overwrite IN.onnx (a bundle's manifest hashes it); "
            "write to another file"
        )
    model = _load(model_path)
    model, results = run_passes(model, pass_names)
    save_model(model, output)
    console = Console()
    console.print(results_table(results, f"{model_path} -> {output}"))
    for result in results:
        if result.report is not None:
            console.print(lint_table(result.report))


def _load(path: Path) -> onnx.ModelProto:
    import onnx
    from google.protobuf.message import DecodeError

    from trimformer.graph_passes.model_io import check_model

    if not path.is_file():
        raise UsageError(f"{path} is not a file; give an .onnx model, e.g. BUNDLE/model.onnx")
    try:
        model = onnx.load(path)  # raises ValidationError when the external data file is missing
    except (OSError, DecodeError, onnx.checker.ValidationError) as exc:
        raise UsageError(
            f"cannot load {path} as ONNX ({first_line(exc)}); give an .onnx model with its "
            "external data file beside it"
        ) from None
    try:  # checked here, so a pass is never blamed for its input
        check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UsageError(
            f"{path} is not a valid ONNX model ({first_line(exc)}); give the model.onnx of a "
            "trimformer bundle, or repair the model"
        ) from None
    return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` to ``path`` atomically: self-contained, or with ``<path>.data`` if > 2 GiB.

    Everything is written into a temporary folder beside ``path``, then renamed into place
    (the data file first, the model last, so the model never names a missing data file).
    """
    import onnx

    from trimformer.graph_passes.model_io import PROTOBUF_LIMIT

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise UsageError(
            f"cannot write to {path.parent}: {exc.strerror}; choose a writable -o"
        ) from None
    data = f"{path.name}.data"
    try:
        external = model.ByteSize() > PROTOBUF_LIMIT
        onnx.save_model(
            model,
            tmp / path.name,
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=data,
        )
        has_data = (tmp / data).exists()  # onnx keeps tensors under 1 KiB inline
        if has_data:
            os.replace(tmp / data, path.with_name(data))
        os.replace(tmp / path.name, path)
        if not has_data:  # an earlier output's weights, which this model does not name
            path.with_name(data).unlink(missing_ok=True)
    except OSError as exc:
        raise UsageError(
            f"writing {path} failed ({exc.strerror or exc}); nothing was written; "
            "choose a writable -o"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def results_table(results: list[PassResult], title: str) -> Table:
    """One row per pass: its name, whether it changed the model, and its counts."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("pass")
    table.add_column("modified")
    table.add_column("what it did")
    for result in results:
        counts = ", ".join(
            f"{key.replace('_', ' ')} {value}" for key, value in result.counts.items()
        )
        table.add_row(result.name, "yes" if result.modified else "no", counts or "-")
    return table


def lint_table(report: LintReport) -> Table:
    """The lint report as a table: node counts per op type and where each runs."""
    from rich.table import Table

    totals = ", ".join(f"{place} {count}" for place, count in report.totals().items() if count)
    table = Table(title=f"what runs where ({totals})")
    for column in ("place", "domain", "op type"):
        table.add_column(column)
    table.add_column("nodes", justify="right")
    for row in report.rows():
        table.add_row(row["place"], row["domain"] or "ai.onnx", row["op_type"], str(row["count"]))
    return table

"""``trimformer quantize BUNDLE``: add int8 graphs of a bundle's configs for a CPU backend.

A thin shell over ``trimformer.quantization`` (imports are lazy so that ``--help`` is instant).
"""

from __future__ import annotations

from pathlib import Path

import click

from trimformer.errors import UsageError

__all__ = ["quantize_command"]


@click.command("quantize")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--backend",
    type=click.Choice(["ort", "openvino"]),
    default="ort",
    show_default=True,
    help="ort: onnxruntime.quantization (static QDQ with --data, or --dynamic); openvino: NNCF "
    "post-training quantization (needs --data).",
)
@click.option(
    "--data",
    default=None,
    help="Calibration data, a data set eval takes (fashion-mnist, lee, polarity).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Calibrate on the first N examples of --data.",
)
@click.option(
    "--dynamic",
    is_flag=True,
    help="ONNX Runtime's dynamic int8 (activation ranges at run time): no calibration data.",
)
@click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="NAME|all",
    help="Quantize these configs (repeatable; default all, including none).",
)
@click.option("--force", is_flag=True, help="Replace int8 graphs quantized before.")
def quantize_command(
    bundle: Path,
    backend: str,
    data: str | None,
    limit: int,
    dynamic: bool,
    configs: tuple[str, ...],
    force: bool,
) -> None:
    """Quantize BUNDLE's configs to int8 for ONNX Runtime or OpenVINO and record them in it.

    The reductions' matching and ranking stay fp32. Run the result with
    `trimformer bench/eval/run BUNDLE --backend B --precision int8`.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from trimformer.quantization import CalibrationSet, QuantizeRequest, quantize_bundle

    if dynamic and data is not None:
        raise UsageError("--dynamic needs no calibration data; drop --data, or drop --dynamic")
    if dynamic and backend != "ort":
        raise UsageError("--dynamic is ONNX Runtime's; OpenVINO's int8 calibrates on --data D")
    if data is None and not dynamic:
        hint = " or --dynamic (ONNX Runtime's run-time ranges)" if backend == "ort" else ""
        raise UsageError(f"calibration data missing: give --data D{hint}")
    calibration = None
    if data is not None:
        from trimformer.evaluation.runner import data_inputs

        calibration = CalibrationSet(data, data_inputs(bundle, data, limit))
    names = () if not configs or "all" in configs else configs
    request = QuantizeRequest(bundle, backend, calibration, names, force)
    console = Console(stderr=True)
    with console.status("quantizing") as status:
        made = quantize_bundle(request, lambda name: status.update(f"quantizing {name}"))
    table = Table(title=f"{escape(str(bundle))}: int8 graphs for {backend}")
    for column in ("config", "scheme", "calibration", "file", "MB", "seconds"):
        table.add_column(column, justify="right" if column in ("MB", "seconds") else "left")
    for q in made:
        graph = q.files["graph"]
        size = sum(f["bytes"] for f in q.files.values()) / 1e6
        where = f"{calibration.data}, {calibration.items}" if calibration else "dynamic"
        table.add_row(q.config, q.scheme, where, graph["path"], f"{size:.1f}", f"{q.seconds:.1f}")
    Console().print(table)

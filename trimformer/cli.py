"""The ``trimformer`` command: a thin shell over the library (imports are lazy: --help is instant).

Every failure a user can act on prints one line (problem and fix) and exits 2 for usage errors,
1 for runtime failures; set TRIMFORMER_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from trimformer.cli_runtime import runtime_choice, runtime_options
from trimformer.errors import TrimformerError, UsageError

if TYPE_CHECKING:
    from trimformer.profiles import ReductionConfig

__all__ = ["cli", "main"]

console = Console(stderr=True)
out = Console()


class _OneLineHandler(logging.Handler):
    """Show library warnings as one dim line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "info"
        console.print(f"[yellow]{level}:[/] {record.getMessage()}", highlight=False, soft_wrap=True)


def _setup_logging() -> None:
    logger = logging.getLogger("trimformer")
    if not any(isinstance(h, _OneLineHandler) for h in logger.handlers):
        logger.addHandler(_OneLineHandler())
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def _parse_ints(option: str, value: str | None, hint: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise UsageError(f"{option} {value!r}: give {hint}") from None


def _parse_r(value: str | None) -> int | list[int] | None:
    items = _parse_ints("--r", value, "an integer (13) or per-layer integers (8,8,4)")
    return items[0] if items is not None and len(items) == 1 else items


def _chosen_reduction(config: str | None, method: str | None) -> ReductionConfig | None:
    """The reduction named by --config and/or --method (None when neither is given)."""
    from trimformer.profiles import ReductionConfig, load_reduction_config

    if config is None:
        return ReductionConfig(method) if method is not None else None
    reduction = ReductionConfig("none", source="none") if config == "none" else None
    reduction = reduction or load_reduction_config(config)
    if method and method != reduction.method:
        raise UsageError(f"--method {method} contradicts {config}, which is {reduction.method}")
    return reduction


def _overrides(
    r: str | None, schedule: str | None, keep: float | None, k: int | None = None
) -> dict[str, Any]:
    """Param overrides from the flags export and visualize share."""
    overrides: dict[str, Any] = {}
    if (r_value := _parse_r(r)) is not None:
        overrides["r"] = r_value
    if schedule is not None:
        overrides["schedule"] = schedule
    if keep is not None:
        overrides["keep"] = keep
    if k is not None:
        overrides["k"] = k
    return overrides


def _parse_sets(values: tuple[str, ...]) -> dict[str, Any]:
    """``--set KEY=VALUE`` params, each value read as YAML (8, true, [8, 4], keys)."""
    import yaml

    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: give KEY=VALUE, e.g. --set metric=keys")
        try:
            params[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UsageError(f"--set {item!r}: the value is not valid YAML") from None
    return params


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trimformer")
def cli() -> None:
    """Zero-shot token merging and pruning for transformers, exported to ONNX and benchmarked."""
    _setup_logging()


@cli.command()
@click.argument("model")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Bundle folder to write."
)
@click.option(
    "--method",
    default=None,
    help="Reduction method: tome, evit, zero_tprune, divprune, tail_drop, keep_subset, hired, "
    "mrt5_gate, or none.",
)
@click.option(
    "--config",
    "configs",
    multiple=True,
    help="Reduction profile name, YAML file or none. Repeat it to export a config bank, one "
    "bundle of several configs of the same weights, switched at run time: "
    "--config none --config vit-tome-r8 (the first is the default).",
)
@click.option(
    "--r",
    "rs",
    multiple=True,
    help="ToMe tokens merged per layer: 13, or per-layer 8,8,... Repeat it for a config bank "
    "of several strengths: --r 0 --r 8 --r 13 (configs tome-r0, tome-r8, tome-r13).",
)
@click.option(
    "--schedule",
    type=click.Choice(["constant", "decreasing"]),
    default=None,
    help="ToMe r schedule.",
)
@click.option("--keep", type=float, default=None, help="EViT share of tokens kept, in (0, 1].")
@click.option(
    "--k", "k", type=int, default=None, help="Tokens kept (divprune, tail_drop, hired): a count."
)
@click.option(
    "--layers", default=None, help="EViT reducing layers, zero-based: 3,6,9 (the paper's 4,7,10)."
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any method param, e.g. --set metric=keys (repeatable; values are YAML).",
)
@click.option("--batch", type=int, default=None, help="Fix the batch size (default: dynamic).")
@click.option(
    "--seq-len",
    type=int,
    default=None,
    help="Text models: the fixed sequence length (default: 128, or the model's maximum).",
)
@click.option(
    "--image-size", type=int, default=None, help="Input resolution (default: the model's)."
)
@click.option("--opset", type=int, default=20, show_default=True, help="ONNX opset.")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="Weights: .safetensors or a torch state dict.",
)
@click.option(
    "--pretrained", is_flag=True, help="Download timm's pretrained weights (needs a network)."
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Compare ONNX Runtime with torch (max abs error <= 1e-4).",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle at --output.")
def export(
    model: str,
    output: Path,
    method: str | None,
    configs: tuple[str, ...],
    rs: tuple[str, ...],
    schedule: str | None,
    keep: float | None,
    k: int | None,
    layers: str | None,
    sets: tuple[str, ...],
    batch: int | None,
    seq_len: int | None,
    image_size: int | None,
    opset: int,
    checkpoint: Path | None,
    pretrained: bool,
    verify: bool,
    force: bool,
) -> None:
    """Export MODEL with a token reduction as a bundle folder.

    MODEL: a timm name (deit_small_patch16_224, timm:NAME), a timm folder, a Hugging Face id
    (hf:ORG/NAME, from the network or the local cache) or a save_pretrained /
    sentence-transformers folder (BERT-family text encoders).
    """
    from trimformer.exporter import ExportRequest, export_bundle
    from trimformer.profiles import ReductionConfig

    overrides = {**_parse_sets(sets), **_overrides(None, schedule, keep, k)}
    if (layer_list := _parse_ints("--layers", layers, "zero-based layers (3,6,9)")) is not None:
        overrides["layers"] = layer_list
    bank: tuple[tuple[str, ReductionConfig], ...] = ()
    if len(configs) > 1 or len(rs) > 1:
        from trimformer.cli_bank import bank_configs

        bank = bank_configs(configs, rs, method, overrides)
    reduction = ReductionConfig("none")
    if not bank:
        reduction = _chosen_reduction(configs[0] if configs else None, method) or reduction
        overrides.update(_overrides(rs[0] if rs else None, None, None))
        if overrides and reduction.method == "none":
            raise UsageError(
                "--r/--schedule/--keep/--k/--layers/--set need a method; add --method tome or "
                "--method evit"
            )
        reduction = ReductionConfig(
            reduction.method,
            {**reduction.params, **overrides},
            reduction.source,
            reduction.description,
        )
    request = ExportRequest(
        model=model,
        output=output,
        reduction=reduction,
        checkpoint=checkpoint,
        pretrained=pretrained,
        batch=batch,
        image_size=image_size,
        seq_len=seq_len,
        opset=opset,
        verify=verify,
        force=force,
        bank=bank,
    )
    with console.status("exporting", spinner="dots") as status:
        manifest = export_bundle(request, step=lambda s: status.update(f"[bold]{model}[/]: {s}"))
    _print_export_summary(output, manifest)


def _print_export_summary(output: Path, manifest: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{output}  ({manifest['model']['id']})")
    for column in ("config", "graph", "tokens out", "GFLOPs", "max abs err vs torch"):
        table.add_column(column, justify="left" if column in ("config", "graph") else "right")
    errors = (manifest.get("verify") or {}).get("max_abs_error", {})
    for name, config in manifest["configs"].items():
        graph = config["graph"]
        final = config["tokens_per_layer"][-1] if config["layers"] else manifest["model"]["tokens"]
        err = f"{errors[graph]:.2e}" if graph in errors else "not verified"
        flops = f"{config['flops'] / 1e9:.2f}"
        table.add_row(name, manifest["graphs"][graph]["file"], str(final), flops, err)
    out.print(table)
    out.print(f"exported in {manifest['export_seconds']} s")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--vs-full", is_flag=True, help="Also time the un-reduced graph, interleaved.")
@runtime_options
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads of the backend."
)
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the figures as JSON.",
)
@click.option(
    "--profile-ops", is_flag=True, help="Also profile the reduction ops' share of runtime."
)
@click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="NAME|all",
    help="Time these configs of the bundle (repeatable; all: every one), interleaved on one "
    "session that holds the weights once; one row per config.",
)
@click.option(
    "--engine",
    "engine_profile",
    metavar="PROFILE",
    default=None,
    help="Time the TensorRT engines `trimformer build --device PROFILE` wrote instead (every "
    "config with an engine, or those --config names; build --config all to have the full "
    "model's `none` row to compare with). Needs TensorRT and a GPU.",
)
def bench(
    bundle: Path,
    vs_full: bool,
    backend: str,
    precision: str,
    device: str | None,
    batch: int,
    threads: int | None,
    runs: int,
    warmup: int,
    json_path: Path | None,
    profile_ops: bool,
    configs: tuple[str, ...],
    engine_profile: str | None,
) -> None:
    """Time a bundle on ONNX Runtime or OpenVINO (or its TensorRT engines): p50/p90 latency,
    throughput, optionally vs the full model (same backend and precision).

    Also reports peak memory and, where the platform exposes it, energy per inference.
    """
    from rich.markup import escape

    from trimformer.runtime import benchmark
    from trimformer.runtime.bench import render_table

    runtime = runtime_choice(backend, precision, device)
    if engine_profile is not None and threads is not None:
        raise UsageError("--threads sets ONNX Runtime's threads; TensorRT engines take none")
    if engine_profile is not None and runtime.backend != "ort":
        raise UsageError("--engine times TensorRT engines; drop --backend / --precision")
    if profile_ops and runtime.backend != "ort":
        raise UsageError("--profile-ops reads ONNX Runtime's profiler; drop --backend openvino")
    if configs or engine_profile is not None:
        if vs_full or profile_ops:
            raise UsageError(
                "--vs-full and --profile-ops time the default config on ONNX Runtime; with "
                "--config or --engine, time the config none too to compare with the full model"
            )
        from trimformer.cli_bank import bench_configs

        bench_configs(
            bundle, configs, batch, threads, runs, warmup, json_path, engine_profile, runtime
        )
        return

    result = benchmark(
        bundle,
        batch=batch,
        threads=threads,
        runs=runs,
        warmup=warmup,
        vs_full=vs_full,
        runtime=runtime,
    )
    out.print(render_table(result))
    for note in result.telemetry_notes:  # one line per figure that cannot be read here, and why
        console.print(f"[dim]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    figures = result.to_json()
    if profile_ops:
        from trimformer.runtime.op_profile import profile_ops as profile

        ops = profile(bundle, batch=batch, threads=threads, runs=min(runs, 10))
        spent = ", ".join(f"{op} {ms:.2f} ms" for op, ms in ops.reduction_ms.items()) or "none"
        out.print(
            f"reduction ops: {100 * ops.reduction_share:.1f}% of kernel time "
            f"({spent} of {ops.total_ms:.2f} ms per run, ONNX Runtime profiler)"
        )
        figures["op_profile"] = ops.to_json()
    if json_path is not None:
        _write_json(json_path, figures)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(
            f"cannot write {path}: {exc.strerror}; choose a writable --json path"
        ) from None


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True)
@runtime_options
def run(
    bundle: Path,
    images: tuple[Path, ...],
    top: int,
    backend: str,
    precision: str,
    device: str | None,
) -> None:
    """Classify IMAGES with a bundle and print the top classes."""
    import numpy as np
    from rich.table import Table

    from trimformer.runtime import load, load_image

    runtime = runtime_choice(backend, precision, device)
    with load(bundle, **runtime.load_options()) as session:
        preprocess = session.manifest["preprocess"]
        labels = session.manifest.get("labels")
        batch = np.stack([load_image(path, preprocess) for path in images])
        logits = next(iter(session.run(batch).values()))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    for path, row in zip(images, probs, strict=True):
        table = Table(title=str(path))
        table.add_column("class")
        table.add_column("probability", justify="right")
        for index in np.argsort(-row)[:top]:
            name = labels[index] if labels else f"class {index}"
            table.add_row(f"{index}: {name}", f"{row[index]:.3f}")
        out.print(table)


@cli.group()
def profiles() -> None:
    """Ready-made reduction configs."""


@profiles.command("list")
def profiles_list() -> None:
    """List packaged reduction profiles."""
    from rich.table import Table

    from trimformer.profiles import list_reduction_profiles

    table = Table(title="reduction profiles (use with export --config NAME)")
    table.add_column("name")
    table.add_column("description")
    for name, description in list_reduction_profiles().items():
        table.add_row(name, description)
    out.print(table)


@profiles.command("show")
@click.argument("name")
def profiles_show(name: str) -> None:
    """Print a profile's YAML."""
    import yaml

    from trimformer.profiles import load_reduction_config

    config = load_reduction_config(name)
    out.print(
        yaml.safe_dump(
            {"description": config.description, "method": config.method, "params": config.params},
            sort_keys=False,
        )
    )


def _register_subcommands() -> None:
    from trimformer.cli_build import build_command  # imports only click
    from trimformer.cli_doctor import doctor_command  # imports only click
    from trimformer.cli_eval import eval_command  # imports only click
    from trimformer.cli_openvino import openvino_command  # imports only click
    from trimformer.cli_passes import passes_command  # imports only click and errors
    from trimformer.cli_plugins import plugins_command  # imports only click
    from trimformer.cli_quantize import quantize_command  # imports only click and errors
    from trimformer.cli_serve import serve_command, triton_command  # imports only click, errors
    from trimformer.cli_sweep import sweep_command, tune_command  # imports only click, errors
    from trimformer.cli_visualize import visualize_command  # imports only click and errors

    cli.add_command(passes_command)
    cli.add_command(plugins_command)
    cli.add_command(visualize_command)
    cli.add_command(build_command)
    cli.add_command(doctor_command)
    cli.add_command(eval_command)
    cli.add_command(sweep_command)
    cli.add_command(tune_command)
    cli.add_command(quantize_command)
    cli.add_command(openvino_command)
    cli.add_command(triton_command)
    cli.add_command(serve_command)


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning library errors into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="trimformer", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except TrimformerError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("TRIMFORMER_DEBUG"):
            raise
        console.print(
            f"[red]internal error:[/] {type(exc).__name__}: {exc}; "
            "rerun with TRIMFORMER_DEBUG=1 and report the traceback",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()

"""``trimformer triton`` and ``trimformer serve``: a bundle on Triton Inference Server or Ray Serve.

Thin shells over ``trimformer.serving`` (imports are lazy, so ``--help`` is instant):
``triton BUNDLE -o REPOSITORY`` writes a Triton model repository (one model per config);
``serve BUNDLE`` deploys the bundle on Ray Serve and serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

from pathlib import Path

import click

from trimformer.errors import UsageError

__all__ = ["serve_command", "triton_command"]

_DEVICE_HELP = (
    "Device profile (packaged name or YAML file): batching and instances, and for a tensorrt "
    "profile the engines trimformer build made. Default: cpu-ort."
)


@click.command("triton")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Repository to write."
)
@click.option("--device", "device", default="cpu-ort", metavar="PROFILE", help=_DEVICE_HELP)
@click.option(
    "--preprocess",
    is_flag=True,
    help="Add a Python-backend model decoding encoded images and one ensemble per config "
    "(CONFIG-image), so clients can send JPEG/PNG bytes.",
)
@click.option(
    "--weights",
    type=click.Choice(["link", "copy"]),
    default="link",
    show_default=True,
    help="link: hard links of the bundle's weights.bin (one copy on disk); copy: a copy per "
    "model (for object stores).",
)
@click.option(
    "--plugin-library",
    type=click.Path(path_type=Path),
    default=None,
    help="libtrimformer_plugins.so to ship, where an engine loads it (default: where "
    "trimformer build finds it).",
)
@click.option("--force", is_flag=True, help="Replace an existing repository at --output.")
def triton_command(
    bundle: Path,
    output: Path,
    device: str,
    preprocess: bool,
    weights: str,
    plugin_library: Path | None,
    force: bool,
) -> None:
    """Write BUNDLE as a Triton Inference Server model repository."""
    from rich.console import Console
    from rich.table import Table

    from trimformer.profiles.device_profiles import load_device_profile
    from trimformer.serving.triton_repo import write_repository

    profile = load_device_profile(device)
    plan = write_repository(bundle, output, profile, preprocess, weights, plugin_library, force)
    table = Table(title=f"{output} (device profile {plan.profile})")
    for column in ("model", "backend", "instances", "max batch", "note"):
        table.add_column(column)
    for model in plan.models:
        default = " (default)" if model.config == plan.default_config else ""
        table.add_row(
            model.name + default,
            model.backend,
            f"{model.instance_kind} x {model.instances}",
            str(model.max_batch_size),
            model.note,
        )
    for ensemble in plan.ensembles:
        table.add_row(ensemble.name, "ensemble", "-", str(ensemble.max_batch_size), "images")
    console = Console()
    console.print(table)
    console.print(f"start it with tritonserver --model-repository={output.resolve()} (README.md)")


@click.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join (ray://HOST:10001 or HOST:6379); default: start a local Ray. "
    "The bundle path must be readable on every node.",
)
@click.option("--device", "device", default="cpu-ort", metavar="PROFILE", help=_DEVICE_HELP)
@click.option(
    "--cpus-per-replica",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Ray CPUs each replica reserves.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="ONNX Runtime threads per replica (default: the profile's, else --cpus-per-replica).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Local Ray only: serve Prometheus metrics on this port (Ray's metrics export port).",
)
def serve_command(
    bundle: Path,
    replicas: int,
    host: str,
    port: int,
    address: str | None,
    device: str,
    cpus_per_replica: float,
    threads: int | None,
    metrics_port: int | None,
) -> None:
    """Serve BUNDLE over HTTP on Ray Serve: POST /predict (image bytes, JSON or numpy)."""
    import math

    from rich.console import Console

    from trimformer.bundle import read_manifest
    from trimformer.profiles.device_profiles import load_device_profile

    try:
        from trimformer.serving.ray_app import ServeSettings
        from trimformer.serving.ray_run import serve_until_signal
    except ImportError:
        raise UsageError(
            "trimformer serve needs Ray Serve: pip install 'trimformer[serve]'"
        ) from None
    read_manifest(bundle)  # a bad bundle is refused here, before Ray starts
    profile = load_device_profile(device)
    if metrics_port is not None and address is not None:
        raise UsageError("--metrics-port applies to a local Ray; a cluster sets its own")
    settings = ServeSettings(
        bundle=str(bundle.resolve()),
        replicas=replicas,
        cpus_per_replica=cpus_per_replica,
        threads=threads or profile.threads or max(1, math.floor(cpus_per_replica)),
        max_batch=profile.batch.max,
        batch_wait_s=profile.serving.max_queue_delay_us / 1e6,
    )
    console = Console(stderr=True)

    def ready(url: str) -> None:
        console.print(
            f"serving {bundle} with {replicas} replica(s) at {url}/predict "
            f"(GET {url}/ describes it; Ctrl-C stops)",
            highlight=False,
        )

    serve_until_signal(settings, host, port, address, metrics_port, ready)
    console.print("stopped: replicas drained and Ray Serve shut down")

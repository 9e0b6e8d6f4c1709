"""``trimformer build DIR --device PROFILE``: build a TensorRT engine into a bundle.

A thin shell over ``trimformer.runtime.trt_build``: the device profile (a packaged name or a
YAML file) and the overrides become a ``BuildSettings``; the engine and its record land in
``DIR/engines/`` and the manifest. Imports are lazy so that ``--help`` is instant.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["build_command"]


@click.command("build")
@click.argument("bundle", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--device",
    "device",
    required=True,
    metavar="PROFILE",
    help="Device profile: a packaged name (jetson-orin-nano, jetson-orin-nx, jetson-agx-orin, "
    "desktop-rtx, datacenter-hopper) or a YAML file.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
    default=None,
    help="Override the profile's precision (int8 needs a Q/DQ-quantized model).",
)
@click.option(
    "--timing-cache",
    type=click.Path(path_type=Path),
    default=None,
    help="TensorRT timing cache to read (if present) and update: faster rebuilds.",
)
@click.option(
    "--plugin-library",
    type=click.Path(path_type=Path),
    default=None,
    help="libtrimformer_plugins.so to load (default: $TRIMFORMER_PLUGIN_LIB, plugins/build/, "
    "else TensorRT's Python plugins).",
)
def build_command(
    bundle: Path,
    device: str,
    precision: str | None,
    timing_cache: Path | None,
    plugin_library: Path | None,
) -> None:
    """Build DIR's model into DIR/engines/PROFILE.plan for this machine's GPU."""
    from rich.console import Console
    from rich.table import Table

    from trimformer.cli_passes import results_table
    from trimformer.profiles.device_profiles import load_device_profile
    from trimformer.runtime.trt_build import build_engine

    profile = load_device_profile(device)
    result = build_engine(bundle, profile, precision, timing_cache, plugin_library)
    console = Console()
    console.print(results_table(result.passes, f"graph passes before the build ({profile.name})"))
    record = result.record
    table = Table(title=f"{bundle / result.files.plan}")
    table.add_column("setting")
    table.add_column("value")
    settings = record["settings"]
    for key, value in (
        ("TensorRT", record["tensorrt"]),
        ("GPU", f"{record['gpu']} (compute {record['compute_capability']})"),
        ("precision", settings["precision"]),
        ("strongly typed", "yes" if settings["strongly_typed"] else "no"),
        ("builder flags", ", ".join(settings["builder_flags"]) or "-"),
        ("workspace", f"{settings['workspace_bytes'] >> 20} MiB"),
        ("optimisation level", str(settings["optimization_level"])),
        ("DLA core", "-" if settings["dla_core"] is None else str(settings["dla_core"])),
        ("batch", "{min}..{max} (opt {opt})".format(**settings["batch"])),
        ("plugins", record["plugins"]),
        ("power mode", record["power_mode"] or "-"),
    ):
        table.add_row(key, str(value))
    console.print(table)

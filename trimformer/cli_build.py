"""``trimformer build DIR --device PROFILE [--config NAME|all]``: build TensorRT engines.

A thin shell over ``trimformer.runtime.trt_build``: the device profile (a packaged name or a
YAML file) and the overrides become a ``BuildSettings``; the engine and its record land in
``DIR/engines/`` and the manifest: ``PROFILE.plan`` for the model graph, or with ``--config``
``PROFILE/CONFIG.plan`` per config of a bank, weight-stripped and refitted from weights.bin at
load (``trimformer.runtime.trt_bank``). Imports are lazy so that ``--help`` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.console import Console

    from trimformer.runtime.trt_build import BuildResult

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
    "--config",
    "configs",
    multiple=True,
    metavar="NAME|all",
    help="Build the engine of this config of the bank (repeatable; all: every config) into "
    "DIR/engines/PROFILE/NAME.plan, without weights (refitted from weights.bin when loaded).",
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
    configs: tuple[str, ...],
    precision: str | None,
    timing_cache: Path | None,
    plugin_library: Path | None,
) -> None:
    """Build DIR's model into DIR/engines/PROFILE.plan (or its configs, see --config) for this
    machine's GPU."""
    from rich.console import Console

    from trimformer.profiles.device_profiles import load_device_profile
    from trimformer.runtime.trt_build import build_engines

    profile = load_device_profile(device)
    selection = list(configs) or None
    results = build_engines(bundle, profile, selection, precision, timing_cache, plugin_library)
    console = Console()
    for result in results:
        _print_result(console, bundle, result, profile.name)


def _print_result(console: Console, bundle: Path, result: BuildResult, profile: str) -> None:
    """The passes' table and the engine's settings."""
    from rich.table import Table

    from trimformer.cli_passes import results_table

    console.print(results_table(result.passes, f"graph passes before the build ({profile})"))
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
        ("config", record["config"] or "-"),
        ("weights", record["weights"]),
        ("plugins", _plugins_label(record)),
        ("power mode", record["power_mode"] or "-"),
    ):
        table.add_row(key, str(value))
    console.print(table)


def _plugins_label(record: dict) -> str:
    """What provides the plugins, and why not the AOT kernels when the JIT form was used."""
    blocked = record.get("plugins_aot_blocked")
    labels = {
        "library": "libtrimformer_plugins.so",
        "qdp-aot": "Python plugins, AOT Triton kernels in the engine",
        "qdp": "Python plugins, JIT (needs trimformer at run time)",
    }
    label = labels.get(record["plugins"], record["plugins"])
    return f"{label}; not AOT: {blocked}" if blocked and record["plugins"] == "qdp" else label

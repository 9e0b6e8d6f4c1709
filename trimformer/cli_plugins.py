"""``trimformer plugins build``: compile libtrimformer_plugins.so for this machine's TensorRT.

A thin shell over ``trimformer.plugins_build``: shows what was found (TensorRT, cmake, nvcc,
sources), runs CMake with a live status line, and prints the library and the variable to set.
Imports are lazy so that ``--help`` is instant.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

__all__ = ["plugins_command"]

_PROGRESS = re.compile(r"^\[\s*(\d+)%\]\s*(.*)")


@click.group("plugins")
def plugins_command() -> None:
    """The TensorRT plugin library (the fused token-reduction kernels)."""


@plugins_command.command("build")
@click.option(
    "--tensorrt",
    type=click.Path(path_type=Path),
    default=None,
    help="An extracted TensorRT tarball (include/NvInfer.h, lib/libnvinfer.so*); default: "
    "$TENSORRT_ROOT, else the system's (JetPack, libnvinfer-dev).",
)
@click.option(
    "--build-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="CMake build folder (default: plugins/build of the source checkout, where trimformer "
    "finds the library without $TRIMFORMER_PLUGIN_LIB).",
)
@click.option(
    "--cuda-arch",
    "cuda_archs",
    multiple=True,
    metavar="SM",
    help="CUDA architecture to compile for, repeatable: 87 (Orin), 86, 89, 90, or native "
    "(default: 75 80 86 87 89 90).",
)
@click.option(
    "--source",
    type=click.Path(path_type=Path),
    default=None,
    help="The plugins/ folder of a trimformer checkout (default: the one beside this package).",
)
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Parallel jobs.")
def build_plugins_command(
    tensorrt: Path | None,
    build_dir: Path | None,
    cuda_archs: tuple[str, ...],
    source: Path | None,
    jobs: int | None,
) -> None:
    """Find TensorRT, cmake and nvcc, then configure and build the plugin library."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from trimformer.plugins_build import build_plugins, environment_line, plan_build

    plan = plan_build(tensorrt, build_dir, cuda_archs, source)
    console = Console()
    table = Table(title="trimformer plugins build")
    table.add_column("component")
    table.add_column("found")
    trt = plan.tensorrt
    for component, value in (
        (f"TensorRT {trt.version} headers ({trt.origin})", trt.include_dir),
        ("TensorRT library", trt.library),
        ("cmake", plan.cmake),
        ("nvcc", plan.nvcc),
        ("sources", plan.source),
        ("build folder", plan.build_dir),
        ("CUDA architectures", " ".join(plan.cuda_archs) or "75 80 86 87 89 90 (default)"),
    ):
        table.add_row(component, escape(str(value)))
    console.print(table)

    with console.status("configuring", spinner="dots") as status:

        def show(line: str) -> None:
            match = _PROGRESS.match(line)
            if match:
                status.update(f"building {match.group(1)}%: {escape(match.group(2))}")
            elif line.startswith("-- "):
                status.update(f"configuring: {escape(line[3:])}")

        library = build_plugins(plan, show, jobs)
    console.print(f"[green]built[/] {escape(str(library))}", highlight=False)
    console.print(
        f"point trimformer (build, Session, the TensorRT EP) and trtexec at it: "
        f"{escape(environment_line(library))}",
        highlight=False,
        soft_wrap=True,
    )

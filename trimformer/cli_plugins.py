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
    "(cmake >= 3.24). Default: 87 on a Jetson, else 75 80 86 87 89 90.",
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
        ("CUDA architectures", " ".join(plan.cuda_archs)),
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


def _capability(value: str) -> int:
    """A compute capability as an int: 87, 8.7 and sm_87 all give 87."""
    text = value.lower().removeprefix("sm_").replace(".", "")
    if not text.isdigit() or not 50 <= int(text) <= 200:
        raise click.BadParameter(f"{value!r} is not a compute capability; give e.g. 87 (Orin)")
    return int(text)


@plugins_command.command("aot")
@click.argument("bundle", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--cuda-arch",
    "arch",
    required=True,
    metavar="SM",
    help="The target GPU's compute capability: 87 (Jetson Orin), 86, 89 (RTX), 90 (Hopper).",
)
def aot_plugins_command(bundle: Path, arch: str) -> None:
    """Compile a bundle's Triton kernels for a GPU, here, without the GPU or TensorRT.

    Says whether `trimformer build` on that GPU (TensorRT 10.9+, no plugin library) will embed
    the kernels in the engine (the AOT Python plugins), or use the JIT form, and why.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from trimformer.bundle import read_manifest
    from trimformer.plugins_qdp import AotKernel, aot_kernels
    from trimformer.runtime.trt_build import prepared_graph

    capability = _capability(arch)
    manifest = read_manifest(bundle)
    console = Console()
    kernels: dict[tuple[object, ...], tuple[AotKernel, list[str]]] = {}
    with console.status("preparing the graphs", spinner="dots") as status:
        for graph_name, graph in manifest["graphs"].items():
            model, _ = prepared_graph(bundle, graph["file"], ("cleanup", "to-plugins"))

            def show(node: str, graph_name: str = graph_name) -> None:
                status.update(f"compiling for sm_{capability}: {graph_name} / {escape(node)}")

            for kernel in aot_kernels(model, capability, show):
                kernels.setdefault(kernel.key, (kernel, []))[1].append(graph_name)
    table = Table(title=f"Triton kernels of {bundle.name} for sm_{capability}")
    several = len({name for _, graphs in kernels.values() for name in graphs}) > 1
    columns = ["graph"] if several else []
    columns += ["op", "tokens", "C / 2nd C", "attributes", "threads", "shared KiB", "AOT"]
    for column in columns:
        table.add_column(column)
    for kernel, graphs in kernels.values():
        row = [", ".join(graphs)] if several else []
        row += [
            kernel.op,
            str(kernel.tokens),
            f"{kernel.channels} / {kernel.second_channels}",
            " ".join(f"{k}={v}" for k, v in kernel.attrs.items()),
            str(kernel.threads or "-"),
            " ".join(f"{d} {b / 1024:.0f}" for d, b in kernel.shared_bytes.items()) or "-",
            "[green]yes[/]" if kernel.problem is None else f"[red]no[/]: {escape(kernel.problem)}",
        ]
        table.add_row(*row)
    console.print(table)
    blocked = [kernel for kernel, _ in kernels.values() if kernel.problem is not None]
    if not blocked:
        console.print(
            f"trimformer build on an sm_{capability} GPU with TensorRT 10.9+ and no plugin "
            "library embeds these kernels in the engines (no Python needed to run them)"
        )
        return
    console.print(
        f"trimformer build on sm_{capability} without the plugin library uses the JIT Python "
        f"plugins: {escape(blocked[0].op)} at node {escape(blocked[0].node)}: "
        f"{escape(str(blocked[0].problem))}",
        soft_wrap=True,
    )
    raise SystemExit(1)

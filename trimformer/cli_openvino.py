"""``trimformer openvino build`` / ``status``: trimformer's fused OpenVINO ops.

``build`` compiles the C++ extension against the installed openvino wheel into the user cache
(``--backend openvino`` also builds it on first use); ``status`` says whether it is built and
which ops it fuses. Imports are lazy so that ``--help`` is instant.
"""

from __future__ import annotations

import click

__all__ = ["openvino_command"]


@click.group("openvino")
def openvino_command() -> None:
    """trimformer's fused ops for OpenVINO (pip install 'trimformer[openvino]')."""


@openvino_command.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if the library is built.")
def build_command(force: bool) -> None:
    """Compile the fused ops (cmake + a C++17 compiler) into the user cache."""
    from rich.console import Console

    from trimformer.runtime.openvino_backend import import_openvino

    import_openvino()
    from trimformer.runtime.openvino_ext import FUSED_OPS, build_library

    with Console(stderr=True).status("building trimformer's OpenVINO ops"):
        path = build_library(force=force)
    ops = ", ".join(f"{name} v{version}" for name, version in FUSED_OPS.items())
    Console().print(f"built {path} ({ops})", highlight=False, soft_wrap=True)


@openvino_command.command("status")
def status_command() -> None:
    """Say whether the fused ops are built, where, and which ops they fuse."""
    from rich.console import Console

    from trimformer.runtime.openvino_backend import import_openvino

    import_openvino()
    from trimformer.runtime.openvino_ext import library_status

    built, detail, fix = library_status()
    line = f"fused ops: {detail}" + ("" if built else f"; {fix}")
    Console().print(line, highlight=False, soft_wrap=True)

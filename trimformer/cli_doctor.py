"""``trimformer doctor``: a table of the backends, GPUs, CUDA, TensorRT and plugins found here.

Each missing component says why and how to get it; the command always exits 0 (it reports, it
does not judge). Imports are lazy so that ``--help`` is instant.
"""

from __future__ import annotations

import click

__all__ = ["doctor_command"]


@click.command("doctor")
def doctor_command() -> None:
    """Show which backends, devices and plugins this machine has, and how to get the rest."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from trimformer.runtime.doctor import diagnose

    findings = diagnose()
    table = Table(title="trimformer doctor")
    table.add_column("component")
    table.add_column("status")
    table.add_column("found")
    table.add_column("how to get it")
    for finding in findings:
        status = "[green]ok[/]" if finding.ok else "[yellow]missing[/]"
        table.add_row(finding.component, status, escape(finding.detail), escape(finding.fix))
    console = Console()
    console.print(table)
    usable = [f.component for f in findings if f.ok]
    console.print(f"{len(usable)} of {len(findings)} components usable", highlight=False)

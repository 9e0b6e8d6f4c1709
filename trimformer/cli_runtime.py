"""The ``--backend`` / ``--precision`` / ``--device`` flags that run, bench, eval, sweep and
tune share, turned into one ``RuntimeOptions`` (imports only click at import time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from trimformer.runtime.options import RuntimeOptions

__all__ = ["runtime_choice", "runtime_options"]

F = TypeVar("F", bound=Callable[..., Any])


def runtime_options(command: F) -> F:
    """Add the runtime flags to a click command (its function takes backend, precision and
    device)."""
    command = click.option(
        "--device",
        default=None,
        help="OpenVINO device: CPU (default), GPU or NPU where this OpenVINO finds them.",
    )(command)
    command = click.option(
        "--precision",
        type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
        default="fp32",
        show_default=True,
        help="bf16 / fp16: OpenVINO's inference precision (bf16: AMX / AVX512-BF16 CPUs; fp16: "
        "iGPU, NPU); int8: the graphs `trimformer quantize` added for this backend. Reductions "
        "match and rank in fp32.",
    )(command)
    return click.option(
        "--backend",
        type=click.Choice(["ort", "openvino"]),
        default="ort",
        show_default=True,
        help="ONNX Runtime, or OpenVINO (pip install 'trimformer[openvino]').",
    )(command)


def runtime_choice(backend: str, precision: str, device: str | None) -> RuntimeOptions:
    """The flags' values as one RuntimeOptions (a UsageError where they do not fit)."""
    from trimformer.runtime.options import RuntimeOptions

    return RuntimeOptions(backend=backend, precision=precision, device=device)

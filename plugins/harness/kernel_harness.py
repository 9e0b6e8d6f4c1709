"""Expose the plugin kernels to torch through a small ctypes library, for tests and benchmarks.

``build_library`` compiles ``harness.cu`` with the kernels into one shared library (nvcc, CUDA
runtime linked statically, so loading it needs no GPU). ``KernelHarness.run`` calls a kernel on
torch tensors: CUDA tensors launch the real kernel on the current stream; CPU tensors run the
same phases through the host emulation, which is how the kernels' logic is tested on machines
without a GPU. Outputs are allocated poisoned with NaN, so an element a kernel forgets to write
fails the comparison. ``config.yaml`` beside the plugins holds the dtype/attribute matrix.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from trimformer.ops import get_op
from trimformer.ops.common import output_buffers

__all__ = [
    "PLUGINS_DIR",
    "TOLERANCES",
    "KernelCase",
    "KernelHarness",
    "build_library",
    "kernel_sources",
    "load_matrix",
    "make_inputs",
    "reference",
]

PLUGINS_DIR = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "float16": torch.float16}
_KERNEL_DTYPE = {torch.float32: 0, torch.float16: 1}  # trimformer::KernelDType
TOLERANCES = {torch.float32: 1e-4, torch.float16: 1e-2}
"""atol = rtol per dtype against the torch face run in float32 on the same (upcast) inputs."""

_ENTRY = {
    "BipartiteMerge": "trimformer_bipartite_merge",
    "TopKSelect": "trimformer_topk_select",
    "DiverseSelect": "trimformer_diverse_select",
}
_SIZE_KEYS = ("batch", "tokens", "channels", "metric_channels", "feature_channels")
_INPUT_KEYS = ("ties", "equal")


@dataclass(frozen=True)
class KernelCase:
    """One entry of the matrix: an op, a dtype, the input sizes and the op's attributes."""

    op: str
    dtype: torch.dtype
    sizes: Mapping[str, int]
    attrs: Mapping[str, int]
    ties: bool = False
    equal: bool = False

    @property
    def label(self) -> str:
        attrs = ",".join(f"{k}={v}" for k, v in self.attrs.items())
        ties = ",ties" if self.ties else ""
        ties += ",equal" if self.equal else ""
        dims = "x".join(str(self.sizes[k]) for k in ("batch", "tokens", "channels"))
        return f"{self.op}[{str(self.dtype).removeprefix('torch.')},{dims},{attrs}{ties}]"


def kernel_sources() -> list[Path]:
    """Every plugin kernel source, ``plugins/<op>/<op>_kernel.cu``."""
    return sorted(PLUGINS_DIR.glob("*/*_kernel.cu"))


def load_matrix(path: Path = PLUGINS_DIR / "config.yaml") -> list[KernelCase]:
    """The dtype x case matrix of every plugin in ``config.yaml``, attributes checked by the op."""
    data = yaml.safe_load(path.read_text())
    cases = []
    for op_name, entry in data.items():
        spec = get_op(op_name)
        for dtype in entry["dtypes"]:
            for case in entry["cases"]:
                attrs = {a.name: case[a.name] for a in spec.attributes}
                unknown = set(case) - set(attrs) - set(_SIZE_KEYS) - set(_INPUT_KEYS)
                if unknown:
                    raise ValueError(f"{path}: {op_name} case {case}: unknown keys {unknown}")
                spec.validate(attrs, case["tokens"])
                sizes = {k: case[k] for k in _SIZE_KEYS if k in case}
                flags = {k: case.get(k, False) for k in _INPUT_KEYS}
                cases.append(KernelCase(op_name, DTYPES[dtype], sizes, attrs, **flags))
    return cases


def device_arch() -> str:
    """The current GPU's architecture as nvcc names it (sm_90), rather than relying on nvcc's
    own detection (-arch=native)."""
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def build_library(out_dir: Path, arch: str | None = None, nvcc: str = "nvcc") -> Path:
    """Compile the harness and every kernel into ``out_dir/libtrimformer_harness.so``."""
    if shutil.which(nvcc) is None:
        raise FileNotFoundError(f"{nvcc} is not on PATH; install the CUDA toolkit")
    out = Path(out_dir) / "libtrimformer_harness.so"
    command = [nvcc, "-shared", "-Xcompiler", "-fPIC", "-std=c++17", "-O2", "-o", str(out)]
    command += [f"-arch={arch}"] if arch else []
    command += [str(PLUGINS_DIR / "harness" / "harness.cu"), *map(str, kernel_sources())]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed building the harness:\n{result.stderr}")
    return out


def _axes(b: int, n: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    """Signed, power-of-two-scaled axes: cosine similarities exactly -1, 0 or 1 (exact ties)."""
    axis = torch.randint(0, min(channels, 3), (b, n), generator=generator)
    scale = 2.0 ** torch.randint(-2, 3, (b, n, 1), generator=generator)
    sign = torch.randint(0, 2, (b, n, 1), generator=generator) * 2 - 1
    return torch.nn.functional.one_hot(axis, channels).float() * scale * sign


def make_inputs(case: KernelCase, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random CPU inputs for ``case`` in its dtype; with ``ties`` drawn from small pools, with
    ``equal`` every token's features of one direction (every similarity exactly 1)."""
    b, n, c = case.sizes["batch"], case.sizes["tokens"], case.sizes["channels"]
    x = torch.randn(b, n, c, generator=generator)
    size = torch.randint(1, 5, (b, n, 1), generator=generator).float()
    if case.op in ("BipartiteMerge", "DiverseSelect"):
        cm = case.sizes["metric_channels" if case.op == "BipartiteMerge" else "feature_channels"]
        if case.equal:
            scale = 2.0 ** torch.randint(-2, 3, (b, n, 1), generator=generator)
            second = torch.nn.functional.one_hot(torch.zeros(b, n, dtype=torch.long), cm) * scale
        elif case.ties:
            second = _axes(b, n, cm, generator)
        else:
            second = torch.randn(b, n, cm, generator=generator)
    elif case.ties:
        second = torch.randint(0, 4, (b, n), generator=generator).float() / 4
    else:
        second = torch.rand(b, n, generator=generator)
    return tuple(t.to(case.dtype) for t in (x, second, size))


def reference(case: KernelCase, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The op's torch face in float32 on CPU copies of ``inputs``."""
    spec = get_op(case.op)
    tensors = [t.detach().float().cpu() for t in inputs]
    return tuple(spec.torch_op(*tensors, *(case.attrs[a.name] for a in spec.attributes)))


class KernelHarness:
    """The compiled harness library: run an op's kernel (CUDA tensors) or its host emulation."""

    def __init__(self, library: Path) -> None:
        self._lib = ctypes.CDLL(str(library))
        for symbol in _ENTRY.values():
            fn = getattr(self._lib, symbol)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int32)]
            fn.argtypes += [ctypes.c_void_p] * 6 + [ctypes.c_int]
        self._lib.trimformer_error_name.restype = ctypes.c_char_p
        self._lib.trimformer_error_name.argtypes = [ctypes.c_int]

    def run(
        self,
        op_name: str,
        inputs: Sequence[torch.Tensor],
        attrs: Mapping[str, Any],
        lanes: int = 7,
        poison: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs (x_out, size_out) of ``op_name`` on ``inputs`` (contiguous, one dtype).

        CUDA inputs run the kernel on torch's current stream; CPU inputs run the host emulation
        with ``lanes`` simulated threads per phase. Outputs start as NaN (``poison``) so an
        element never written shows; timing turns that off.
        """
        spec = get_op(op_name)
        x, second, size = (t.contiguous() for t in inputs)
        if len({x.dtype, second.dtype, size.dtype}) != 1 or x.dtype not in _KERNEL_DTYPE:
            raise TypeError(f"{op_name}: inputs must all be float32 or all float16")
        b, n, c = x.shape
        spec.validate(dict(attrs), n)
        m = spec.output_tokens(n, attrs)
        x_out, size_out = output_buffers(x, m, poison)
        if op_name == "BipartiteMerge":
            params = (b, n, c, second.shape[-1], attrs["r"], attrs["protected"])
        elif op_name == "DiverseSelect":
            params = (b, n, c, second.shape[-1], attrs["k"], attrs["protected"])
        else:
            params = (b, n, c, attrs["k"], attrs["protected"], attrs["fuse"])
        device = x.is_cuda
        stream = torch.cuda.current_stream(x.device).cuda_stream if device else None
        tensors = (x, second, size, x_out, size_out)
        code = getattr(self._lib, _ENTRY[op_name])(
            int(device),
            _KERNEL_DTYPE[x.dtype],
            (ctypes.c_int32 * 6)(*params),
            *(t.data_ptr() for t in tensors),
            stream,
            lanes,
        )
        if code != 0:
            name = self._lib.trimformer_error_name(code).decode()
            raise RuntimeError(f"{op_name} kernel failed: {name}")
        return x_out, size_out

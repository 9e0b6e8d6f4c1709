"""Plan, launch and ahead-of-time compile the trimformer Triton kernels.

Every kernel has one signature, which is also the one TensorRT's AOT plugins call (inputs, then
the int32 scalars, then outputs): ``(x, second, size, batch, x_out, size_out, **constexprs)``,
one program per batch item. Shapes and attributes are compile-time constants (the token count
must be static anyway), so each engine gets kernels specialised to its layer shapes.

- ``kernel_plan`` picks the constexprs (block sizes from the token and channel counts);
- ``launch`` runs a plan on torch tensors: CUDA tensors run the compiled kernel on the current
  stream; with ``TRITON_INTERPRET=1`` set before import, CPU tensors run Triton's interpreter
  (numpy), which is how the kernels' logic is tested on machines without a GPU;
- ``compile_plan`` compiles a plan for a GPU target without needing one (PTX and cubin).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.interpreter import InterpretedFunction

from trimformer.graph_passes.base import PLUGIN_MAX_TOKENS
from trimformer.ops import get_op
from trimformer.ops.common import output_buffers
from trimformer.triton_kernels.bipartite_merge import bipartite_merge_kernel
from trimformer.triton_kernels.diverse_select import diverse_select_kernel
from trimformer.triton_kernels.topk_select import topk_select_kernel

__all__ = [
    "MAX_TOKENS",
    "SHARED_MEMORY_LIMIT",
    "CompiledKernel",
    "KernelPlan",
    "KernelPlanError",
    "compile_plan",
    "kernel_plan",
    "launch",
    "plan_for",
    "run_op",
]

MAX_TOKENS = PLUGIN_MAX_TOKENS
"""Largest token count a kernel takes: its per-token state lives in one program's registers."""

SHARED_MEMORY_LIMIT = 48 * 1024
"""Shared memory a kernel may use: what every CUDA GPU grants a launch without an opt-in
attribute; TensorRT's AOT launch parameters carry only a size, so no more is assumed."""

_KERNELS = {
    "BipartiteMerge": bipartite_merge_kernel,
    "TopKSelect": topk_select_kernel,
    "DiverseSelect": diverse_select_kernel,
}
_POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16"}
_RUNTIME_ARGS = ("x", "second", "size", "batch", "x_out", "size_out")
_COMPILE_OPTIONS = {"num_stages": 1}
"""No software pipelining: one program per batch item gains little from it, and its double
buffers tripled BipartiteMerge's shared memory in float32 (78 vs 28 KiB at 197 tokens)."""
_TILE = 16  # the smallest tile tl.dot accepts, and the column tile of pairwise comparisons


class KernelPlanError(ValueError):
    """The kernel cannot run this shape (the op's own limits are checked by its spec)."""


def _block(n: int) -> int:
    return max(triton.next_power_of_2(max(n, 1)), _TILE)


@dataclass(frozen=True)
class KernelPlan:
    """One kernel specialised to an op's shapes and attributes."""

    op: str
    tokens: int
    output_tokens: int
    constexprs: Mapping[str, int]
    num_warps: int

    @property
    def kernel(self) -> Any:
        return _KERNELS[self.op]


def kernel_plan(
    op: str, tokens: int, channels: int, second_channels: int, attrs: Mapping[str, int]
) -> KernelPlan:
    """The kernel plan of ``op`` for x [B,tokens,channels] and a second input (metric or
    features) of ``second_channels`` channels; TopKSelect's scores take any value here."""
    spec = get_op(op)
    spec.validate(dict(attrs), tokens)
    if op not in _KERNELS:
        raise KernelPlanError(f"{op} has no Triton kernel (kernels: {', '.join(_KERNELS)})")
    if tokens > MAX_TOKENS:
        raise KernelPlanError(
            f"{op}: {tokens} tokens exceed the kernels' {MAX_TOKENS} (Triton's and the plugin "
            "library's alike); only the Python plugins' JIT form (the op's torch code) runs it"
        )
    unprotected = tokens - attrs["protected"]
    # The per-token vectors span BLOCK_A (merge's set A) or BLOCK_T (all unprotected tokens);
    # [width, channel tile] tiles of token rows live in registers, so wide kernels get more warps
    # and a narrower channel tile. Checked with ptxas -v on sm_87 (DeiT-S shapes, 577 tokens):
    # no register spills except ~120 bytes for DiverseSelect at 577 tokens.
    width = _block((unprotected + 1) // 2 if op == "BipartiteMerge" else unprotected)
    wide = width >= 512
    tile = _TILE if wide else 2 * _TILE
    shape = {"N": tokens, "C": channels, "P": attrs["protected"]}
    blocks = {"BLOCK_J": _TILE, "BLOCK_C": min(_block(channels), tile)}
    if op != "TopKSelect":
        blocks["BLOCK_I"] = _TILE
    if op == "BipartiteMerge":
        extra = {"CM": second_channels, "R": attrs["r"], "BLOCK_A": width}
        extra["BLOCK_CM"] = min(_block(second_channels), tile)
        extra["BLOCK_K"] = min(width, 64)  # the merge's tl.dot takes A in chunks
    elif op == "DiverseSelect":
        extra = {"CF": second_channels, "K": attrs["k"], "BLOCK_T": width}
        extra["BLOCK_CF"] = min(_block(second_channels), tile)
    else:
        extra = {"K": attrs["k"], "FUSE": attrs["fuse"], "BLOCK_T": width}
    constexprs = {**shape, **extra, **blocks}
    output_tokens = spec.output_tokens(tokens, attrs)
    return KernelPlan(op, tokens, output_tokens, constexprs, 16 if wide else 8)


def launch(
    plan: KernelPlan, inputs: Sequence[torch.Tensor], poison: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``plan`` on (x, second, size): CUDA tensors on the GPU, CPU tensors interpreted.

    Outputs are allocated poisoned with NaN (``poison``), so an element the kernel forgets to
    write shows; timing turns that off, as it costs two fill kernels per call.
    """
    x, second, size = (t.contiguous() for t in inputs)
    if len({x.dtype, second.dtype, size.dtype}) != 1 or x.dtype not in _POINTER_TYPES:
        raise TypeError(f"{plan.op}: inputs must all be float32 or all float16")
    batch, tokens, channels = x.shape
    if tokens != plan.tokens or channels != plan.constexprs["C"]:
        raise KernelPlanError(f"{plan.op}: the plan is for {plan.tokens} tokens, got {tokens}")
    x_out, size_out = output_buffers(x, plan.output_tokens, poison)
    interpreted = isinstance(plan.kernel, InterpretedFunction)
    if x.is_cuda == interpreted:
        raise KernelPlanError(
            f"{plan.op}: {'CUDA' if x.is_cuda else 'CPU'} tensors need TRITON_INTERPRET="
            f"{'0' if x.is_cuda else '1'} in the environment before trimformer.triton_kernels "
            "is imported (Triton's interpreter runs CPU tensors, the GPU runs CUDA ones)"
        )
    options = {} if interpreted else _COMPILE_OPTIONS | {"num_warps": plan.num_warps}
    plan.kernel[(batch,)](x, second, size, batch, x_out, size_out, **plan.constexprs, **options)
    return x_out, size_out


def plan_for(op: str, inputs: Sequence[torch.Tensor], attrs: Mapping[str, int]) -> KernelPlan:
    """The plan of ``op`` for the shapes of (x, second, size)."""
    x, second = inputs[0], inputs[1]
    second_channels = second.shape[-1] if second.dim() == 3 else 1  # TopKSelect's scores: [B,N]
    return kernel_plan(op, x.shape[1], x.shape[2], second_channels, attrs)


def run_op(
    op: str, inputs: Sequence[torch.Tensor], attrs: Mapping[str, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plan ``op`` for the shapes of (x, second, size) and run it (see ``launch``)."""
    return launch(plan_for(op, inputs, attrs), inputs)


@dataclass(frozen=True)
class CompiledKernel:
    """A plan compiled for one GPU: what a TensorRT AOT plugin hands to TensorRT."""

    name: str
    ptx: str
    cubin: bytes
    threads: int
    shared_bytes: int


def compile_plan(plan: KernelPlan, dtype: torch.dtype, capability: int) -> CompiledKernel:
    """Compile ``plan`` for tensors of ``dtype`` on a GPU of compute capability ``capability``
    (e.g. 87 for Jetson Orin, 90 for Hopper); needs no GPU, only Triton's bundled ptxas."""
    pointer = _POINTER_TYPES[dtype]
    runtime_args = plan.kernel.arg_names[: len(_RUNTIME_ARGS)]
    signature = {
        name: "i32" if role == "batch" else pointer
        for name, role in zip(runtime_args, _RUNTIME_ARGS, strict=True)
    }
    signature.update({name: "constexpr" for name in plan.constexprs})
    source = triton.compiler.ASTSource(
        fn=plan.kernel, signature=signature, constexprs=dict(plan.constexprs)
    )
    options = _COMPILE_OPTIONS | {"num_warps": plan.num_warps}
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    metadata = compiled.metadata
    if getattr(metadata, "global_scratch_size", 0) or getattr(metadata, "profile_scratch_size", 0):
        raise KernelPlanError(
            f"{plan.op}: the compiled kernel needs Triton scratch memory, which TensorRT's AOT "
            "plugins do not pass; use the plugin library"
        )
    if metadata.shared > SHARED_MEMORY_LIMIT:
        raise KernelPlanError(
            f"{plan.op}: the Triton kernel for {plan.tokens} tokens needs {metadata.shared} bytes "
            f"of shared memory, over the {SHARED_MEMORY_LIMIT} every GPU grants; use the plugin "
            "library (trimformer plugins build) or the JIT form"
        )
    return CompiledKernel(
        metadata.name,
        compiled.asm["ptx"],
        compiled.asm["cubin"],
        metadata.num_warps * 32,
        metadata.shared,
    )

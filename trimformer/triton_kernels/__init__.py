"""The reduction ops as Triton kernels: the kernels of the plugins' ahead-of-time Python form.

TensorRT >= 10.9 embeds an AOT-compiled kernel in the engine (``tensorrt.plugin.aot_impl``), so
an engine built with these runs without Python or the plugin library. ``launch`` runs them on
torch tensors (GPU, or Triton's interpreter on CPU); ``compile_plan`` compiles them for a GPU
target on any machine. Needs ``triton`` (shipped with torch's CUDA wheels on Linux).
"""

from trimformer.triton_kernels.runner import (
    MAX_TOKENS,
    SHARED_MEMORY_LIMIT,
    CompiledKernel,
    KernelPlan,
    KernelPlanError,
    compile_plan,
    kernel_plan,
    launch,
    plan_for,
    run_op,
)

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

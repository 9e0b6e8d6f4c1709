"""Execution-provider lists for the ONNX Runtime ``Session``: CUDA, and TensorRT with our plugins.

Pass the result as ``providers=`` to ``trimformer.runtime.Session`` / ``load``. The TensorRT EP
gets the plugin library through ``trt_extra_plugin_lib_paths``, so a graph rewritten by the
``to-plugins`` pass (``trt.plugins`` nodes) runs our kernels; the bundle's own ``model.onnx``
(function calls) runs there too, the calls inlined by TensorRT's parser. Each list falls back to
CUDA, then CPU, for nodes the first provider does not take.
"""

from __future__ import annotations

from pathlib import Path

from trimformer.errors import UsageError
from trimformer.runtime.session import Provider

__all__ = ["EP_BACKENDS", "execution_providers"]

EP_BACKENDS = ("cpu", "cuda", "tensorrt")


def execution_providers(
    backend: str,
    device_id: int = 0,
    plugin_library: Path | None = None,
    fp16: bool = False,
    engine_cache: Path | None = None,
) -> list[Provider]:
    """The provider list for ``backend`` (cpu, cuda or tensorrt).

    For tensorrt, ``plugin_library`` defaults to ``find_plugin_library()``; ``fp16`` enables the
    EP's FP16 mode; ``engine_cache`` makes it keep built engines in that folder.
    """
    if backend not in EP_BACKENDS:
        raise UsageError(f"backend {backend!r} is not one of {', '.join(EP_BACKENDS)}")
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise UsageError(f"device_id must be a non-negative integer, got {device_id!r}")
    cpu: list[Provider] = ["CPUExecutionProvider"]
    if backend == "cpu":
        return cpu
    cuda: list[Provider] = [("CUDAExecutionProvider", {"device_id": str(device_id)})]
    if backend == "cuda":
        return cuda + cpu
    from trimformer.runtime.trt_env import find_plugin_library

    options = {
        "device_id": str(device_id),
        "trt_extra_plugin_lib_paths": str(find_plugin_library(plugin_library)),
        "trt_fp16_enable": "True" if fp16 else "False",
    }
    if engine_cache is not None:
        options["trt_engine_cache_enable"] = "True"
        options["trt_engine_cache_path"] = str(engine_cache)
    return [("TensorrtExecutionProvider", options), *cuda, *cpu]

"""Execution-provider lists for the ONNX Runtime ``Session``: CPU, CUDA, and TensorRT.

Pass the result as ``providers=`` to ``trimformer.runtime.Session`` / ``load``. Each list falls
back to CUDA, then CPU, for nodes the first provider does not take. ONNX Runtime's TensorRT
provider runs the bundle's own graphs: their trimformer function calls are expanded into
standard ONNX ops (by ONNX Runtime or TensorRT's parser), which TensorRT fuses as it can. Our
plugin library cannot serve there: the provider lists the creators it maps ``trt.plugins`` nodes
to with ``getPluginCreatorList``, which returns IPluginCreator (V2) creators only, and ours are
IPluginCreatorV3One. For the plugins' kernels, build an engine (``trimformer build``) and run it
with ``load_engine``.
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
    fp16: bool = False,
    engine_cache: Path | None = None,
) -> list[Provider]:
    """The provider list for ``backend`` (cpu, cuda or tensorrt).

    For tensorrt, ``fp16`` enables the provider's FP16 mode and ``engine_cache`` makes it keep
    the engines it builds in that folder (building takes minutes: keep them).
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
    options = {
        "device_id": str(device_id),
        "trt_fp16_enable": "True" if fp16 else "False",
    }
    if engine_cache is not None:
        options["trt_engine_cache_enable"] = "True"
        options["trt_engine_cache_path"] = str(engine_cache)
    return [("TensorrtExecutionProvider", options), *cuda, *cpu]

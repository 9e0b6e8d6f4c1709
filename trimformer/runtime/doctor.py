"""What this machine can run: backends (ONNX Runtime, OpenVINO), GPUs, CUDA, TensorRT, the
plugins and OpenVINO's fused ops.

``diagnose()`` returns one ``Finding`` per component, each saying what was found or, when it is
missing, why and how to get it. Every probe is lazy and contained: a missing or broken component
is a finding, never an exception, so ``trimformer doctor`` always completes.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from trimformer.errors import UsageError

__all__ = ["Finding", "diagnose"]


@dataclass(frozen=True)
class Finding:
    """One component: whether it is usable, what was found, and the fix when it is not."""

    component: str
    ok: bool
    detail: str
    fix: str = ""


def _run(command: list[str]) -> str | None:
    """A command's stdout, or None when it is missing, fails or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def _onnxruntime() -> list[Finding]:
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError as exc:
        return [Finding("onnxruntime", False, str(exc), "pip install onnxruntime")]
    providers = ort.get_available_providers()
    findings = [
        Finding("onnxruntime", True, f"{ort.__version__}; providers {', '.join(providers)}")
    ]
    gpu_fix = (
        "pip install onnxruntime-gpu in place of onnxruntime, on a machine with an NVIDIA driver"
    )
    for provider, label in (
        ("CUDAExecutionProvider", "onnxruntime CUDA EP"),
        ("TensorrtExecutionProvider", "onnxruntime TensorRT EP"),
    ):
        present = provider in providers
        fix = "" if present else f"not in this onnxruntime build; {gpu_fix}"
        if provider.startswith("Tensorrt") and not present:
            fix += " (the TensorRT EP also needs TensorRT's libraries on the library path)"
        findings.append(Finding(label, present, "available" if present else "missing", fix))
    return findings


def _openvino() -> list[Finding]:
    try:
        openvino = importlib.import_module("openvino")
    except ImportError:
        return [Finding("OpenVINO", False, "missing", "pip install 'trimformer[openvino]'")]
    core = openvino.Core()
    devices = core.available_devices
    findings = [Finding("OpenVINO", True, f"{openvino.__version__}; devices {', '.join(devices)}")]
    if "CPU" in devices:
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        for precision, hardware in (("BF16", "AMX or AVX512-BF16"), ("INT8", "VNNI")):
            present = precision in capabilities
            fix = "" if present else f"this CPU lacks {hardware}; use --precision fp32"
            detail = "available" if present else "missing"
            findings.append(Finding(f"OpenVINO CPU {precision.lower()}", present, detail, fix))
    from trimformer.runtime.openvino_ext import library_status

    built, detail, fix = library_status()
    findings.append(Finding("OpenVINO fused ops (trimformer openvino build)", built, detail, fix))
    return findings


def _tensorrt() -> list[Finding]:
    from trimformer.runtime.trt_env import TensorRTMissing, TrtVersion, import_tensorrt

    try:
        trt = import_tensorrt()
    except TensorRTMissing as exc:
        message = str(exc)
        return [
            Finding("TensorRT (Python)", False, message.split(";")[0], message.split("; ", 1)[-1]),
            Finding("TensorRT Python plugins (QDP)", False, "missing", "comes with TensorRT 10.6+"),
        ]
    version = TrtVersion.parse(trt.__version__)
    typing = "strongly typed only" if version.strongly_typed_only else "weak typing available"
    qdp_fix = "" if version.has_qdp else "upgrade TensorRT to 10.6+ or build the plugin library"
    aot = ", AOT" if version.has_aot_qdp else ""
    return [
        Finding("TensorRT (Python)", True, f"{trt.__version__} ({typing})"),
        Finding(
            "TensorRT Python plugins (QDP)",
            version.has_qdp,
            f"tensorrt.plugin (JIT{aot})" if version.has_qdp else "missing",
            qdp_fix,
        ),
    ]


def _triton() -> Finding:
    """Triton compiles the plugins' AOT kernels (TensorRT 10.9+), for any GPU, without one."""
    label = "Triton (AOT plugin kernels)"
    try:
        import triton
    except ImportError as exc:
        return Finding(
            label,
            False,
            f"missing ({exc})",
            "pip install triton (comes with "
            "torch's CUDA wheels on Linux); without it, builds use the JIT form",
        )
    return Finding(label, True, f"triton {triton.__version__}")


def _nvcc() -> Finding:
    """nvcc where ``trimformer plugins build`` looks for it (PATH, $CUDA_HOME, JetPack's
    /usr/local/cuda/bin)."""
    from trimformer.runtime.trt_env import find_cuda_compiler

    label = "CUDA toolkit (nvcc)"
    try:
        nvcc = find_cuda_compiler()
    except UsageError:
        fix = "install the CUDA toolkit (JetPack includes it) to build the plugin library"
        return Finding(label, False, "nvcc not found", fix)
    output = _run([str(nvcc), "--version"]) or ""
    match = re.search(r"release ([\d.]+)", output)
    return Finding(label, True, f"CUDA {match[1] if match else '?'} ({nvcc})")


def _gpus() -> Finding:
    output = _run(
        ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]
    )
    if output and output.strip():
        gpus = [
            ", ".join(p.strip() for p in line.split(",")) for line in output.strip().splitlines()
        ]
        return Finding("NVIDIA GPU", True, "; ".join(gpus))
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        names = []
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            names.append(f"{torch.cuda.get_device_name(i)} ({major}.{minor})")
        return Finding("NVIDIA GPU", True, "; ".join(names))
    return Finding(
        "NVIDIA GPU",
        False,
        "none visible (nvidia-smi absent or failing, torch.cuda unavailable)",
        "run on a machine with an NVIDIA GPU and driver (Jetson: JetPack); CPUs use cpu-ort",
    )


def _plugin_library() -> Finding:
    from trimformer.errors import UsageError
    from trimformer.runtime.trt_env import find_plugin_library

    try:
        return Finding("plugin library", True, str(find_plugin_library()))
    except UsageError as exc:
        return Finding(
            "plugin library",
            False,
            "libtrimformer_plugins.so not found",
            str(exc).split("; ", 1)[-1],
        )


def _power_mode() -> list[Finding]:
    from trimformer.runtime.trt_env import jetson_power_mode

    mode = jetson_power_mode()
    return [] if mode is None else [Finding("Jetson power mode", True, mode)]


_PROBES: tuple[Callable[[], Finding | list[Finding]], ...] = (
    _onnxruntime,
    _openvino,
    _tensorrt,
    _triton,
    _nvcc,
    _gpus,
    _plugin_library,
    _power_mode,
)


def diagnose() -> list[Finding]:
    """Probe every component; a probe that fails unexpectedly becomes a finding too."""
    findings: list[Finding] = []
    for probe in _PROBES:
        try:
            result = probe()
        except Exception as exc:  # a broken install must not stop the report
            name = probe.__name__.strip("_").replace("_", " ")
            result = Finding(name, False, f"probe failed: {type(exc).__name__}: {exc}", "")
        findings.extend(result if isinstance(result, list) else [result])
    return findings

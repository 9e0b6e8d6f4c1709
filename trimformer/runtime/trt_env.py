"""What the TensorRT path needs from its environment, found lazily and explained when missing.

``import_tensorrt`` imports the TensorRT Python package only when a TensorRT feature is used (a
namespace package left by ``tensorrt-stubs`` alone is not TensorRT). ``find_plugin_library``
locates ``libtrimformer_plugins.so`` and ``load_plugin_library`` loads it (once per process);
``gpu_identity`` names the GPU an engine is built for or run
on; ``jetson_power_mode`` reads the power mode a Jetson runs at. Nothing here imports TensorRT,
torch or CUDA at module import time.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from trimformer.errors import RuntimeFailure, UsageError

__all__ = [
    "CUDA_BIN_DIRS",
    "PLUGIN_LIBRARY",
    "PLUGIN_LIBRARY_ENV",
    "GpuIdentity",
    "TensorRTMissing",
    "TrtVersion",
    "find_cuda_compiler",
    "find_plugin_library",
    "gpu_identity",
    "import_tensorrt",
    "jetson_power_mode",
    "load_plugin_library",
    "parse_power_mode",
    "plugin_library_candidates",
    "tensorrt_logger",
    "tensorrt_version",
]

PLUGIN_LIBRARY = "libtrimformer_plugins.so"
CUDA_BIN_DIRS = (Path("/usr/local/cuda/bin"),)  # JetPack's nvcc, not on PATH by default
PLUGIN_LIBRARY_ENV = "TRIMFORMER_PLUGIN_LIB"
_INSTALL_HINT = (
    "install TensorRT 10 or 11 with its Python bindings (JetPack ships them; on a desktop "
    "pip install tensorrt)"
)


class TensorRTMissing(UsageError):
    """TensorRT's Python package cannot be imported here; the message says how to get it."""


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version; engines are tied to major.minor.patch."""

    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        match = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
        if match is None:
            raise ValueError(f"{text!r} is not a TensorRT version")
        return cls(int(match[1]), int(match[2]), int(match[3] or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def strongly_typed_only(self) -> bool:
        """TensorRT 11 removed weak typing: precision is decided in the ONNX graph."""
        return self.major >= 11

    @property
    def has_qdp(self) -> bool:
        """``tensorrt.plugin`` (quickly deployable plugins) exists from TensorRT 10.6."""
        return (self.major, self.minor) >= (10, 6)

    @property
    def has_aot_qdp(self) -> bool:
        """Ahead-of-time QDP implementations (``tensorrt.plugin.aot_impl``) from 10.9."""
        return (self.major, self.minor) >= (10, 9)


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or TensorRTMissing saying why it is unusable and how to fix it."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTMissing(f"TensorRT cannot be imported ({exc}); {_INSTALL_HINT}") from None
    except OSError as exc:  # the bindings import but libnvinfer is missing or broken
        raise TensorRTMissing(
            f"TensorRT's libraries cannot be loaded ({exc}); {_INSTALL_HINT}"
        ) from None
    if not hasattr(trt, "Builder") or not hasattr(trt, "__version__"):
        raise TensorRTMissing(
            f"the installed 'tensorrt' package has no bindings (type stubs only?); {_INSTALL_HINT}"
        )
    return trt


def tensorrt_version() -> TrtVersion:
    """The importable TensorRT's version."""
    return TrtVersion.parse(import_tensorrt().__version__)


def plugin_library_candidates() -> list[Path]:
    """Where ``find_plugin_library`` looks, in order: $TRIMFORMER_PLUGIN_LIB, then the CMake
    build folder of a source checkout, then beside the installed package."""
    package = Path(__file__).resolve().parents[1]
    candidates = (
        [Path(os.environ[PLUGIN_LIBRARY_ENV])] if os.environ.get(PLUGIN_LIBRARY_ENV) else []
    )
    candidates.append(package.parent / "plugins" / "build" / PLUGIN_LIBRARY)
    candidates.append(package / "lib" / PLUGIN_LIBRARY)
    return candidates


def find_plugin_library(explicit: Path | None = None) -> Path:
    """The plugin library to load: ``explicit`` when given, else the first candidate found."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise UsageError(
                f"plugin library {explicit} does not exist; build it (see plugins/README.md)"
            )
        return Path(explicit)
    for candidate in plugin_library_candidates():
        if candidate.is_file():
            return candidate
    raise UsageError(
        f"{PLUGIN_LIBRARY} not found (looked in ${PLUGIN_LIBRARY_ENV} and "
        f"{', '.join(str(c) for c in plugin_library_candidates())}); build it with "
        "`trimformer plugins build` (in a source checkout, with TensorRT's headers, cmake and "
        f"nvcc), or point ${PLUGIN_LIBRARY_ENV} at it"
    )


def find_cuda_compiler() -> Path:
    """nvcc on PATH, else in ``$CUDA_HOME/bin`` or /usr/local/cuda/bin (JetPack's place)."""
    found = shutil.which("nvcc")
    if found is not None:
        return Path(found)
    dirs = [Path(os.environ["CUDA_HOME"]) / "bin"] if os.environ.get("CUDA_HOME") else []
    dirs += CUDA_BIN_DIRS
    for directory in dirs:
        if (directory / "nvcc").is_file():
            return directory / "nvcc"
    looked = ", ".join(["PATH", *map(str, dirs)])
    raise UsageError(
        f"nvcc (the CUDA compiler) not found (looked in {looked}); install the CUDA toolkit "
        "(JetPack: apt install cuda-toolkit-12-6 or nvidia-jetpack; desktop: cuda-toolkit) or "
        "add its bin/ to PATH"
    )


def tensorrt_logger(trt: ModuleType) -> Any:
    """TensorRT's logger at WARNING, or VERBOSE with $TRIMFORMER_DEBUG set (the builder's and
    parser's full account of a failure, which the errors point to)."""
    debug = bool(os.environ.get("TRIMFORMER_DEBUG"))
    return trt.Logger(trt.Logger.VERBOSE if debug else trt.Logger.WARNING)


def load_plugin_library(registry: Any, path: Path) -> None:
    """Load the plugin library into TensorRT's process-wide plugin ``registry``, unless its
    creators are there already (a second load would fail on duplicates). TensorRT only logs a
    failed load, so its handle is checked here and a failure named."""
    from trimformer.graph_passes.base import PLUGIN_NAMESPACE, plugin_specs

    spec = next(iter(plugin_specs().values()))
    if registry.get_creator(spec.trt_plugin_name, str(spec.version), PLUGIN_NAMESPACE) is not None:
        return
    if registry.load_library(str(path)) is None:
        raise RuntimeFailure(
            f"TensorRT could not load the plugin library {path} (built for another TensorRT or "
            "CUDA, or not a plugin library?); rebuild it here with `trimformer plugins build` "
            "(TensorRT's log above says why)"
        )


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU an engine is built for: its name and compute capability ("8.7")."""

    name: str
    compute_capability: str


def gpu_identity(device: int = 0) -> GpuIdentity:
    """Name and compute capability of CUDA device ``device`` (through torch, imported lazily)."""
    try:
        import torch
    except ImportError:
        raise UsageError("naming the GPU needs torch with CUDA; pip install torch") from None
    if not torch.cuda.is_available():
        raise UsageError("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    major, minor = torch.cuda.get_device_capability(device)
    return GpuIdentity(torch.cuda.get_device_name(device), f"{major}.{minor}")


def parse_power_mode(nvpmodel_output: str) -> str | None:
    """The mode name from ``nvpmodel -q`` output ("NV Power Mode: MAXN" -> "MAXN")."""
    match = re.search(r"NV Power Mode\s*:\s*(\S+)", nvpmodel_output)
    return match[1] if match else None


def jetson_power_mode() -> str | None:
    """The Jetson power mode (``nvpmodel -q``), or None off a Jetson or when unreadable."""
    nvpmodel = shutil.which("nvpmodel")
    if nvpmodel is None:
        return None
    try:
        result = subprocess.run([nvpmodel, "-q"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_power_mode(result.stdout)

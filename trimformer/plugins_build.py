"""Build ``libtrimformer_plugins.so`` on the target: find TensorRT, cmake and nvcc, run CMake.

``trimformer plugins build`` is a shell over this module. The plugin sources are not in the
wheel: they are C++/CUDA compiled on the target, and live in ``plugins/`` of a source checkout
(found beside the ``trimformer`` package of an editable install, or given with ``--source``).
TensorRT is found from ``--tensorrt PATH`` (an extracted tarball: ``include/NvInfer.h``,
``lib/libnvinfer.so*``), else ``$TENSORRT_ROOT``, else the system locations of JetPack's and
the Debian packages (``/usr/include/<arch>-linux-gnu``, ``/usr/lib/<arch>-linux-gnu``). Every
missing piece is a ``UsageError`` naming it and how to get it; a failed compile is a
``RuntimeFailure`` pointing at the full log.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from trimformer.errors import RuntimeFailure, UsageError
from trimformer.runtime.telemetry.jetson import is_jetson
from trimformer.runtime.trt_env import PLUGIN_LIBRARY, PLUGIN_LIBRARY_ENV, find_cuda_compiler

__all__ = [
    "PluginBuild",
    "TensorRTInstall",
    "build_plugins",
    "cmake_arguments",
    "environment_line",
    "find_cmake",
    "find_tensorrt",
    "plan_build",
    "plugin_sources",
]

TENSORRT_ROOT_ENV = "TENSORRT_ROOT"
SYSTEM_INCLUDE_DIRS = (
    Path("/usr/include/aarch64-linux-gnu"),
    Path("/usr/include/x86_64-linux-gnu"),
    Path("/usr/include"),
    Path("/usr/local/tensorrt/include"),
)
SYSTEM_LIBRARY_DIRS = (
    Path("/usr/lib/aarch64-linux-gnu"),
    Path("/usr/lib/x86_64-linux-gnu"),
    Path("/usr/lib64"),
    Path("/usr/local/tensorrt/lib"),
)
MIN_TENSORRT_MAJOR = 10
MIN_CMAKE = (3, 18)
DEFAULT_CUDA_ARCHS = ("75", "80", "86", "87", "89", "90")  # Turing..Hopper plus Orin
JETSON_CUDA_ARCHS = ("87",)  # Orin: one architecture builds faster on the board itself
# CMAKE_CUDA_ARCHITECTURES keywords and the CMake version that knows them
_CMAKE_FOR_ARCH = {"native": (3, 24), "all": (3, 23), "all-major": (3, 23)}
_VERSION_DEFINE = re.compile(r"#define\s+(?:NV_TENSORRT|TRT)_(MAJOR|MINOR|PATCH)\w*\s+(\d+)")
_CUDA_ARCH = re.compile(r"^(\d{2,3}[af]?(-real|-virtual)?|native|all|all-major)$")
_INSTALL_HINT = (
    "pass --tensorrt PATH to an extracted TensorRT tarball (holding include/ and lib/), set "
    f"${TENSORRT_ROOT_ENV}, or install libnvinfer-dev (JetPack ships it)"
)


@dataclass(frozen=True)
class TensorRTInstall:
    """TensorRT's headers and ``libnvinfer`` on this machine, and where they were found."""

    include_dir: Path
    library: Path
    version: str
    origin: str


@dataclass(frozen=True)
class PluginBuild:
    """Everything one build needs: sources, build folder, TensorRT, tools and architectures."""

    source: Path
    build_dir: Path
    tensorrt: TensorRTInstall
    cmake: Path
    nvcc: Path
    cuda_archs: tuple[str, ...]

    @property
    def library(self) -> Path:
        return self.build_dir / PLUGIN_LIBRARY


def plugin_sources(explicit: Path | None = None) -> Path:
    """The ``plugins/`` folder to build: ``explicit``, else the one beside the package."""
    default = Path(__file__).resolve().parents[1] / "plugins"
    source = Path(explicit) if explicit is not None else default
    if not (source / "CMakeLists.txt").is_file():
        where = f"--source {source}" if explicit is not None else f"{source}"
        raise UsageError(
            f"plugin sources not found ({where} has no CMakeLists.txt; a pip-installed wheel does "
            "not ship them): run from a trimformer source checkout (pip install -e .) or pass "
            "--source PATH/TO/trimformer/plugins"
        )
    return source.resolve()


def tensorrt_version(include_dir: Path) -> str | None:
    """``MAJOR.MINOR.PATCH`` from NvInferVersion.h (or NvInfer.h), None when no header says."""
    parts: dict[str, str] = {}
    for name in ("NvInferVersion.h", "NvInfer.h"):
        header = include_dir / name
        if header.is_file():
            for key, value in _VERSION_DEFINE.findall(header.read_text(errors="replace")):
                parts.setdefault(key, value)
    if "MAJOR" not in parts:
        return None
    return ".".join(parts.get(key, "0") for key in ("MAJOR", "MINOR", "PATCH"))


def _library_in(dirs: Sequence[Path]) -> Path | None:
    """The first ``libnvinfer.so`` (else a versioned ``libnvinfer.so.N``) in ``dirs``."""
    for directory in dirs:
        exact = directory / "libnvinfer.so"
        if exact.exists():
            return exact
        versioned = sorted(directory.glob("libnvinfer.so.*"))
        if versioned:
            return versioned[0]
    return None


def find_tensorrt(explicit: Path | None = None) -> TensorRTInstall:
    """TensorRT from ``explicit``, else ``$TENSORRT_ROOT``, else the system locations."""
    root_env = os.environ.get(TENSORRT_ROOT_ENV)
    if explicit is not None or root_env:
        root = Path(explicit) if explicit is not None else Path(str(root_env))
        origin = "--tensorrt" if explicit is not None else f"${TENSORRT_ROOT_ENV}"
        include_dirs: Sequence[Path] = (root / "include",)
        library_dirs: Sequence[Path] = (root / "lib", root / "lib64")
        fix = f"point {origin} at an extracted TensorRT tarball (holding include/ and lib/)"
    else:
        origin = "system"
        include_dirs, library_dirs, fix = SYSTEM_INCLUDE_DIRS, SYSTEM_LIBRARY_DIRS, _INSTALL_HINT
    include_dir = next((d for d in include_dirs if (d / "NvInfer.h").is_file()), None)
    if include_dir is None:
        looked = ", ".join(str(d) for d in include_dirs)
        raise UsageError(f"TensorRT headers (NvInfer.h) not found (looked in {looked}); {fix}")
    version = tensorrt_version(include_dir)
    if version is None:
        raise UsageError(
            f"no TensorRT version in {include_dir}/NvInferVersion.h or NvInfer.h (no "
            f"NV_TENSORRT_MAJOR define): not a TensorRT install; {fix}"
        )
    if int(version.split(".")[0]) < MIN_TENSORRT_MAJOR:
        raise UsageError(
            f"TensorRT {version} found in {include_dir}; the plugins (IPluginV3) need TensorRT "
            f"{MIN_TENSORRT_MAJOR} or newer: {fix}"
        )
    library = _library_in(library_dirs)
    if library is None:
        looked = ", ".join(str(d) for d in library_dirs)
        raise UsageError(
            f"TensorRT library libnvinfer.so not found (looked in {looked}); {fix}"
            + ("" if origin != "system" else " and libnvinfer10")
        )
    return TensorRTInstall(include_dir, library, version, origin)


def find_cmake(minimum: tuple[int, int] = MIN_CMAKE, needed_by: str = "the plugins") -> Path:
    """cmake on PATH, at least version ``minimum`` (what ``needed_by`` needs)."""
    cmake = shutil.which("cmake")
    fix = "install a newer one (pip install cmake, or apt install cmake)"
    if cmake is None:
        raise UsageError(f"cmake not found on PATH; {fix.replace('a newer one', 'it')}")
    result = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"version (\d+)\.(\d+)", result.stdout)
    if match is None or tuple(map(int, match.groups())) < minimum:
        found = match.group(0) if match else "an unknown version"
        wanted = ".".join(map(str, minimum))
        raise UsageError(f"{cmake} is {found}; {needed_by} need cmake >= {wanted}: {fix}")
    return Path(cmake)


def plan_build(
    tensorrt: Path | None = None,
    build_dir: Path | None = None,
    cuda_archs: Sequence[str] = (),
    source: Path | None = None,
) -> PluginBuild:
    """Check everything a build needs, in the order a user would fix it; raise on the first gap."""
    for arch in cuda_archs:
        if not _CUDA_ARCH.match(arch):
            raise UsageError(
                f"--cuda-arch {arch!r} is not a CUDA architecture; give compute capabilities "
                "without the dot (87 for Orin, 89 for Ada, 90 for Hopper) or 'native'"
            )
    sources = plugin_sources(source)
    install = find_tensorrt(tensorrt)
    keyword = next((a for a in cuda_archs if a in _CMAKE_FOR_ARCH), None)
    cmake = (
        find_cmake(_CMAKE_FOR_ARCH[keyword], f"--cuda-arch {keyword} (or give the GPU's number)")
        if keyword is not None
        else find_cmake()
    )
    nvcc = find_cuda_compiler()
    folder = Path(build_dir).resolve() if build_dir is not None else sources / "build"
    archs = tuple(cuda_archs) or (JETSON_CUDA_ARCHS if is_jetson() else DEFAULT_CUDA_ARCHS)
    return PluginBuild(sources, folder, install, cmake, nvcc, archs)


def cmake_arguments(plan: PluginBuild) -> list[str]:
    """The CMake configure command line of ``plan``."""
    trt = plan.tensorrt
    arguments = [str(plan.cmake), "-S", str(plan.source), "-B", str(plan.build_dir)]
    arguments += ["-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_CUDA_COMPILER={plan.nvcc}"]
    # The headers and library found here, given explicitly: CMake keeps a cached include dir
    # across builds (another --tensorrt would compile against the old headers), and its
    # find_library misses a versioned-only libnvinfer.so.N.
    if trt.origin != "system":
        arguments.append(f"-DTensorRT_ROOT={trt.include_dir.parent}")
    arguments.append(f"-DTensorRT_INCLUDE_DIR={trt.include_dir}")
    arguments.append(f"-DTensorRT_LIBRARY={trt.library}")
    arguments.append(f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(plan.cuda_archs)}")
    return arguments


def _cmake_error(output: str) -> str:
    """CMake's first error message as one line."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("CMake Error")), None)
    if start is None:
        return next((line.strip() for line in reversed(lines) if line.strip()), "no output")
    message = []
    for line in lines[start + 1 :]:
        if line.startswith(("CMake ", "-- ")):
            break
        message.append(line.strip())
    return " ".join(part for part in message if part) or lines[start]


def _run_logged(command: list[str], log: Path, on_line: Callable[[str], None]) -> tuple[int, str]:
    """Run ``command``, passing each output line to ``on_line`` and writing all of it to ``log``."""
    lines = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            on_line(line.rstrip())
    output = "".join(lines)
    log.write_text(output)
    return process.returncode, output


def build_plugins(
    plan: PluginBuild, on_line: Callable[[str], None] = lambda _: None, jobs: int | None = None
) -> Path:
    """Configure and build ``plan``; return the library path. Logs land in the build folder."""
    plan.build_dir.mkdir(parents=True, exist_ok=True)
    configure_log = plan.build_dir / "trimformer-configure.log"
    code, output = _run_logged(cmake_arguments(plan), configure_log, on_line)
    if code != 0:
        raise UsageError(
            f"CMake refused to configure the plugins: {_cmake_error(output)} "
            f"(full log: {configure_log})"
        )
    build_log = plan.build_dir / "trimformer-build.log"
    jobs = jobs or os.cpu_count() or 1
    command = [str(plan.cmake), "--build", str(plan.build_dir), "-j", str(jobs)]
    code, output = _run_logged(command, build_log, on_line)
    if code != 0:
        errors = [line.strip() for line in output.splitlines() if "error" in line.lower()]
        first = errors[0] if errors else "see the log"
        raise RuntimeFailure(f"building the plugins failed: {first} (full log: {build_log})")
    if not plan.library.is_file():
        raise RuntimeFailure(f"the build finished but {plan.library} is missing (log: {build_log})")
    return plan.library


def environment_line(library: Path) -> str:
    """The shell line that points trimformer at ``library``."""
    return f"export {PLUGIN_LIBRARY_ENV}={library}"

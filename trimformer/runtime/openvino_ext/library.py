"""The fused-op library: where it lies, whether it is built, and building it.

The C++ sources (``csrc/``) are compiled with CMake against the headers and CMake config that
the ``openvino`` wheel ships, into a cache folder keyed by the OpenVINO version and a hash of
the sources (``$TRIMFORMER_CACHE``, else ``$XDG_CACHE_HOME/trimformer`` or
``~/.cache/trimformer``), so an upgrade of either builds afresh. A build happens in a temporary
folder beside its target and the library is renamed into place: a failed or concurrent build
never leaves a half-written library.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from trimformer.errors import RuntimeFailure, UsageError

__all__ = ["FUSED_OPS", "build_library", "built_library", "library_path", "library_status"]

SOURCES = Path(__file__).parent / "csrc"
LIBRARY_NAME = "libtrimformer_openvino.so"
FUSED_OPS = {"BipartiteMerge": 2, "TopKSelect": 1, "DiverseSelect": 1}
"""The ops the library implements, at the op version its C++ face implements (its type version
string is ``trimformer_v<version>``)."""


def library_path() -> Path:
    """Where the library for this OpenVINO and these sources lies once built."""
    import openvino

    digest = hashlib.sha256()
    for file in sorted(SOURCES.iterdir()):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    key = f"{openvino.__version__.split('-')[0]}-{digest.hexdigest()[:12]}"
    return _cache_root() / "openvino" / key / LIBRARY_NAME


def _cache_root() -> Path:
    if root := os.environ.get("TRIMFORMER_CACHE"):
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "trimformer"


def built_library() -> Path | None:
    """The built library, or None."""
    path = library_path()
    return path if path.is_file() else None


def build_library(force: bool = False) -> Path:
    """Build the library (unless built, or with ``force``) and return its path; a UsageError
    where cmake or a C++ compiler is missing, a RuntimeFailure naming the first compiler error."""
    import openvino

    target = library_path()
    if target.is_file() and not force:
        return target
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise UsageError(
            f"building trimformer's OpenVINO ops needs {' and '.join(missing)}, not found; "
            "install cmake and g++ (apt install cmake g++), or run with extensions='decomposed'"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    config = Path(openvino.__file__).parent / "cmake"
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as tmp:
        build = Path(tmp)
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        steps = [
            ["cmake", "-S", str(SOURCES), "-B", str(build), *generator, f"-DOpenVINO_DIR={config}"],
            ["cmake", "--build", str(build)],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeFailure(
                    f"building trimformer's OpenVINO ops failed: {_first_error(done)}"
                )
        os.replace(build / LIBRARY_NAME, target)
    return target


def _first_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stdout + done.stderr).splitlines()
    errors = [line.strip() for line in lines if "error" in line.lower()]
    return (errors or [line.strip() for line in lines if line.strip()] or ["no output"])[0]


def library_status() -> tuple[bool, str, str]:
    """(built, what and where, how to build it) for ``trimformer doctor`` and ``openvino
    status``."""
    ops = ", ".join(f"{name} v{version}" for name, version in FUSED_OPS.items())
    path = built_library()
    if path is not None:
        return True, f"{path} ({ops})", ""
    return False, "not built", "run: trimformer openvino build (or they build on first use)"

"""samples/cpp: its CMake project refuses clearly without TensorRT (building it needs TensorRT)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "cpp"
CMAKE = shutil.which("cmake")


def configure(build: Path, tensorrt_root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TENSORRT_ROOT"}
    command = [CMAKE or "cmake", "-S", str(SAMPLE), "-B", str(build)]
    return subprocess.run(
        [*command, f"-DTensorRT_ROOT={tensorrt_root}"], capture_output=True, text=True, env=env
    )


@pytest.mark.skipif(CMAKE is None, reason="cmake is not on PATH")
def test_cmake_refuses_clearly_without_tensorrt(tmp_path: Path):
    result = configure(tmp_path / "build", tmp_path / "no-tensorrt")
    if result.returncode == 0:
        pytest.skip("TensorRT is installed system-wide on this machine")
    assert "TensorRT headers (NvInfer.h) not found" in result.stderr
    assert "-DTensorRT_ROOT=" in result.stderr
    # Headers without libnvinfer: the library is named as what is missing.
    (tmp_path / "trt" / "include").mkdir(parents=True)
    (tmp_path / "trt" / "include" / "NvInfer.h").write_text("// headers only\n")
    result = configure(tmp_path / "build2", tmp_path / "trt")
    assert result.returncode != 0
    assert "TensorRT library (libnvinfer.so) not found" in result.stderr


CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"


@pytest.mark.skipif(
    not os.environ.get("TENSORRT_ROOT") or shutil.which("g++") is None,
    reason="set TENSORRT_ROOT to TensorRT's headers (and have g++) to compile the sample",
)
@pytest.mark.skipif(not (CUDA_INCLUDE / "cuda_runtime_api.h").is_file(), reason="no CUDA headers")
def test_sample_compiles_against_tensorrt_headers():
    # Headers suffice to check the sample against the TensorRT API; linking needs libnvinfer.
    include = Path(os.environ["TENSORRT_ROOT"]) / "include"
    command = ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"]
    command += ["-isystem", str(include), "-isystem", str(CUDA_INCLUDE), str(SAMPLE / "main.cpp")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

"""``trimformer plugins build``: finding TensorRT, cmake and nvcc, the one-line errors, and the
CMake configure step run for real up to its refusal of a tree that is not a real TensorRT."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from trimformer import plugins_build as pb
from trimformer.cli import cli
from trimformer.errors import UsageError
from trimformer.runtime import trt_env

NEEDS_TOOLS = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("nvcc") is None,
    reason="cmake and nvcc are needed to run the CMake configure step",
)


def fake_tensorrt(root: Path, major: int = 10, library: str = "libnvinfer.so") -> Path:
    """A tarball-shaped tree: include/NvInfer.h with version defines and lib/<library>."""
    (root / "include").mkdir(parents=True)
    (root / "lib").mkdir()
    defines = f"#define NV_TENSORRT_MAJOR {major}\n#define NV_TENSORRT_MINOR 3\n"
    (root / "include" / "NvInfer.h").write_text(defines + "#define NV_TENSORRT_PATCH 0\n")
    (root / "lib" / library).write_bytes(b"\x7fELF")
    return root


@pytest.fixture(autouse=True)
def _no_tensorrt_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pb.TENSORRT_ROOT_ENV, raising=False)


def test_a_tarball_is_found_with_its_version_and_library(tmp_path: Path):
    root = fake_tensorrt(tmp_path / "TensorRT-10.3.0")
    found = pb.find_tensorrt(root)
    assert found == pb.TensorRTInstall(
        root / "include", root / "lib" / "libnvinfer.so", "10.3.0", "--tensorrt"
    )


def test_tensorrt_root_is_used_and_a_versioned_library_accepted(tmp_path, monkeypatch):
    root = fake_tensorrt(tmp_path / "trt", library="libnvinfer.so.10")
    monkeypatch.setenv(pb.TENSORRT_ROOT_ENV, str(root))
    found = pb.find_tensorrt()
    assert found.origin == "$TENSORRT_ROOT" and found.library.name == "libnvinfer.so.10"


def test_the_version_header_of_tensorrt_10_is_read(tmp_path: Path):
    root = fake_tensorrt(tmp_path / "trt", major=99)
    (root / "include" / "NvInferVersion.h").write_text(
        "#define TRT_MAJOR_ENTERPRISE 11\n#define TRT_MINOR_ENTERPRISE 1\n"
        "#define TRT_PATCH_ENTERPRISE 2\n#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE\n"
    )
    assert pb.tensorrt_version(root / "include") == "11.1.2"


def test_system_locations_are_searched(tmp_path, monkeypatch):
    root = fake_tensorrt(tmp_path / "usr")
    monkeypatch.setattr(pb, "SYSTEM_INCLUDE_DIRS", (tmp_path / "none", root / "include"))
    monkeypatch.setattr(pb, "SYSTEM_LIBRARY_DIRS", (root / "lib",))
    found = pb.find_tensorrt()
    assert found.origin == "system" and found.include_dir == root / "include"
    monkeypatch.setattr(pb, "SYSTEM_INCLUDE_DIRS", (tmp_path / "none",))
    with pytest.raises(UsageError, match=r"not found \(looked in .*none\); pass --tensorrt PATH"):
        pb.find_tensorrt()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no-headers", r"TensorRT headers \(NvInfer.h\) not found \(looked in .*/include\)"),
        ("tensorrt-8", "TensorRT 8.3.0 found in .*need TensorRT 10 or newer"),
        ("no-version", "no NV_TENSORRT_MAJOR define"),
        ("no-library", r"libnvinfer.so not found \(looked in .*/lib, .*/lib64\)"),
    ],
)
def test_each_gap_is_one_line_naming_it_and_the_fix(tmp_path: Path, damage: str, message: str):
    root = fake_tensorrt(tmp_path / "trt", major=8 if damage == "tensorrt-8" else 10)
    if damage == "no-headers":
        (root / "include" / "NvInfer.h").unlink()
    if damage == "no-version":
        (root / "include" / "NvInfer.h").write_text("// not TensorRT\n")
    if damage == "no-library":
        (root / "lib" / "libnvinfer.so").unlink()
    with pytest.raises(UsageError, match=message) as error:
        pb.find_tensorrt(root)
    assert "\n" not in str(error.value)
    assert "point --tensorrt at an extracted TensorRT tarball" in str(error.value)


def test_missing_tools_sources_and_bad_architectures(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match=r"--cuda-arch '8\.7' is not a CUDA architecture"):
        pb.plan_build(cuda_archs=["8.7"])
    with pytest.raises(UsageError, match=r"plugin sources not found .*pass --source"):
        pb.plugin_sources(tmp_path)
    assert pb.plugin_sources() == Path(pb.__file__).resolve().parents[1] / "plugins"
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(trt_env, "CUDA_BIN_DIRS", (tmp_path / "cuda" / "bin",))
    with pytest.raises(UsageError, match="cmake not found on PATH; install it"):
        pb.find_cmake()
    with pytest.raises(UsageError, match=r"nvcc \(the CUDA compiler\) not found"):
        trt_env.find_cuda_compiler()
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\n")
    assert trt_env.find_cuda_compiler() == nvcc  # JetPack: /usr/local/cuda/bin is not on PATH


def test_cmake_keywords_need_the_cmake_that_knows_them(tmp_path: Path, monkeypatch):
    root = fake_tensorrt(tmp_path / "trt")
    tools = tmp_path / "bin"
    tools.mkdir()
    cmake = tools / "cmake"
    cmake.write_text("#!/bin/sh\necho 'cmake version 3.22.1'\n")  # Ubuntu 22.04, JetPack 6
    cmake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    with pytest.raises(UsageError, match=r"--cuda-arch native .* need cmake >= 3\.24"):
        pb.plan_build(root, tmp_path / "build", ["native"])


@NEEDS_TOOLS
def test_default_architectures_are_orin_alone_on_a_jetson(tmp_path: Path, monkeypatch):
    root = fake_tensorrt(tmp_path / "trt")
    assert pb.plan_build(root, tmp_path / "b").cuda_archs == pb.DEFAULT_CUDA_ARCHS
    monkeypatch.setattr(pb, "is_jetson", lambda: True)
    plan = pb.plan_build(root, tmp_path / "b")
    assert "-DCMAKE_CUDA_ARCHITECTURES=87" in pb.cmake_arguments(plan)


@NEEDS_TOOLS
def test_cmake_arguments_name_the_tarball_library_and_architectures(tmp_path: Path):
    root = fake_tensorrt(tmp_path / "trt")
    plan = pb.plan_build(root, tmp_path / "build", ["87", "90"])
    arguments = pb.cmake_arguments(plan)
    assert f"-DTensorRT_ROOT={root}" in arguments
    assert f"-DTensorRT_LIBRARY={root / 'lib' / 'libnvinfer.so'}" in arguments
    assert f"-DTensorRT_INCLUDE_DIR={root / 'include'}" in arguments  # never a cached one
    assert "-DCMAKE_CUDA_ARCHITECTURES=87;90" in arguments
    assert plan.library == tmp_path / "build" / "libtrimformer_plugins.so"


@NEEDS_TOOLS
def test_cli_runs_cmake_up_to_its_refusal_of_a_fake_tensorrt(tmp_path: Path):
    # Real cmake and nvcc: CMake detects the CUDA compiler, then finds no NvInferRuntime.h.
    root = fake_tensorrt(tmp_path / "trt")
    build = tmp_path / "build"
    args = ["plugins", "build", "--tensorrt", str(root), "--build-dir", str(build)]
    result = CliRunner().invoke(cli, [*args, "--cuda-arch", "75"])
    assert isinstance(result.exception, UsageError), result.output
    message = str(result.exception)
    assert message.startswith("CMake refused to configure the plugins: TensorRT headers")
    assert "NvInferRuntime.h" in message and "\n" not in message
    log = build / "trimformer-configure.log"
    assert str(log) in message and "The CUDA compiler identification is NVIDIA" in log.read_text()
    assert "TensorRT 10.3.0 headers (--tensorrt)" in result.output


def test_cli_without_tensorrt_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(pb, "SYSTEM_INCLUDE_DIRS", (tmp_path,))
    result = CliRunner().invoke(cli, ["plugins", "build"])
    assert isinstance(result.exception, UsageError)
    assert "install libnvinfer-dev" in str(result.exception)


def test_aot_report_compiles_a_bundle_s_kernels_for_the_target_gpu(tome_bundle, monkeypatch):
    wide = {"COLUMNS": "200"}
    args = ["plugins", "aot", str(tome_bundle), "--cuda-arch", "8.7"]
    result = CliRunner().invoke(cli, args, env=wide)
    assert result.exit_code == 0, result.output
    assert "Triton kernels of deit-ti-tome for sm_87" in result.output
    rows = [line for line in result.output.splitlines() if "BipartiteMerge" in line]
    assert rows and all(line.rstrip(" │").endswith("yes") for line in rows)  # one per token count
    assert "embeds these kernels in the engines" in result.output

    from trimformer.triton_kernels import runner

    monkeypatch.setattr(runner, "SHARED_MEMORY_LIMIT", 1024)
    result = CliRunner().invoke(cli, args, env=wide)
    assert result.exit_code == 1
    assert "uses the JIT Python plugins: BipartiteMerge at node" in result.output
    bad = CliRunner().invoke(cli, ["plugins", "aot", str(tome_bundle), "--cuda-arch", "9x"])
    assert bad.exit_code == 2 and "'9x' is not a compute capability" in bad.output

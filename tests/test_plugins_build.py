"""The TensorRT plugins without TensorRT: kernels compile alone, their logic matches each op's
torch face (host emulation of the very same phases, on CPU), and the CMake project either builds
the plugin library (TensorRT headers given through TensorRT_ROOT) or refuses clearly.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "harness"))

import kernel_harness as kh  # noqa: E402

from trimformer.ops import get_op, registered_ops  # noqa: E402

NVCC = shutil.which("nvcc")
CMAKE = shutil.which("cmake")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not on PATH")
needs_cmake = pytest.mark.skipif(
    NVCC is None or CMAKE is None, reason="cmake and nvcc are needed to configure the plugins"
)
MATRIX = kh.load_matrix()
PLUGIN_FILES = ("{op}_kernel.h", "{op}_kernel.cu", "{op}_plugin.h", "{op}_plugin.cpp", "README.md")


def test_matrix_names_registered_ops_with_complete_plugin_folders():
    import yaml

    config = yaml.safe_load((kh.PLUGINS_DIR / "config.yaml").read_text())
    assert config, "config.yaml lists no plugin"
    for op_name, entry in config.items():
        assert op_name in registered_ops()
        folder = kh.PLUGINS_DIR / entry["folder"]
        for pattern in PLUGIN_FILES:
            assert (folder / pattern.format(op=entry["folder"])).is_file(), (op_name, pattern)
        source = (folder / f"{entry['folder']}_plugin.h").read_text()
        assert f'kNAME = "{get_op(op_name).trt_plugin_name}"' in source
        assert f'kVERSION = "{get_op(op_name).version}"' in source
    assert {case.op for case in MATRIX} == set(config)
    # to-plugins emits a plugin node for every registered op: each needs its C++ plugin.
    assert set(config) == set(registered_ops()), "add the op's plugin to plugins/config.yaml"


@needs_nvcc
@pytest.mark.parametrize("source", kh.kernel_sources(), ids=lambda p: p.name)
def test_kernel_compiles_on_its_own(source: Path, tmp_path: Path):
    result = subprocess.run(
        [
            NVCC,
            "-c",
            "-std=c++17",
            "-Werror",
            "all-warnings",
            f"-I{source.parent}",
            str(source),
            "-o",
            str(tmp_path / "kernel.o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "NvInfer" not in source.read_text()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> kh.KernelHarness:
    if NVCC is None:
        pytest.skip("nvcc (CUDA toolkit) is not on PATH")
    return kh.KernelHarness(kh.build_library(tmp_path_factory.mktemp("harness")))


@pytest.mark.parametrize("seed", ["label", 0])
@pytest.mark.parametrize("case", MATRIX, ids=lambda c: c.label)
def test_kernel_logic_matches_the_torch_face(
    harness: kh.KernelHarness, case: kh.KernelCase, seed: str | int
):
    # seed 0 is the GPU script's; it makes a mutual nearest-neighbour tie in DiverseSelect
    number = len(case.label) if seed == "label" else seed
    inputs = kh.make_inputs(case, torch.Generator().manual_seed(number))
    got = harness.run(case.op, inputs, case.attrs)
    tol = kh.TOLERANCES[case.dtype]
    for out, ref in zip(got, kh.reference(case, inputs), strict=True):
        assert out.dtype == case.dtype and out.shape == ref.shape
        assert not out.isnan().any(), "an output element was never written"
        torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("op_name", sorted({c.op for c in MATRIX}))
def test_kernel_result_does_not_depend_on_the_thread_count(harness, op_name):
    case = next(c for c in MATRIX if c.op == op_name and c.dtype == torch.float32)
    inputs = kh.make_inputs(case, torch.Generator().manual_seed(1))
    one = harness.run(op_name, inputs, case.attrs, lanes=1)
    many = harness.run(op_name, inputs, case.attrs, lanes=256)
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a, b)


def test_kernel_refuses_more_tokens_than_its_limit(harness):
    x, size = torch.randn(1, 2050, 4), torch.ones(1, 2050, 1)
    with pytest.raises(RuntimeError, match="cudaErrorInvalidValue"):
        harness.run("BipartiteMerge", (x, torch.randn(1, 2050, 4), size), {"r": 1, "protected": 1})
    with pytest.raises(TypeError, match="float32 or all float16"):
        harness.run("TopKSelect", (x.double(), torch.rand(1, 2050), size), {"k": 1})


def _configure(build: Path, tensorrt_root: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TENSORRT_ROOT"}
    return subprocess.run(
        [
            CMAKE,
            "-S",
            str(kh.PLUGINS_DIR),
            "-B",
            str(build),
            f"-DTensorRT_ROOT={tensorrt_root}",
            "-DCMAKE_CUDA_ARCHITECTURES=75",
            "-DTRIMFORMER_PLUGIN_SMOKE=ON",
        ],
        capture_output=True,
        text=True,
        env=env,
    )


@needs_cmake
def test_cmake_refuses_clearly_without_tensorrt_headers(tmp_path: Path):
    result = _configure(tmp_path / "build", str(tmp_path / "no-tensorrt"))
    if result.returncode == 0:
        pytest.skip("TensorRT headers are installed system-wide on this machine")
    assert "TensorRT headers (NvInferRuntime.h) not found" in result.stderr
    assert "-DTensorRT_ROOT=" in result.stderr


@needs_cmake
@pytest.mark.skipif(
    not os.environ.get("TENSORRT_ROOT"), reason="set TENSORRT_ROOT to TensorRT's headers to build"
)
def test_plugin_library_builds_and_exports_its_creators(tmp_path: Path):
    build = tmp_path / "build"
    configured = _configure(build, os.environ["TENSORRT_ROOT"])
    assert configured.returncode == 0, configured.stderr
    built = subprocess.run(
        [CMAKE, "--build", str(build), "-j2"], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    # The library calls no libnvinfer function, so it loads without TensorRT.
    library = ctypes.CDLL(str(build / "libtrimformer_plugins.so"))
    library.getCreators.restype = ctypes.c_void_p
    count = ctypes.c_int32(-1)
    assert library.getCreators(ctypes.byref(count))
    assert count.value == len({c.op for c in MATRIX})
    assert library.setLoggerFinder
    # Creators, fields, types, formats, shape checks and serialisation, through TensorRT's
    # interfaces (plugin_smoke.cpp); errors are logged with the plugin's and method's name.
    smoke = subprocess.run([str(build / "trimformer_plugin_smoke")], capture_output=True, text=True)
    assert smoke.returncode == 0 and smoke.stdout.strip().endswith("OK"), smoke.stdout
    assert "trimformer::TopKSelect::createPlugin: TopKSelect: attribute fuse=2" in smoke.stderr

"""The plugin kernels on a CUDA GPU against each op's torch face (skipped without CUDA)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "harness"))

import kernel_harness as kh

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH"),
]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> kh.KernelHarness:
    return kh.KernelHarness(kh.build_library(tmp_path_factory.mktemp("gpu"), arch=kh.device_arch()))


@pytest.mark.parametrize("case", kh.load_matrix(), ids=lambda c: c.label)
def test_kernel_on_gpu_matches_the_torch_face(harness, case):
    inputs = tuple(t.cuda() for t in kh.make_inputs(case, torch.Generator().manual_seed(0)))
    got = harness.run(case.op, inputs, case.attrs)
    torch.cuda.synchronize()
    tol = kh.TOLERANCES[case.dtype]
    for out, ref in zip(got, kh.reference(case, inputs), strict=True):
        assert not out.isnan().any(), "an output element was never written"
        torch.testing.assert_close(out.float().cpu(), ref, atol=tol, rtol=tol)

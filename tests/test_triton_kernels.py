"""The Triton kernels (the plugins' AOT form): their logic in Triton's interpreter against each
op's torch face over the whole kernel matrix, and their compilation for real GPU targets, which
needs no GPU. On a CUDA machine the same matrix also runs compiled on the device."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from trimformer.ops import OpValidationError
from trimformer.triton_kernels import (
    MAX_TOKENS,
    SHARED_MEMORY_LIMIT,
    KernelPlanError,
    compile_plan,
    kernel_plan,
    launch,
    run_op,
    runner,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "harness"))

import kernel_harness as kh

SCRIPT = Path(__file__).with_name("triton_interpreted.py")
DEIT_SMALL = {  # the plugin nodes of DeiT-S ToMe r=13 / EViT / DivPrune, 197 tokens
    "BipartiteMerge": (197, 384, 64, {"r": 13, "protected": 1}),
    "TopKSelect": (197, 384, 1, {"k": 137, "protected": 1, "fuse": 1}),
    "DiverseSelect": (197, 384, 384, {"k": 98, "protected": 1}),
}


def _spilled_bytes(ptx: str) -> int:
    """Bytes the kernel spills to local memory, from ``ptxas -v`` (Triton bundles ptxas)."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.is_file():
        pytest.skip("Triton's bundled ptxas is missing")
    target = re.search(r"\.target (sm_\w+)", ptx)
    assert target is not None, "the PTX names no target"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        run = subprocess.run(
            [str(ptxas), f"-arch={target[1]}", "-v", str(source), "-o", str(source) + ".o"],
            capture_output=True,
            text=True,
            check=True,
        )
    match = re.search(r"(\d+) bytes spill stores", run.stderr)
    assert match is not None, run.stderr
    return int(match[1])


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(line) for line in run.stdout.splitlines()]
    return {r["label"]: r for r in results}


@pytest.mark.parametrize("case", kh.load_matrix(), ids=lambda c: c.label)
def test_kernel_logic_matches_the_torch_face(interpreted, case):
    result = interpreted[case.label]
    assert not result["unwritten"], "an output element was never written"
    assert result["match"], f"max error {result['error']}"


@pytest.mark.parametrize("op", sorted(DEIT_SMALL))
@pytest.mark.parametrize("capability", [87, 90])
def test_kernel_compiles_to_ptx_for_jetson_orin_and_hopper(op, capability):
    tokens, channels, second, attrs = DEIT_SMALL[op]
    plan = kernel_plan(op, tokens, channels, second, attrs)
    for dtype in (torch.float32, torch.float16):
        kernel = compile_plan(plan, dtype, capability)
        assert f".target sm_{capability}" in kernel.ptx
        entry = re.search(rf"\.entry {kernel.name}\((.*?)\)", kernel.ptx, re.S)
        assert entry is not None, "the PTX lacks the kernel's entry"
        params = re.findall(r"\.param \.(u64|u32|b32|b64)", entry[1])
        # TensorRT passes inputs, the int32 batch, then outputs: (x, second, size, batch,
        # x_out, size_out); Triton's trailing scratch pointers stay unused (checked to be 0).
        assert params[:6] == ["u64", "u64", "u64", "u32", "u64", "u64"]
        assert kernel.threads == plan.num_warps * 32
        assert 0 < kernel.shared_bytes <= SHARED_MEMORY_LIMIT
        assert kernel.cubin[:4] == b"\x7fELF"
        # tiles sized to the registers: a few bytes of spill at most (sm_90 TopKSelect: 4)
        assert _spilled_bytes(kernel.ptx) <= 16, "registers spill to local memory"


def test_kernels_that_cannot_run_are_refused_with_the_way_out(monkeypatch):
    tokens, channels, second, attrs = DEIT_SMALL["BipartiteMerge"]
    plan = kernel_plan("BipartiteMerge", tokens, channels, second, attrs)
    monkeypatch.setattr(runner, "SHARED_MEMORY_LIMIT", 1024)
    with pytest.raises(KernelPlanError, match=r"needs \d+ bytes of shared memory.*plugin library"):
        compile_plan(plan, torch.float32, 87)
    with pytest.raises(KernelPlanError, match=f"exceed the kernels' {MAX_TOKENS}.*JIT form"):
        kernel_plan("TopKSelect", MAX_TOKENS + 1, 8, 1, {"k": 4, "protected": 1, "fuse": 0})
    with pytest.raises(OpValidationError, match="k=300 must be in"):
        kernel_plan("DiverseSelect", 197, 8, 8, {"k": 300, "protected": 1})
    plan = kernel_plan("TopKSelect", 17, 8, 1, {"k": 4, "protected": 1, "fuse": 0})
    with pytest.raises(KernelPlanError, match="TRITON_INTERPRET=1"):
        launch(plan, (torch.zeros(1, 17, 8), torch.zeros(1, 17), torch.ones(1, 17, 1)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", kh.load_matrix(), ids=lambda c: c.label)
def test_compiled_kernel_on_gpu_matches_the_torch_face(case):
    inputs = tuple(t.cuda() for t in kh.make_inputs(case, torch.Generator().manual_seed(0)))
    got = run_op(case.op, inputs, case.attrs)
    torch.cuda.synchronize()
    tol = kh.TOLERANCES[case.dtype]
    for out, ref in zip(got, kh.reference(case, inputs), strict=True):
        assert not out.isnan().any(), "an output element was never written"
        torch.testing.assert_close(out.float().cpu(), ref, atol=tol, rtol=tol)

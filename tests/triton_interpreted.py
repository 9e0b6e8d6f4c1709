"""Run every kernel-matrix case through the Triton kernels in Triton's interpreter (CPU).

A script, run in its own process by tests/test_triton_kernels.py: ``TRITON_INTERPRET=1`` must be
set before the kernels are decorated, and the test process itself compiles them for GPUs.
Prints one JSON object per case: its label, whether it matched the op's torch face within the
harness tolerance, the largest error, and whether any output element was left unwritten (NaN).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "harness"))

import kernel_harness as kh

from trimformer.triton_kernels import run_op


def main() -> None:
    for case in kh.load_matrix():
        inputs = kh.make_inputs(case, torch.Generator().manual_seed(0))
        got = run_op(case.op, inputs, case.attrs)
        tol = kh.TOLERANCES[case.dtype]
        pairs = list(zip(got, kh.reference(case, inputs), strict=True))
        result = {
            "label": case.label,
            "unwritten": any(bool(out.isnan().any()) for out, _ in pairs),
            "match": all(torch.allclose(o.float(), r, atol=tol, rtol=tol) for o, r in pairs),
            "error": max(float((o.float() - r).abs().max()) for o, r in pairs),
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

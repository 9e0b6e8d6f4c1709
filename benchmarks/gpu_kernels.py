"""Check and time the plugin kernels on a CUDA GPU, without TensorRT; write a JSON table.

One prepared run for a lent GPU machine:

    python benchmarks/gpu_kernels.py --out "$OUT/gpu_kernels.json"

Two implementations of every op: the CUDA kernel of the plugin library (compiled with the GPU's
own architecture through plugins/harness) and the Triton kernel of the Python plugins' AOT form
(trimformer/triton_kernels). For every case of plugins/config.yaml (fp32 and fp16), each runs on
random CUDA inputs with outputs poisoned with NaN and is compared with the op's torch face
(float32, CPU); then both are timed against the torch face run on the GPU (the decomposed torch
ops a plugin replaces) on ViT-sized shapes, interleaved in one run. Times include each call's
Python launch overhead (ctypes, Triton's launcher), which a TensorRT engine does not pay. Exits 1
when any check fails. Benchmarks are not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "harness"))

import kernel_harness as kh  # noqa: E402

from trimformer.ops import get_op  # noqa: E402
from trimformer.triton_kernels import run_op  # noqa: E402

Runner = Callable[[str, tuple[torch.Tensor, ...], dict[str, int]], tuple[torch.Tensor, ...]]

# ViT-S/16 at 224 px (197 tokens, 384 channels) at batch 1, 8 and 64.
TIMING = [
    ("BipartiteMerge", {"channels": 384, "metric_channels": 64, "r": 13, "protected": 1}),
    ("TopKSelect", {"channels": 384, "k": 137, "protected": 1, "fuse": 1}),
    ("DiverseSelect", {"channels": 384, "feature_channels": 384, "k": 98, "protected": 1}),
]
BATCHES = (1, 8, 64)
TOKENS = 197


def runners(harness: kh.KernelHarness) -> dict[str, Runner]:
    """The implementations compared: the plugin library's CUDA kernels and the Triton kernels."""
    return {"cuda": harness.run, "triton": run_op}


def check(implementations: dict[str, Runner]) -> list[dict[str, Any]]:
    """Every matrix case on the GPU against the torch face, for every implementation."""
    rows = []
    for case in kh.load_matrix():
        inputs = tuple(t.cuda() for t in kh.make_inputs(case, torch.Generator().manual_seed(0)))
        ref = kh.reference(case, inputs)
        tol = kh.TOLERANCES[case.dtype]
        for name, run in implementations.items():
            got = run(case.op, inputs, dict(case.attrs))
            torch.cuda.synchronize()
            errors = [
                float((g.float().cpu() - r).abs().nan_to_num(float("inf")).max())
                for g, r in zip(got, ref, strict=True)
            ]
            ok = all(
                torch.allclose(g.float().cpu(), r, atol=tol, rtol=tol)
                for g, r in zip(got, ref, strict=True)
            )
            rows.append(
                {
                    "case": case.label,
                    "implementation": name,
                    "ok": ok,
                    "max_abs_error": max(errors),
                    "tolerance": tol,
                }
            )
    return rows


def _time_ms(fn: Any, runs: int) -> float:
    """Median time of ``fn`` in milliseconds over ``runs`` CUDA-event-timed calls."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def timings(implementations: dict[str, Runner], runs: int) -> list[dict[str, Any]]:
    """Each implementation vs the torch face on the GPU, per op, dtype and batch."""
    rows = []
    for op_name, params in TIMING:
        spec = get_op(op_name)
        attrs = {a.name: params[a.name] for a in spec.attributes}
        for dtype in kh.DTYPES.values():
            for batch in BATCHES:
                sizes = {"batch": batch, "tokens": TOKENS, **params}
                case = kh.KernelCase(op_name, dtype, sizes, attrs)
                inputs = tuple(
                    t.cuda() for t in kh.make_inputs(case, torch.Generator().manual_seed(0))
                )
                values = [attrs[a.name] for a in spec.attributes]
                row: dict[str, Any] = {
                    "op": op_name,
                    "dtype": str(dtype).removeprefix("torch."),
                    "batch": batch,
                    "tokens": TOKENS,
                    "channels": params["channels"],
                    "torch_ms": _time_ms(partial(spec.torch_op, *inputs, *values), runs),
                }
                for name, run in implementations.items():
                    row[f"{name}_ms"] = _time_ms(partial(run, op_name, inputs, attrs), runs)
                    row[f"{name}_speedup"] = row["torch_ms"] / row[f"{name}_ms"]
                rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_kernels.json"))
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU machine", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        implementations = runners(kh.KernelHarness(kh.build_library(Path(tmp), arch="native")))
        checks = check(implementations)
        table = timings(implementations, args.runs)
    report = {
        "device": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": importlib.metadata.version("triton"),
        "checks": checks,
        "timings": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in checks:
        status = "ok  " if row["ok"] else "FAIL"
        label = f"{row['implementation']:6s} {row['case']}"
        print(f"{status} {label}  max abs err {row['max_abs_error']:.2e}")
    for row in table:
        print(
            f"{row['op']:15s} {row['dtype']:8s} B={row['batch']:3d}"
            f"  torch {row['torch_ms']:.4f} ms"
            f"  cuda {row['cuda_ms']:.4f} ms (x{row['cuda_speedup']:.2f})"
            f"  triton {row['triton_ms']:.4f} ms (x{row['triton_speedup']:.2f})"
        )
    return 0 if all(row["ok"] for row in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

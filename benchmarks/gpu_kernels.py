"""Check and time the plugin kernels on a CUDA GPU, without TensorRT; write a JSON table.

One prepared run for a lent GPU machine, from the repository root:

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_kernels.py --out "$OUT/gpu_kernels.json"

Two implementations of every op: the CUDA kernel of the plugin library (compiled for the GPU's
architecture through plugins/harness) and the Triton kernel of the Python plugins' AOT form
(trimformer/triton_kernels). For every case of plugins/config.yaml (fp32 and fp16), each runs on
random CUDA inputs with outputs poisoned with NaN and is compared with the op's torch face
(float32, CPU). Then both are timed against the torch face run on the GPU (the decomposed torch
ops a plugin replaces) on ViT-sized shapes, the three called in turn within each round: "eager"
is one Python call each (the kernels' launchers, ctypes and Triton's, included), "graph" a CUDA
graph replay of the same call (kernel time without Python, as in a TensorRT engine), None where
the torch face cannot be captured. A case or row that raises is recorded with its error and the
run goes on; the JSON is rewritten after every step, so a cut-off run keeps what it measured.
Exits 1 when any check fails. Benchmarks are not tests: nothing here asserts a timing.
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
sys.path[:0] = [str(ROOT), str(ROOT / "plugins" / "harness")]  # runs without an install

import kernel_harness as kh  # noqa: E402

from trimformer.errors import first_line  # noqa: E402
from trimformer.ops import get_op  # noqa: E402
from trimformer.triton_kernels import launch, plan_for, run_op  # noqa: E402

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


def check(implementations: dict[str, Runner], on_row: Callable[[], None]) -> list[dict[str, Any]]:
    """Every matrix case on the GPU against the torch face, for every implementation."""
    rows: list[dict[str, Any]] = []
    for case in kh.load_matrix():
        inputs = tuple(t.cuda() for t in kh.make_inputs(case, torch.Generator().manual_seed(0)))
        ref = kh.reference(case, inputs)
        tol = kh.TOLERANCES[case.dtype]
        for name, run in implementations.items():
            row: dict[str, Any] = {"case": case.label, "implementation": name, "tolerance": tol}
            try:
                got = [g.float().cpu() for g in run(case.op, inputs, dict(case.attrs))]
                shapes = all(g.shape == r.shape for g, r in zip(got, ref, strict=True))
                unwritten = any(bool(g.isnan().any()) for g in got)
                errors = [float((g - r).abs().max()) for g, r in zip(got, ref, strict=True)]
                close = all(
                    torch.allclose(g, r, atol=tol, rtol=tol) for g, r in zip(got, ref, strict=True)
                )
                row |= {
                    "ok": shapes and not unwritten and close,
                    "shapes_match": shapes,
                    "unwritten_elements": unwritten,
                    "max_abs_error": None if unwritten or not shapes else max(errors),
                }
            except Exception as exc:  # recorded, and the run goes on
                row |= {"ok": False, "error": f"{type(exc).__name__}: {first_line(exc)}"}
            rows.append(row)
            status = "ok  " if row["ok"] else "FAIL"
            print(f"{status} {name:6s} {case.label} {row.get('error', '')}", flush=True)
            on_row()
    return rows


def _replay(fn: Callable[[], Any]) -> Callable[[], Any] | None:
    """``fn`` captured into a CUDA graph, as its replay; None when it cannot be captured (a
    host synchronisation inside, as in some torch ops)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize()
        return graph.replay
    except RuntimeError:
        torch.cuda.synchronize()
        return None


def _time_ms(calls: dict[str, Callable[[], Any] | None], runs: int) -> dict[str, float | None]:
    """Median milliseconds per call, CUDA-event timed, the calls taken in turn in every round
    (so drift falls on all of them alike); None for a call that is None."""
    live = {name: fn for name, fn in calls.items() if fn is not None}
    for _ in range(10):
        for fn in live.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in live}
    for _ in range(runs):
        for name, fn in live.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: sorted(times[name])[runs // 2] if name in times else None for name in calls}


def timings(
    harness: kh.KernelHarness, runs: int, on_row: Callable[[], None]
) -> list[dict[str, Any]]:
    """The CUDA and Triton kernels vs the torch face on the GPU, per op, dtype and batch."""
    rows: list[dict[str, Any]] = []
    for op_name, params in TIMING:
        spec = get_op(op_name)
        attrs = {a.name: params[a.name] for a in spec.attributes}
        for dtype in kh.DTYPES.values():
            for batch in BATCHES:
                sizes = {"batch": batch, "tokens": TOKENS, **params}
                row: dict[str, Any] = {
                    "op": op_name,
                    "dtype": str(dtype).removeprefix("torch."),
                    "batch": batch,
                    "tokens": TOKENS,
                    "channels": params["channels"],
                }
                try:
                    case = kh.KernelCase(op_name, dtype, sizes, attrs)
                    inputs = tuple(
                        t.cuda() for t in kh.make_inputs(case, torch.Generator().manual_seed(0))
                    )
                    values = [attrs[a.name] for a in spec.attributes]
                    calls = {  # outputs unpoisoned: the fills are not the kernels' cost
                        "torch": partial(spec.torch_op, *inputs, *values),
                        "cuda": partial(harness.run, op_name, inputs, attrs, poison=False),
                        "triton": partial(
                            launch, plan_for(op_name, inputs, attrs), inputs, poison=False
                        ),
                    }
                    eager = _time_ms(dict(calls), runs)
                    graph = _time_ms({n: _replay(fn) for n, fn in calls.items()}, runs)
                    for mode, measured in (("eager", eager), ("graph", graph)):
                        for name, ms in measured.items():
                            row[f"{name}_{mode}_ms"] = ms
                        for name in ("cuda", "triton"):
                            torch_ms, ms = measured["torch"], measured[name]
                            ratio = torch_ms / ms if torch_ms and ms else None
                            row[f"{name}_{mode}_speedup"] = ratio
                except Exception as exc:  # recorded, and the run goes on
                    row["error"] = f"{type(exc).__name__}: {first_line(exc)}"
                rows.append(row)
                print(_timing_line(row), flush=True)
                on_row()
    return rows


def _timing_line(row: dict[str, Any]) -> str:
    head = f"{row['op']:15s} {row['dtype']:8s} B={row['batch']:3d}"
    if "error" in row:
        return f"{head}  {row['error']}"

    def ms(key: str) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value:.4f}"

    def ratio(key: str) -> str:
        value = row.get(key)
        return "-" if value is None else f"x{value:.2f}"

    parts = [head]
    for mode in ("eager", "graph"):
        parts.append(
            f"{mode}: torch {ms(f'torch_{mode}_ms')} cuda {ms(f'cuda_{mode}_ms')} "
            f"({ratio(f'cuda_{mode}_speedup')}) triton {ms(f'triton_{mode}_ms')} "
            f"({ratio(f'triton_{mode}_speedup')})"
        )
    return "  ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_kernels.json"))
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU machine", file=sys.stderr)
        return 2
    major, minor = torch.cuda.get_device_capability()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "capability": f"{major}.{minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": importlib.metadata.version("triton"),
        "checks": [],
        "timings": [],
    }
    print({k: v for k, v in report.items() if isinstance(v, str)}, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        harness = kh.KernelHarness(kh.build_library(Path(tmp), arch=kh.device_arch()))
        report["checks"] = check(runners(harness), save)
        report["timings"] = timings(harness, args.runs, save)
    save()
    return 0 if all(row["ok"] for row in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())

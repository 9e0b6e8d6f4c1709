"""The user-data sources against the built-in sets, and what the full-output cache saves.

1. Agreement of the sources with the built-ins (real weights; they must give the same figures):
   - the Fashion-MNIST ViT (ToMe r=8) on the 10,000 test images, read from the idx files
     (``--data fashion-mnist``) and from the same images written as PNGs in class subfolders
     (``--data images:DIR``), and from the flat folder without labels (agreement only);
   - all-MiniLM-L6-v2 (seq 128, ToMe 50 %) on polarity (built-in vs ``texts:FILE.csv?label=``)
     and on Lee (built-in vs the same 1225 rated pairs as ``pairs:FILE.tsv``).
2. A 5-config ToMe sweep of the ViT on the PNG folder (``--limit`` images), run twice in one
   process: with the full-output cache (prepared images and the full graph's outputs reused
   across points) and without it (each point reads the images and runs the full graph again).

    python benchmarks/user_data.py [--limit 2000]

Writes benchmarks/results/user_data.json and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table
from text_fidelity import minilm_folder, r_schedule

from trimformer.evaluation.cache import EvalCache
from trimformer.evaluation.fashion_mnist import read_fashion_mnist
from trimformer.evaluation.runner import evaluate
from trimformer.evaluation.text_data import read_lee, read_polarity
from trimformer.exporter import ExportRequest, export_bundle
from trimformer.profiles import ReductionConfig
from trimformer.tuning.measure import BenchSettings, ModelSpec
from trimformer.tuning.points import Grid
from trimformer.tuning.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_VIT = ROOT / "samples" / "models" / "fashion-mnist-vit"
RESULTS = ROOT / "benchmarks" / "results"
SWEEP_R = (2, 4, 8, 12, 16)


def write_fashion_folders(root: Path) -> tuple[Path, Path]:
    """The test images as PNGs: in class subfolders, and flat."""
    images, labels = read_fashion_mnist("test")
    classes, flat = root / "classes", root / "flat"
    flat.mkdir(parents=True)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = classes / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
        Image.fromarray(image).save(flat / f"{index:05d}.png")
    return classes, flat


def write_text_files(root: Path) -> tuple[Path, Path]:
    """Polarity as a labelled CSV, and Lee's rated pairs as a TSV."""
    polarity = read_polarity()
    table = root / "polarity.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for text, label in zip(polarity.sentences, polarity.labels, strict=True):
            writer.writerow([text, label])
    lee = read_lee()
    pairs = root / "lee.tsv"
    pairs.write_text(
        "".join(
            f"{lee.documents[a]}\t{lee.documents[b]}\t{score}\n"
            for a, b, score in zip(lee.first, lee.second, lee.ratings, strict=True)
        )
    )
    return table, pairs


def agreement_rows(work: Path, threads: int) -> list[dict]:
    vit = work / "vit"
    export_bundle(ExportRequest(str(SAMPLE_VIT), vit, ReductionConfig("tome", {"r": 8})))
    minilm = work / "minilm"
    export_bundle(
        ExportRequest(
            str(minilm_folder()),
            minilm,
            ReductionConfig("tome", {"r": r_schedule(128, 0.5)}),
            seq_len=128,
        )
    )
    classes, flat = write_fashion_folders(work / "fashion")
    table, pairs = write_text_files(work)
    cases = [
        ("fashion-mnist ViT r=8", vit, "fashion-mnist", "fashion-mnist"),
        ("fashion-mnist ViT r=8", vit, "images:DIR (class subfolders)", f"images:{classes}"),
        ("fashion-mnist ViT r=8", vit, "images:DIR (flat, unlabelled)", f"images:{flat}"),
        ("MiniLM seq 128, 50 %", minilm, "polarity", "polarity"),
        ("MiniLM seq 128, 50 %", minilm, "texts:polarity.csv?label=label",
         f"texts:{table}?label=label"),
        ("MiniLM seq 128, 50 %", minilm, "lee", "lee"),
        ("MiniLM seq 128, 50 %", minilm, "pairs:lee.tsv", f"pairs:{pairs}"),
    ]  # fmt: skip
    rows = []
    for model, bundle, name, data in cases:
        start = time.perf_counter()
        result = evaluate(bundle, data, threads=threads)
        rows.append(
            {
                "model": model,
                "data": name,
                "examples": result.examples,
                "metric": result.metric,
                "reduced": result.value,
                "full": result.full_value,
                "agreement": result.agreement,
                "top5": result.top5,
                "drop_ci95": result.drop_ci95,
                "top5_overlap": result.top5_overlap,
                "kl": result.kl,
                "agreement_p5": result.agreement_p5,
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        print(json.dumps(rows[-1]))
    return rows


def cache_rows(work: Path, folder: Path, limit: int, threads: int) -> list[dict]:
    """The same 5-point sweep with and without the cache, interleaved in one process."""
    model = ModelSpec(str(SAMPLE_VIT))
    grid = [Grid("tome", SWEEP_R)]
    rows = []
    for cached in (False, True):
        cache = EvalCache(work / "full-outputs") if cached else None
        settings = BenchSettings(
            f"images:{folder}", limit=limit, runs=5, threads=threads, cache=cache
        )
        start = time.perf_counter()
        points = run_sweep(model, grid, settings, work / f"sweep-{cached}")
        rows.append(
            {
                "cache": cached,
                "configs": len(points),
                "images": limit,
                "seconds": round(time.perf_counter() - start, 1),
                "values": [p.value for p in points],
                "full_outputs_computed": None if cache is None else cache.misses,
                "full_outputs_reused": None if cache is None else cache.hits,
            }
        )
        print(json.dumps(rows[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=2000, help="Images per sweep point.")
    parser.add_argument("--out", type=Path, default=RESULTS / "user_data.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        agreement = agreement_rows(work, args.threads)
        sweeps = cache_rows(work, work / "fashion" / "classes", args.limit, args.threads)
    console = Console()
    out = Table(title="user-data sources vs the built-in sets (ORT fp32, real weights)")
    for column in ("model", "data", "examples", "metric", "reduced", "full", "agreement"):
        out.add_column(column, justify="right" if column in ("examples", "reduced") else "left")
    for row in agreement:
        full = "-" if row["full"] is None else f"{row['full']:.4f}"
        out.add_row(
            row["model"], row["data"], str(row["examples"]), row["metric"],
            f"{row['reduced']:.4f}", full, f"{row['agreement']:.4f}",
        )  # fmt: skip
    console.print(out)
    saved = Table(title=f"{len(SWEEP_R)}-config sweep on images:DIR, {args.limit} images")
    for column in ("cache", "seconds", "full outputs computed / reused"):
        saved.add_column(column)
    for row in sweeps:
        made = row["full_outputs_computed"]
        reuse = "-" if made is None else f"{made} / {row['full_outputs_reused']}"
        saved.add_row(str(row["cache"]), f"{row['seconds']:.1f}", reuse)
    console.print(saved)
    ratio = sweeps[0]["seconds"] / sweeps[1]["seconds"]
    console.print(f"the cache makes the sweep {ratio:.2f}x faster; same values: "
                  f"{sweeps[0]['values'] == sweeps[1]['values']}")  # fmt: skip
    args.out.write_text(
        json.dumps({"agreement": agreement, "sweep_cache": sweeps}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""What reduction and precision cost together, on real weights: every CPU stack against the full
model on ONNX Runtime fp32.

Two models with real weights that install offline, each exported with ToMe:
- the Fashion-MNIST ViT shipped in ``samples/models`` (ToMe r=8), scored on the 10,000 test
  images: top-1 accuracy, and top-1 agreement with the full model on ONNX Runtime fp32;
- all-MiniLM-L6-v2 at seq-len 128 with half the tokens merged by the last layer, on gensim's Lee
  documents: Spearman of document similarities vs human ratings, and embedding cosine to the
  full model on ONNX Runtime fp32 (mean and min).

int8 graphs are calibrated on data the scores do not use (300 Fashion-MNIST *training* images;
300 polarity sentences for MiniLM). Each stack runs both graphs (``trimformer eval --backend B
--precision P``), so each row gives the cost of the precision alone (full vs reference) and of
reduction and precision together (reduced vs reference).

    python benchmarks/precision_fidelity.py

Writes benchmarks/results/precision_fidelity.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table
from text_fidelity import minilm_folder, r_schedule

from trimformer.bundle import read_manifest
from trimformer.evaluation.fashion_mnist import normalise, read_fashion_mnist
from trimformer.evaluation.runner import data_inputs, evaluate
from trimformer.exporter import ExportRequest, export_bundle
from trimformer.profiles import ReductionConfig
from trimformer.quantization import CalibrationSet, QuantizeRequest, quantize_bundle
from trimformer.runtime.options import RuntimeOptions

RESULTS = Path(__file__).parent / "results"
SAMPLE_VIT = Path(__file__).resolve().parents[1] / "samples" / "models" / "fashion-mnist-vit"
CALIBRATION_ITEMS = 300
STACKS = [
    RuntimeOptions("ort", "fp32"),
    RuntimeOptions("ort", "int8"),
    RuntimeOptions("openvino", "fp32"),
    RuntimeOptions("openvino", "bf16"),
    RuntimeOptions("openvino", "int8"),
]


def fashion_calibration(bundle: Path) -> CalibrationSet:
    preprocess = read_manifest(bundle)["preprocess"]
    images, _ = read_fashion_mnist("train")
    pixels = normalise(images[:CALIBRATION_ITEMS], preprocess["mean"], preprocess["std"])
    return CalibrationSet("fashion-mnist train[:300]", {"pixel_values": pixels})


def minilm_calibration(bundle: Path) -> CalibrationSet:
    return CalibrationSet("polarity", data_inputs(bundle, "polarity", CALIBRATION_ITEMS))


CASES = [
    # name, model, export settings, calibration, data set it is scored on
    ("fashion-mnist ViT, ToMe r=8", str(SAMPLE_VIT), {"r": 8}, None, fashion_calibration,
     "fashion-mnist"),
    ("all-MiniLM-L6-v2 seq 128, ToMe 50 %", None, {"r": r_schedule(128, 0.5)}, 128,
     minilm_calibration, "lee"),
]  # fmt: skip


def run(work: Path, threads: int) -> list[dict]:
    rows = []
    for name, model, params, seq_len, calibrate, data in CASES:
        bundle = work / name.split(",")[0].replace(" ", "-")
        export_bundle(
            ExportRequest(
                model or str(minilm_folder()),
                bundle,
                ReductionConfig("tome", params),
                seq_len=seq_len,
                force=True,
            )
        )
        calibration = calibrate(bundle)
        for backend in ("ort", "openvino"):
            quantize_bundle(QuantizeRequest(bundle, backend, calibration, force=True))
        for runtime in STACKS:
            result = evaluate(bundle, data, threads=threads, runtime=runtime)
            reference = result.reference_agreement
            low = result.agreement_min if reference is None else result.reference_agreement_min
            rows.append(
                {
                    "model": name,
                    "data": data,
                    "runtime": runtime.describe(),
                    "calibration": calibration.record(),
                    "metric": result.metric,
                    "reduced": result.value,
                    "full": result.full_value,
                    "agreement_metric": result.agreement_metric,
                    "reduced_vs_reference": result.agreement if reference is None else reference,
                    "reduced_vs_reference_min": low,
                    "full_vs_reference": (
                        1.0 if reference is None else result.full_reference_agreement
                    ),
                    "examples": result.examples,
                }
            )
            print(json.dumps(rows[-1]))
    return rows


def table(rows: list[dict]) -> Table:
    out = Table(title="reduction x precision vs the full model on ONNX Runtime fp32")
    for column in ("model", "runtime", "metric", "reduced", "full", "agreement", "reduced vs ref",
                   "full vs ref"):  # fmt: skip
        out.add_column(
            column, justify="left" if column in ("model", "runtime", "metric") else "right"
        )
    for row in rows:
        low = row["reduced_vs_reference_min"]
        out.add_row(
            row["model"],
            row["runtime"],
            row["metric"],
            f"{row['reduced']:.4f}",
            f"{row['full']:.4f}",
            row["agreement_metric"],
            f"{row['reduced_vs_reference']:.4f}" + (f" (min {low:.3f})" if low is not None else ""),
            f"{row['full_vs_reference']:.4f}",
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "precision_fidelity.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = run(Path(work), args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    Console().print(table(rows))


if __name__ == "__main__":
    main()

"""Evaluate a bundle on a data set: its reduced graph, its full graph, and how far they agree.

Each graph runs through ``trimformer.runtime.load`` on one runtime (a backend and a precision,
ONNX Runtime fp32 by default), in batches. The task metric is computed for both graphs on the
same inputs; agreement compares the reduced graph's outputs with the full graph's (top-1 for
classifiers, cosine for embeddings). On any other runtime (OpenVINO, bf16, int8) the full graph
also runs on ONNX Runtime fp32, the reference: the reduced graph's agreement with it is the
combined cost of reduction and precision, and the full graph's is the precision's alone. A
bundle exported with ``--method none`` has only its model graph, which is the full model: then
agreement is measured against the reference only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trimformer.bundle import read_manifest
from trimformer.errors import UsageError
from trimformer.evaluation import metrics
from trimformer.runtime import load
from trimformer.runtime.options import FP32_ORT, RuntimeOptions
from trimformer.runtime.session import Session

__all__ = ["DATA_SETS", "EvalResult", "Progress", "data_inputs", "evaluate"]

# data set -> the modality of bundle it needs
DATA_SETS = {"fashion-mnist": "image", "lee": "text", "polarity": "text"}
IMAGE_INPUT = "pixel_values"
TEXT_INPUT = "input_ids"
TEXT_OUTPUT = "sentence_embedding"

Progress = Callable[[str, int, int], None]  # (model | full | reference, examples done, in all)


@dataclass(frozen=True)
class EvalResult:
    """One data set's figures for one bundle on one runtime; ``full_value``/agreement are None
    without full, the ``reference_*`` figures None on ONNX Runtime fp32 (the reference itself).

    ``reference_agreement``: the reduced graph on ``runtime`` vs the full graph on ONNX Runtime
    fp32; ``full_reference_agreement``: the full graph on ``runtime`` vs the same.
    """

    bundle: str
    data: str
    metric: str
    examples: int
    value: float
    full_value: float | None
    agreement_metric: str
    agreement: float | None
    agreement_min: float | None
    note: str | None
    runtime: str = FP32_ORT.describe()
    reference_agreement: float | None = None
    reference_agreement_min: float | None = None
    full_reference_agreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Task:
    """What one data set needs: the inputs, and how to score a graph's outputs."""

    metric: str
    agreement_metric: str
    inputs: dict[str, np.ndarray]
    output: str
    score: Callable[[np.ndarray], float]


def evaluate(
    bundle: str | Path,
    data: str,
    limit: int | None = None,
    batch: int = 64,
    threads: int | None = None,
    progress: Progress | None = None,
    runtime: RuntimeOptions = FP32_ORT,
) -> EvalResult:
    """Run ``bundle``'s graphs on ``data`` (fashion-mnist, lee or polarity) on ``runtime`` and
    score them (and, off the reference runtime, compare them with the reference)."""
    bundle = Path(bundle)
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    manifest = read_manifest(bundle)
    _check_data(bundle, manifest, data)
    task = _task(bundle, manifest, data, limit)
    graphs = ["model", "full"] if "full" in manifest["graphs"] else ["model"]
    outputs = {g: _run(bundle, g, task, batch, threads, progress, runtime, g) for g in graphs}
    reduced, full = outputs["model"], outputs.get("full")
    note = None
    agreement = agreement_min = None
    if full is None:
        note = (
            f"{bundle} has no full graph (exported with --method none: its model graph is the "
            "full model), so agreement is not measured"
        )
    else:
        agreement, agreement_min = _agreement(task, reduced, full)
    reference = reference_min = full_reference = None
    if runtime != FP32_ORT:
        reference_graph = graphs[-1]
        baseline = _run(
            bundle, reference_graph, task, batch, threads, progress, FP32_ORT, "reference"
        )
        reference, reference_min = _agreement(task, reduced, baseline)
        if full is not None:
            full_reference, _ = _agreement(task, full, baseline)
        note = None
    return EvalResult(
        bundle=str(bundle),
        data=data,
        metric=task.metric,
        examples=len(next(iter(task.inputs.values()))),
        value=task.score(reduced),
        full_value=task.score(full) if full is not None else None,
        agreement_metric=task.agreement_metric,
        agreement=agreement,
        agreement_min=agreement_min,
        note=note,
        runtime=runtime.describe(),
        reference_agreement=reference,
        reference_agreement_min=reference_min,
        full_reference_agreement=full_reference,
    )


def _agreement(task: _Task, outputs: np.ndarray, against: np.ndarray) -> tuple[float, float | None]:
    """Top-1 agreement (no minimum), or the mean and minimum cosine of embeddings."""
    if task.agreement_metric == "top-1 agreement":
        return metrics.top1_agreement(outputs, against), None
    cosines = metrics.cosine_rows(outputs, against)
    return float(cosines.mean()), float(cosines.min())


def data_inputs(bundle: str | Path, data: str, limit: int | None = None) -> dict[str, np.ndarray]:
    """The inputs ``bundle``'s graphs take for ``data`` (name -> array, a row per example), as
    ``evaluate`` feeds them: what a quantizer calibrates on."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    _check_data(bundle, manifest, data)
    return _task(bundle, manifest, data, limit).inputs


def _check_data(bundle: Path, manifest: Mapping[str, Any], data: str) -> None:
    if data not in DATA_SETS:
        raise UsageError(f"unknown data set {data!r}; choose from {', '.join(DATA_SETS)}")
    modality = _modality(bundle, manifest)
    if modality != DATA_SETS[data]:
        fits = ", ".join(name for name, kind in DATA_SETS.items() if kind == modality)
        raise UsageError(
            f"{bundle} takes {modality} input, but --data {data} needs {DATA_SETS[data]} "
            f"input; use --data {fits} or a {DATA_SETS[data]} bundle"
        )


def _modality(bundle: Path, manifest: Mapping[str, Any]) -> str:
    """image or text, from the names of the model graph's inputs."""
    try:
        names = [spec["name"] for spec in manifest["graphs"]["model"]["inputs"]]
    except (KeyError, TypeError):
        raise UsageError(f"{bundle}: manifest lists no model graph inputs; re-export it") from None
    if IMAGE_INPUT in names:
        return "image"
    if TEXT_INPUT in names:
        return "text"
    raise UsageError(
        f"{bundle} takes inputs {names}, neither {IMAGE_INPUT} (images) nor {TEXT_INPUT} (text); "
        "evaluate an image or text bundle"
    )


def _task(bundle: Path, manifest: Mapping[str, Any], data: str, limit: int | None) -> _Task:
    if data == "fashion-mnist":
        return _fashion_mnist_task(bundle, manifest, limit)
    if data == "lee":
        from trimformer.evaluation.text_data import read_lee

        lee = read_lee(limit)
        return _Task(
            "Spearman vs human similarity",
            "cosine",
            _tokenize(bundle, manifest, lee.documents),
            TEXT_OUTPUT,
            lambda emb: metrics.spearman(
                metrics.pair_cosines(emb, lee.first, lee.second), lee.ratings
            ),
        )
    from trimformer.evaluation.text_data import read_polarity

    polarity = read_polarity(limit)
    return _Task(
        "5-fold logistic accuracy",
        "cosine",
        _tokenize(bundle, manifest, polarity.sentences),
        TEXT_OUTPUT,
        lambda emb: metrics.logistic_cv_accuracy(emb, polarity.labels),
    )


def _fashion_mnist_task(bundle: Path, manifest: Mapping[str, Any], limit: int | None) -> _Task:
    from trimformer.evaluation.fashion_mnist import normalise, read_fashion_mnist

    preprocess = manifest.get("preprocess") or {}
    if list(preprocess.get("input_size", [])) != [1, 28, 28]:
        raise UsageError(
            f"{bundle} takes {preprocess.get('input_size')} images; --data fashion-mnist needs "
            "a model of 1 x 28 x 28 grayscale input (e.g. samples/models/fashion-mnist-vit)"
        )
    classes = (manifest.get("model") or {}).get("num_classes")
    if classes != 10:
        raise UsageError(
            f"{bundle} predicts {classes} classes; --data fashion-mnist needs a 10-class model"
        )
    images, labels = read_fashion_mnist("test")
    images, labels = images[:limit], labels[:limit]
    pixels = normalise(images, preprocess["mean"], preprocess["std"])
    return _Task(
        "top-1 accuracy",
        "top-1 agreement",
        {IMAGE_INPUT: pixels},
        "logits",
        lambda logits: metrics.top1_accuracy(logits, labels),
    )


def _tokenize(bundle: Path, manifest: Mapping[str, Any], texts: list[str]) -> dict[str, np.ndarray]:
    """Token arrays for every input the model graph declares, made by the bundle's tokenizer."""
    preprocess = manifest.get("preprocess") or {}
    name = str(preprocess.get("tokenizer", "tokenizer"))
    folder = bundle / name
    if Path(name).name != name or not folder.is_dir():
        raise UsageError(f"{bundle} has no tokenizer folder {folder.name}/; re-export the bundle")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UsageError(
            "text bundles need transformers for their tokenizer; pip install transformers"
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    specs = manifest["graphs"]["model"]["inputs"]
    seq = next(s["shape"][1] for s in specs if s["name"] == TEXT_INPUT)
    max_length = seq if isinstance(seq, int) else preprocess.get("max_length")
    encoded = tokenizer(
        texts,
        padding="max_length" if max_length else True,
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    feed = {}
    for spec in specs:
        if spec["name"] not in encoded:
            raise UsageError(
                f"{bundle}: the graph takes {spec['name']!r}, which its tokenizer does not "
                "produce; re-export the bundle"
            )
        feed[spec["name"]] = np.asarray(encoded[spec["name"]]).astype(spec["dtype"])
    return feed


def _run(
    bundle: Path,
    graph: str,
    task: _Task,
    batch: int,
    threads: int | None,
    progress: Progress | None,
    runtime: RuntimeOptions,
    label: str,
) -> np.ndarray:
    """Outputs of one graph on ``runtime`` for all inputs, in batches (of the graph's size when
    it is fixed); progress is reported under ``label``."""
    opts = runtime.load_options()
    with load(bundle, graph=graph, threads=threads, **opts) as session:
        if task.output not in {spec.name for spec in session.outputs}:
            names = [spec.name for spec in session.outputs]
            raise UsageError(
                f"{bundle}: graph {graph!r} outputs {names}, not {task.output!r}; "
                "re-export the bundle"
            )
        fixed = session.inputs[0].shape[0]
        size = fixed if isinstance(fixed, int) else batch
        total = len(next(iter(task.inputs.values())))
        chunks = []
        for start in range(0, total, size):
            chunks.append(_run_batch(session, task, start, size, total))
            if progress is not None:
                progress(label, min(start + size, total), total)
    return np.concatenate(chunks)


def _run_batch(session: Session, task: _Task, start: int, size: int, total: int) -> np.ndarray:
    """One batch; a short last batch of a fixed-batch graph is padded and the padding dropped."""
    stop = min(start + size, total)
    feed = {}
    for name, array in task.inputs.items():
        rows = array[start:stop]
        if len(rows) < size and isinstance(session.inputs[0].shape[0], int):
            rows = np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)])
        feed[name] = rows
    return session.run(feed)[task.output][: stop - start]

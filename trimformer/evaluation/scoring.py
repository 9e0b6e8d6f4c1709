"""Turn a bundle's outputs on prepared data into figures: the task metric of the reduced and full
graphs, and how far the reduced graph agrees with the full one.

What the metric is depends on what the data carries:

* class labels, classifier: top-1 (the metric) and top-5 accuracy, and the top-1 drop
  (full - reduced) with a 95 % paired-bootstrap interval;
* class labels, embeddings: 5-fold logistic-regression accuracy on the embeddings;
* rated pairs: Spearman correlation of the pairs' embedding cosines with the ratings;
* nothing: agreement with the full model is the metric (top-1 agreement, or mean cosine).

Agreement is always reported: top-1 agreement, top-5 overlap and mean KL(full || reduced) for
classifiers; mean, 5th-percentile and minimum cosine for embeddings. "Truth" for label-free
metrics is the full graph on ONNX Runtime fp32 (the reference), so off that runtime they include
the precision's cost, as ``reference_agreement`` does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from trimformer.evaluation import metrics
from trimformer.evaluation.sources import Prepared
from trimformer.runtime.options import FP32_ORT

__all__ = ["EvalResult", "Outputs", "score"]

TOP1_AGREEMENT = "top-1 agreement"
COSINE = "cosine"


@dataclass(frozen=True)
class Outputs:
    """A bundle's outputs on the prepared data: reduced graph, full graph (None: the bundle has
    none) and the full graph on ONNX Runtime fp32 (None: the runtime is that reference)."""

    reduced: np.ndarray
    full: np.ndarray | None
    reference: np.ndarray | None


@dataclass(frozen=True)
class EvalResult:
    """One data set's figures for one bundle on one runtime (see the module docstring).

    ``full_value`` and the agreement figures are None without a full graph; the
    ``reference_*`` figures are None on ONNX Runtime fp32. ``reference_agreement``: the reduced
    graph on ``runtime`` vs the full graph on ONNX Runtime fp32; ``full_reference_agreement``:
    the full graph on ``runtime`` vs the same. ``skipped``: unreadable files left out.
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
    labelled: bool = True
    top5: float | None = None
    full_top5: float | None = None
    drop: float | None = None
    drop_ci95: tuple[float, float] | None = None
    top5_overlap: float | None = None
    kl: float | None = None
    agreement_p5: float | None = None
    skipped: int = 0
    cached: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def score(bundle: str, data: str, prepared: Prepared, outputs: Outputs) -> dict[str, Any]:
    """EvalResult's fields for these outputs (all but runtime, note and cached)."""
    classifier = prepared.output == "logits"
    reduced, full = outputs.reduced, outputs.full
    truth = outputs.reference if outputs.reference is not None else full
    fields: dict[str, Any] = {
        "bundle": bundle,
        "data": data,
        "examples": prepared.examples,
        "agreement_metric": TOP1_AGREEMENT if classifier else COSINE,
        "labelled": prepared.labels is not None or prepared.pairs is not None,
        "skipped": len(prepared.skipped),
        "agreement": None,
        "agreement_min": None,
    }
    if full is not None:
        fields.update(_agreement(classifier, reduced, full))
    if outputs.reference is not None:
        fields["reference_agreement"], fields["reference_agreement_min"] = _mean_min(
            classifier, reduced, outputs.reference
        )
        if full is not None:
            fields["full_reference_agreement"] = _mean_min(classifier, full, outputs.reference)[0]
    fields.update(_task(classifier, prepared, reduced, full, truth))
    return fields


def _task(
    classifier: bool,
    prepared: Prepared,
    reduced: np.ndarray,
    full: np.ndarray | None,
    truth: np.ndarray | None,
) -> dict[str, Any]:
    """metric, value, full_value (and for labelled classifiers top-5 and the drop)."""
    labels, pairs = prepared.labels, prepared.pairs
    if classifier and labels is not None:
        task: dict[str, Any] = {
            "metric": "top-1 accuracy",
            "value": metrics.top1_accuracy(reduced, labels),
        }
        task["top5"] = metrics.topk_accuracy(reduced, labels)
        task["full_value"] = None
        if full is not None:
            right_full = full.argmax(axis=1) == labels
            right_reduced = reduced.argmax(axis=1) == labels
            task["full_value"] = float(right_full.mean())
            task["full_top5"] = metrics.topk_accuracy(full, labels)
            task["drop"] = task["full_value"] - task["value"]
            task["drop_ci95"] = metrics.bootstrap_difference_ci(right_full, right_reduced)
        return task
    if pairs is not None:

        def spearman(emb: np.ndarray) -> float:
            cosines = metrics.pair_cosines(emb, pairs.first, pairs.second)
            return metrics.spearman(cosines, pairs.scores)

        return _both("Spearman vs human similarity", spearman, reduced, full)
    if labels is not None:
        return _both(
            "5-fold logistic accuracy",
            lambda emb: metrics.logistic_cv_accuracy(emb, labels),
            reduced,
            full,
        )
    # No labels: agreement with the full model on the reference runtime is the metric.
    name = f"{TOP1_AGREEMENT} with full" if classifier else "mean cosine with full"
    if truth is None:  # the bundle's only graph is the full model, on the reference runtime
        return {"metric": name, "value": 1.0, "full_value": None}
    return _both(name, lambda out: _mean_min(classifier, out, truth)[0], reduced, full)


def _both(name: str, value: Any, reduced: np.ndarray, full: np.ndarray | None) -> dict[str, Any]:
    return {
        "metric": name,
        "value": value(reduced),
        "full_value": value(full) if full is not None else None,
    }


def _mean_min(
    classifier: bool, outputs: np.ndarray, against: np.ndarray
) -> tuple[float, float | None]:
    """Top-1 agreement (no minimum), or the mean and minimum cosine of embeddings."""
    if classifier:
        return metrics.top1_agreement(outputs, against), None
    cosines = metrics.cosine_rows(outputs, against)
    return float(cosines.mean()), float(cosines.min())


def _agreement(classifier: bool, reduced: np.ndarray, full: np.ndarray) -> dict[str, Any]:
    """The reduced graph against the full one on the same runtime."""
    if classifier:
        return {
            "agreement": metrics.top1_agreement(reduced, full),
            "top5_overlap": metrics.topk_overlap(reduced, full),
            "kl": metrics.mean_kl(reduced, full),
        }
    cosines = metrics.cosine_rows(reduced, full)
    return {
        "agreement": float(cosines.mean()),
        "agreement_min": float(cosines.min()),
        "agreement_p5": float(np.percentile(cosines, 5)),
    }

"""Task metrics, and agreement between a reduced graph's outputs and the full graph's.

scipy and scikit-learn are imported inside the functions that need them (the ``eval`` extra).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "bootstrap_difference_ci",
    "cosine_rows",
    "logistic_cv_accuracy",
    "mean_kl",
    "pair_cosines",
    "spearman",
    "top1_accuracy",
    "top1_agreement",
    "topk_accuracy",
    "topk_overlap",
]


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose highest logit is the label."""
    return float(np.mean(logits.argmax(axis=1) == labels))


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of rows where two models pick the same class."""
    return float(np.mean(logits.argmax(axis=1) == reference.argmax(axis=1)))


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's ``k`` highest logits (k capped at the number of classes)."""
    k = min(k, logits.shape[1])
    return np.argpartition(-logits, k - 1, axis=1)[:, :k]


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Share of rows whose label is among the ``k`` highest logits."""
    return float(np.mean(np.any(_topk(logits, k) == labels[:, None], axis=1)))


def topk_overlap(logits: np.ndarray, reference: np.ndarray, k: int = 5) -> float:
    """Mean share of the reference's top-``k`` classes that are also in ``logits``' top-``k``."""
    mine, theirs = _topk(logits, k), _topk(reference, k)
    shared = (mine[:, :, None] == theirs[:, None, :]).any(axis=2).sum(axis=1)
    return float(np.mean(shared / mine.shape[1]))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def mean_kl(logits: np.ndarray, reference: np.ndarray) -> float:
    """Mean KL(reference || logits) of the two softmax distributions, in nats: how much of the
    reference's belief a reduced model loses, 0 when they agree exactly."""
    log_p, log_q = _log_softmax(reference), _log_softmax(logits)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))


def bootstrap_difference_ci(
    first: np.ndarray, second: np.ndarray, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95 % interval of mean(first) - mean(second) by the paired bootstrap: examples are drawn
    with replacement, the same draw for both, so the interval reflects the examples on which
    the two differ (e.g. 0/1 correctness of the full and the reduced model)."""
    difference = first.astype(np.float64) - second.astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            difference[rng.integers(0, len(difference), size=(100, len(difference)))].mean(axis=1)
            for _ in range(resamples // 100)
        ]
    )
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (0 for a zero row)."""
    return np.sum(_unit(a) * _unit(b), axis=1)


def pair_cosines(embeddings: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine similarity of embeddings[first[k]] and embeddings[second[k]] for every k."""
    unit = _unit(embeddings)
    return np.sum(unit[first] * unit[second], axis=1)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties get average ranks)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def logistic_cv_accuracy(
    embeddings: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0
) -> float:
    """Mean accuracy of a logistic regression on standardised embeddings, stratified k-fold.

    The folds are shuffled with a fixed seed, so reduced and full embeddings are scored on the
    same splits and a rerun gives the same number.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(classifier, embeddings, labels, cv=splits)))

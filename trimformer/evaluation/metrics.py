"""Task metrics, and agreement between a reduced graph's outputs and the full graph's.

scipy and scikit-learn are imported inside the functions that need them (the ``eval`` extra).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cosine_rows",
    "logistic_cv_accuracy",
    "pair_cosines",
    "spearman",
    "top1_accuracy",
    "top1_agreement",
]


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose highest logit is the label."""
    return float(np.mean(logits.argmax(axis=1) == labels))


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of rows where two models pick the same class."""
    return float(np.mean(logits.argmax(axis=1) == reference.argmax(axis=1)))


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

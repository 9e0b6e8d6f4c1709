"""Read the small labelled text sets that ship inside gensim's test data.

* Lee: 50 news documents (``lee.cor``) and the mean human similarity rating of every pair of them
  (``similarities0-1.txt``: a 50 x 50 matrix whose upper triangle holds the 1225 pairs).
* Pang & Lee polarity: 200 movie-review sentences, 100 negative and 100 positive, each line
  ``__label__neg TEXT`` or ``__label__pos TEXT`` (``pang_lee_polarity.cor``).

The files are Windows-1252 text. gensim is imported only to locate them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trimformer.errors import UsageError

__all__ = ["LeeData", "PolarityData", "gensim_data_file", "read_lee", "read_polarity"]

_ENCODING = "cp1252"
_POLARITY_LABELS = {"__label__neg": 0, "__label__pos": 1}


@dataclass(frozen=True)
class LeeData:
    """Documents and the human rating of each pair (first[k], second[k]), first < second."""

    documents: list[str]
    first: np.ndarray
    second: np.ndarray
    ratings: np.ndarray


@dataclass(frozen=True)
class PolarityData:
    """Sentences and their labels (0: negative, 1: positive)."""

    sentences: list[str]
    labels: np.ndarray


def gensim_data_file(name: str) -> Path:
    """Path of one of gensim's test data files; a clear error when gensim is missing."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise UsageError(
            "the text data sets come with gensim; install them with pip install 'trimformer[eval]'"
        ) from None
    path = Path(datapath(name))
    if not path.is_file():
        raise UsageError(f"{path} is missing from this gensim; reinstall gensim")
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding=_ENCODING).splitlines()


def read_lee(limit: int | None = None) -> LeeData:
    """The Lee documents (the first ``limit`` of them) and the ratings of all their pairs."""
    documents = [line.strip() for line in _lines(gensim_data_file("lee.cor")) if line.strip()]
    matrix = np.loadtxt(gensim_data_file("similarities0-1.txt"), dtype=np.float64)
    if matrix.shape != (len(documents), len(documents)):
        raise UsageError(
            f"similarities0-1.txt is {matrix.shape} for {len(documents)} documents; "
            "reinstall gensim"
        )
    if limit is not None:
        if limit < 3:
            raise UsageError(f"--limit {limit} is too small for lee; give at least 3 documents")
        documents = documents[:limit]
    first, second = np.triu_indices(len(documents), k=1)
    return LeeData(documents, first, second, matrix[first, second])


def read_polarity(limit: int | None = None) -> PolarityData:
    """The polarity sentences; ``limit`` keeps that many, alternating classes to stay balanced."""
    by_label: dict[int, list[str]] = {0: [], 1: []}
    path = gensim_data_file("pang_lee_polarity.cor")
    for number, line in enumerate(_lines(path), start=1):
        tag, _, text = line.partition(" ")
        if tag not in _POLARITY_LABELS:
            raise UsageError(f"{path}:{number} has no __label__neg/pos tag; reinstall gensim")
        by_label[_POLARITY_LABELS[tag]].append(text.strip())
    if limit is not None and limit < 10:
        raise UsageError(f"--limit {limit} is too small for polarity's 5 folds; give at least 10")
    ranked = sorted(  # (position in its class, label): negative, positive, negative, ...
        (index, label, text)
        for label, texts in by_label.items()
        for index, text in enumerate(texts)
    )[:limit]
    return PolarityData(
        [text for _, _, text in ranked], np.array([label for _, label, _ in ranked], dtype=np.int64)
    )

"""``texts:FILE``: the user's texts, one a line (``.txt``) or a named column of a ``.jsonl`` /
``.csv`` / ``.tsv`` file, optionally with a label column.

Options (``texts:FILE?column=text&label=topic&encoding=utf-8``): ``column`` names the text column
(default ``text``), ``label`` a class column (its values, numbers or names, become classes), and
``encoding`` the file's (default UTF-8). With labels the embeddings are scored by a 5-fold
logistic regression, as the built-in polarity set is; without, by cosine with the full model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trimformer.errors import UsageError
from trimformer.evaluation.sources.base import (
    Prepared,
    Progress,
    digest_files,
    preprocessing_identity,
    sample_indices,
)
from trimformer.evaluation.sources.tables import COLUMN_SUFFIXES, column, dict_rows, read_lines
from trimformer.evaluation.tokenize import TEXT_OUTPUT, tokenize, tokenizer_folder

__all__ = ["MIN_PER_CLASS", "TextFile", "class_indices"]

MIN_PER_CLASS = 5
"""Examples each class needs for the 5-fold logistic regression."""


def class_indices(values: list[Any]) -> np.ndarray:
    """Labels as class indices: integers as they are, anything else by sorted name."""
    texts = [str(v).strip() for v in values]
    if all(t.lstrip("-").isdigit() for t in texts):
        return np.array([int(t) for t in texts], dtype=np.int64)
    names = sorted(set(texts))
    return np.array([names.index(t) for t in texts], dtype=np.int64)


@dataclass(frozen=True)
class TextFile:
    """Texts from ``path``: lines, or ``column`` of a table (with an optional ``label``)."""

    spec: str
    path: Path
    column: str | None = None
    label: str | None = None
    encoding: str = "utf-8"
    modality: str = "text"

    def prepare(
        self,
        bundle: Path,
        manifest: Mapping[str, Any],
        limit: int | None,
        strict: bool,
        progress: Progress | None,
    ) -> Prepared:
        texts, labels = self._read()
        chosen = sample_indices(len(texts), limit)
        texts = [texts[i] for i in chosen]
        labels = labels[chosen] if labels is not None else None
        if labels is not None:
            counts = np.bincount(labels - labels.min())
            if (counts[counts > 0] < MIN_PER_CLASS).any() or (counts > 0).sum() < 2:
                raise UsageError(
                    f"{self.spec}: the labels need 2+ classes of {MIN_PER_CLASS}+ texts each for "
                    f"5-fold scoring (got {sorted(counts[counts > 0].tolist())}); raise --limit "
                    "or drop ?label="
                )
        fingerprint = digest_files(
            [self.path], "texts", self.column, self.label, self.encoding, limit,
            preprocessing_identity(manifest, tokenizer_folder(manifest)),
        )  # fmt: skip
        return Prepared(
            inputs=tokenize(bundle, manifest, texts),
            output=TEXT_OUTPUT,
            fingerprint=fingerprint,
            labels=labels,
        )

    def _read(self) -> tuple[list[str], np.ndarray | None]:
        tabular = self.path.suffix.lower() in COLUMN_SUFFIXES
        if not tabular:
            if self.column is not None or self.label is not None:
                raise UsageError(
                    f"{self.spec}: a {self.path.suffix or 'plain'} file is one text a line, "
                    f"without columns; use {', '.join(COLUMN_SUFFIXES)} for ?column= / ?label="
                )
            texts = [line.strip() for line in read_lines(self.spec, self.path, self.encoding)]
            texts, labels = [t for t in texts if t], None
        else:
            rows = dict_rows(self.spec, self.path, self.encoding)
            name = self.column or "text"
            texts = [str(t).strip() for t in column(self.spec, self.path, rows, name, "column")]
            labels = (
                class_indices(column(self.spec, self.path, rows, self.label, "label"))
                if self.label is not None
                else None
            )
        if not texts:
            raise UsageError(f"{self.spec}: {self.path} holds no texts")
        return texts, labels

"""``pairs:FILE``: sentence pairs rated by people (the STS layout), scored by the Spearman
correlation of the pairs' embedding cosines with the ratings.

Layouts: a ``.tsv`` / ``.txt`` of ``text<TAB>text<TAB>score`` lines, or of the STS benchmark's
``genre file year id score text text`` lines (tab-separated, quotes kept as text); or a table
(``.csv`` with a header, ``.tsv`` with a header naming the columns, ``.jsonl``) whose columns
``?first=``, ``?second=`` and ``?score=`` name (default sentence1, sentence2, score). Each distinct
text is embedded once.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trimformer.errors import UsageError
from trimformer.evaluation.sources.base import (
    Pairs,
    Prepared,
    Progress,
    digest_files,
    preprocessing_identity,
    sample_indices,
)
from trimformer.evaluation.sources.tables import column, dict_rows, read_lines
from trimformer.evaluation.tokenize import TEXT_OUTPUT, tokenize, tokenizer_folder

__all__ = ["PairFile"]

_STS_BENCHMARK = 7  # genre, file, year, id, score, sentence 1, sentence 2 (then sources)


@dataclass(frozen=True)
class PairFile:
    """Rated text pairs from ``path``; ``first`` / ``second`` / ``score`` name table columns."""

    spec: str
    path: Path
    first: str = "sentence1"
    second: str = "sentence2"
    score: str = "score"
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
        rows = self._rows()
        rows = [rows[i] for i in sample_indices(len(rows), limit)]
        if len(rows) < 3:
            raise UsageError(f"{self.spec}: {len(rows)} pairs are too few; give at least 3")
        texts = list(dict.fromkeys(t for a, b, _ in rows for t in (a, b)))
        where = {text: index for index, text in enumerate(texts)}
        pairs = Pairs(
            first=np.array([where[a] for a, _, _ in rows]),
            second=np.array([where[b] for _, b, _ in rows]),
            scores=np.array([s for _, _, s in rows], dtype=np.float64),
        )
        fingerprint = digest_files(
            [self.path], "pairs", self.first, self.second, self.score, self.encoding, limit,
            preprocessing_identity(manifest, tokenizer_folder(manifest)),
        )  # fmt: skip
        return Prepared(tokenize(bundle, manifest, texts), TEXT_OUTPUT, fingerprint, pairs=pairs)

    def _rows(self) -> list[tuple[str, str, float]]:
        """(text, text, score) of every pair, in file order."""
        lines = read_lines(self.spec, self.path, self.encoding)
        header = next((line for line in lines if line.strip()), "")
        named = {self.first, self.second, self.score} <= set(header.split("\t"))
        if self.path.suffix.lower() in (".csv", ".jsonl") or named:
            rows = dict_rows(self.spec, self.path, self.encoding)
            values = zip(
                column(self.spec, self.path, rows, self.first, "first"),
                column(self.spec, self.path, rows, self.second, "second"),
                column(self.spec, self.path, rows, self.score, "score"),
                strict=True,
            )
            return [
                (str(a).strip(), str(b).strip(), self._number(s, n))
                for n, (a, b, s) in enumerate(values, start=2)
            ]
        pairs = []
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        for number, fields in enumerate(reader, start=1):
            if not any(f.strip() for f in fields):
                continue
            if len(fields) == 3:
                a, b, score = fields
            elif len(fields) >= _STS_BENCHMARK:
                score, a, b = fields[4], fields[5], fields[6]
            else:
                raise UsageError(
                    f"{self.path}:{number} has {len(fields)} tab-separated fields; give "
                    "text<TAB>text<TAB>score (or the STS benchmark's 7 columns)"
                )
            pairs.append((a.strip(), b.strip(), self._number(score, number)))
        return pairs

    def _number(self, value: Any, line: int) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UsageError(
                f"{self.path}:{line}: score {value!r} is not a number; fix the line"
            ) from None

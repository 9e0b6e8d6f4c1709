"""What every data source yields: a bundle's inputs for each example, and what to score against.

A source (an image folder, a text file, a pair file, a built-in set) is read for one bundle:
the bundle's manifest says how to preprocess (image size, mean, std; its tokenizer). The result,
``Prepared``, holds the graph inputs (a row per example, in the order the labels follow) and at
most one kind of ground truth: class labels, or rated pairs of examples. With neither, the only
honest measure is agreement with the full model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "SAMPLE_SEED",
    "Pairs",
    "Prepared",
    "Progress",
    "Source",
    "digest_files",
    "preprocessing_identity",
    "sample_indices",
]

SAMPLE_SEED = 0
"""Seed of the sample ``--limit`` takes from a user's data: the same examples on every run."""


Progress = Callable[[str, int, int], None]
"""A progress report: (what runs: decode | model | full | reference, done, in all)."""


@dataclass(frozen=True)
class Pairs:
    """Rated pairs of examples: ``scores[k]`` rates examples ``first[k]`` and ``second[k]``."""

    first: np.ndarray
    second: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Prepared:
    """One source read for one bundle.

    ``inputs``: graph input name -> array, a row per example. ``output``: the graph output that
    is scored (logits or an embedding). ``labels`` (class per example) or ``pairs`` or neither.
    ``skipped``: files that could not be read and were left out (labels follow what was kept).
    ``fingerprint``: a hash of the data files and of how they were read, for caches.
    """

    inputs: dict[str, np.ndarray]
    output: str
    fingerprint: str
    labels: np.ndarray | None = None
    pairs: Pairs | None = None
    skipped: tuple[str, ...] = field(default=())

    @property
    def examples(self) -> int:
        return len(next(iter(self.inputs.values())))


class Source(Protocol):
    """A data set a bundle can be evaluated on."""

    @property
    def spec(self) -> str:
        """The ``--data`` value it was named by."""
        ...

    @property
    def modality(self) -> str:
        """``image`` or ``text``: the kind of bundle it fits."""
        ...

    def prepare(
        self,
        bundle: Path,
        manifest: Mapping[str, Any],
        limit: int | None,
        strict: bool,
        progress: Progress | None,
    ) -> Prepared:
        """The inputs for ``bundle`` (at most ``limit`` examples), with labels or pairs if any.
        ``strict``: an unreadable file is an error instead of being skipped."""
        ...


def sample_indices(count: int, limit: int | None) -> np.ndarray:
    """``limit`` of ``count`` indices drawn with a fixed seed, ascending (all of them without a
    limit): a sample spread over the whole set, not its first files (one class, in a class
    layout), and the same one on every run."""
    if limit is None or limit >= count:
        return np.arange(count)
    chosen = np.random.default_rng(SAMPLE_SEED).choice(count, size=limit, replace=False)
    return np.sort(chosen)


def digest_files(paths: Iterable[Path], *extra: object) -> str:
    """sha256 of the files' names and contents, and of ``extra`` (how they are read)."""
    digest = hashlib.sha256(repr(extra).encode())
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def preprocessing_identity(manifest: Mapping[str, Any], folder: str | None = None) -> str:
    """What of a manifest decides the inputs made from data: its preprocess settings, the model
    graph's input specs and the sha256 of the files in bundle ``folder`` (the tokenizer's)."""
    files = manifest.get("files") or {}
    tokenizer = sorted(
        (name, str(entry.get("sha256")))
        for name, entry in files.items()
        if folder is not None and name.startswith(f"{folder}/")
    )
    preprocess = sorted((manifest.get("preprocess") or {}).items())
    inputs = (manifest.get("graphs") or {}).get("model", {}).get("inputs")
    return repr((preprocess, inputs, tokenizer))

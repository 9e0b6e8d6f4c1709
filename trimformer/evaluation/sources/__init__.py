"""Data a bundle is evaluated on, named on the command line by ``--data``.

* ``fashion-mnist``, ``lee``, ``polarity``: the built-in sets;
* ``images:DIR[?labels=FILE]``: a folder of images, labelled by class subfolders or a file;
* ``texts:FILE[?column=C&label=L&encoding=E]``: texts, a line each or a column of a table;
* ``pairs:FILE[?first=A&second=B&score=S&encoding=E]``: rated sentence pairs (STS).

Each is one module with a class of the ``Source`` interface; ``parse_source`` maps a ``--data``
value to one.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from trimformer.errors import UsageError
from trimformer.evaluation.sources.base import Pairs, Prepared, Progress, Source
from trimformer.evaluation.sources.builtin import BUILT_IN
from trimformer.evaluation.sources.images import ImageFolder
from trimformer.evaluation.sources.pairs import PairFile
from trimformer.evaluation.sources.texts import TextFile

__all__ = ["DATA_HELP", "Pairs", "Prepared", "Progress", "Source", "parse_source"]

DATA_HELP = (
    "fashion-mnist | lee | polarity | images:DIR[?labels=FILE] | "
    "texts:FILE[?column=C&label=L] | pairs:FILE (text<TAB>text<TAB>score)"
)
_OPTIONS = {
    "images": ("labels",),
    "texts": ("column", "label", "encoding"),
    "pairs": ("first", "second", "score", "encoding"),
}


def parse_source(spec: str) -> Source:
    """The source a ``--data`` value names; a UsageError that lists the forms otherwise."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    kind, colon, rest = spec.partition(":")
    if not colon or kind not in _OPTIONS:
        raise UsageError(
            f"unknown data set {spec!r}; choose from {', '.join(BUILT_IN)}, or give "
            "images:DIR, texts:FILE or pairs:FILE"
        )
    location, _, query = rest.partition("?")
    if not location:
        raise UsageError(f"--data {spec}: give a path after {kind}:")
    options = dict(parse_qsl(query, keep_blank_values=True))
    if unknown := sorted(set(options) - set(_OPTIONS[kind])):
        raise UsageError(
            f"--data {spec}: {kind}: takes no option {', '.join(unknown)}; it takes "
            f"{', '.join(_OPTIONS[kind])}"
        )
    if empty := sorted(k for k, v in options.items() if not v):
        raise UsageError(f"--data {spec}: option {empty[0]} needs a value ({empty[0]}=...)")
    path = Path(location).expanduser()
    if kind == "images":
        labels = options.get("labels")
        return ImageFolder(spec, path, Path(labels).expanduser() if labels else None)
    if kind == "texts":
        return TextFile(spec, path, **options)
    return PairFile(spec, path, **options)

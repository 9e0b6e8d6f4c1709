"""A text bundle's inputs for a list of texts, made by the tokenizer the bundle carries."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trimformer.errors import UsageError

__all__ = ["TEXT_INPUT", "TEXT_OUTPUT", "tokenize", "tokenizer_folder"]

TEXT_INPUT = "input_ids"
TEXT_OUTPUT = "sentence_embedding"


def tokenizer_folder(manifest: Mapping[str, Any]) -> str:
    """The name of the bundle folder holding the tokenizer."""
    return str((manifest.get("preprocess") or {}).get("tokenizer", "tokenizer"))


def tokenize(bundle: Path, manifest: Mapping[str, Any], texts: list[str]) -> dict[str, np.ndarray]:
    """Token arrays for every input the model graph declares, padded to its sequence length."""
    preprocess = manifest.get("preprocess") or {}
    name = tokenizer_folder(manifest)
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

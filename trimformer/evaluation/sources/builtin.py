"""The built-in data sets as sources: ``fashion-mnist`` (the test split, top-1 of a 1 x 28 x 28
classifier), ``lee`` (50 news documents rated in pairs by people) and ``polarity`` (200 labelled
review sentences). ``--limit`` keeps their first examples, as it always has."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimformer.errors import UsageError
from trimformer.evaluation.sources.base import (
    Pairs,
    Prepared,
    Progress,
    digest_files,
    preprocessing_identity,
)
from trimformer.evaluation.sources.images import IMAGE_INPUT
from trimformer.evaluation.tokenize import TEXT_OUTPUT, tokenize, tokenizer_folder

__all__ = ["BUILT_IN", "FashionMnist", "Lee", "Polarity"]


@dataclass(frozen=True)
class FashionMnist:
    spec: str = "fashion-mnist"
    modality: str = "image"

    def prepare(
        self,
        bundle: Path,
        manifest: Mapping[str, Any],
        limit: int | None,
        strict: bool,
        progress: Progress | None,
    ) -> Prepared:
        from trimformer.evaluation.fashion_mnist import DEFAULT_ROOT, normalise, read_fashion_mnist

        preprocess = manifest.get("preprocess") or {}
        if list(preprocess.get("input_size", [])) != [1, 28, 28]:
            raise UsageError(
                f"{bundle} takes {preprocess.get('input_size')} images; --data fashion-mnist "
                "needs a model of 1 x 28 x 28 grayscale input (e.g. samples/models/"
                "fashion-mnist-vit)"
            )
        classes = (manifest.get("model") or {}).get("num_classes")
        if classes != 10:
            raise UsageError(
                f"{bundle} predicts {classes} classes; --data fashion-mnist needs a 10-class model"
            )
        images, labels = read_fashion_mnist("test")
        images, labels = images[:limit], labels[:limit]
        files = sorted(DEFAULT_ROOT.glob("t10k-*"))
        return Prepared(
            inputs={IMAGE_INPUT: normalise(images, preprocess["mean"], preprocess["std"])},
            output="logits",
            fingerprint=digest_files(files, self.spec, limit, preprocessing_identity(manifest)),
            labels=labels,
        )


def _text_fingerprint(name: str, files: list[str], limit: int | None, manifest: Any) -> str:
    from trimformer.evaluation.text_data import gensim_data_file

    identity = preprocessing_identity(manifest, tokenizer_folder(manifest))
    return digest_files([gensim_data_file(f) for f in files], name, limit, identity)


@dataclass(frozen=True)
class Lee:
    spec: str = "lee"
    modality: str = "text"

    def prepare(
        self,
        bundle: Path,
        manifest: Mapping[str, Any],
        limit: int | None,
        strict: bool,
        progress: Progress | None,
    ) -> Prepared:
        from trimformer.evaluation.text_data import read_lee

        lee = read_lee(limit)
        return Prepared(
            inputs=tokenize(bundle, manifest, lee.documents),
            output=TEXT_OUTPUT,
            fingerprint=_text_fingerprint(
                self.spec, ["lee.cor", "similarities0-1.txt"], limit, manifest
            ),
            pairs=Pairs(lee.first, lee.second, lee.ratings),
        )


@dataclass(frozen=True)
class Polarity:
    spec: str = "polarity"
    modality: str = "text"

    def prepare(
        self,
        bundle: Path,
        manifest: Mapping[str, Any],
        limit: int | None,
        strict: bool,
        progress: Progress | None,
    ) -> Prepared:
        from trimformer.evaluation.text_data import read_polarity

        polarity = read_polarity(limit)
        return Prepared(
            inputs=tokenize(bundle, manifest, polarity.sentences),
            output=TEXT_OUTPUT,
            fingerprint=_text_fingerprint(self.spec, ["pang_lee_polarity.cor"], limit, manifest),
            labels=polarity.labels,
        )


BUILT_IN = {source.spec: source for source in (FashionMnist(), Lee(), Polarity())}

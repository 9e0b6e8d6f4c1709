"""``images:DIR``: a folder of the user's images, labelled by class subfolders, by a label file,
or not at all.

Layouts (the ones torchvision's ImageFolder and ImageNet's validation set use):

* class subfolders, ``DIR/<class>/**/<image>``: the label is the index of the class in sorted
  order of the subfolder names (n01440364, n01443537, ... give ImageNet's indices);
* a flat folder with ``?labels=FILE``: each line of FILE is ``<file name> <class index>``
  (whitespace, comma or tab between; a header line is allowed), as ImageNet's validation
  ground truth is often given;
* a flat folder alone: unlabelled, scored by agreement with the full model.

Images are decoded and preprocessed with the bundle's own settings (``runtime.preprocess``: PIL,
no torch) on a few threads, into a memory-mapped scratch file, so a large folder does not have
to fit in memory. A file PIL cannot read is skipped and counted (an error with ``strict``).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trimformer.errors import UsageError
from trimformer.evaluation.sources.base import (
    Prepared,
    Progress,
    digest_files,
    preprocessing_identity,
    sample_indices,
)
from trimformer.runtime.preprocess import UnreadableImage, load_image

__all__ = ["IMAGE_INPUT", "ImageFolder", "image_files"]

IMAGE_INPUT = "pixel_values"
_DECODE_THREADS = min(8, os.cpu_count() or 1)


def image_files(folder: Path) -> list[Path]:
    """Files under ``folder`` (recursively) whose extension PIL knows, in sorted path order;
    hidden files and folders are left out."""
    known = set(Image.registered_extensions())
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in known
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


@dataclass(frozen=True)
class ImageFolder:
    """The images under ``root``; ``labels_file`` labels a flat folder."""

    spec: str
    root: Path
    labels_file: Path | None = None
    modality: str = "image"

    def prepare(
        self,
        bundle: Path,
        manifest: Mapping[str, Any],
        limit: int | None,
        strict: bool,
        progress: Progress | None,
    ) -> Prepared:
        files, labels = self._listing()
        _check_classes(self.spec, labels, manifest)
        chosen = sample_indices(len(files), limit)
        files = [files[i] for i in chosen]
        labels = labels[chosen] if labels is not None else None
        preprocess = manifest.get("preprocess") or {}
        if "input_size" not in preprocess:
            raise UsageError(f"{bundle}: manifest has no image preprocess settings; re-export it")
        pixels, kept = _decode(files, preprocess, strict, progress)
        if not kept.any():
            raise UsageError(f"{self.spec}: none of its {len(files)} images can be read by PIL")
        fingerprint = digest_files(
            files, "images", limit, strict, [str(f.relative_to(self.root)) for f in files],
            None if labels is None else labels.tolist(), preprocessing_identity(manifest),
        )  # fmt: skip
        return Prepared(
            inputs={IMAGE_INPUT: pixels[kept] if not kept.all() else pixels},
            output="logits",
            fingerprint=fingerprint,
            labels=labels[kept] if labels is not None else None,
            skipped=tuple(str(f) for f, ok in zip(files, kept, strict=True) if not ok),
        )

    def _listing(self) -> tuple[list[Path], np.ndarray | None]:
        """Every image file and its label (None: unlabelled), in a fixed order."""
        if not self.root.is_dir():
            raise UsageError(f"{self.spec}: {self.root} is not a folder; give a folder of images")
        classes = sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if self.labels_file is not None:
            if classes:
                raise UsageError(
                    f"{self.spec}: {self.root} has class subfolders and a labels file; "
                    "give one of them (drop ?labels= to label by subfolder)"
                )
            return _labelled_by_file(self.spec, self.root, self.labels_file)
        if not classes:
            files = image_files(self.root)
            if not files:
                raise UsageError(f"{self.spec}: {self.root} holds no image files PIL knows")
            return files, None
        files, labels = [], []
        for index, folder in enumerate(classes):
            mine = image_files(folder)
            if not mine:
                raise UsageError(
                    f"{self.spec}: class folder {folder.name}/ holds no images, so the class "
                    "indices after it would be wrong; add images or remove the folder"
                )
            files.extend(mine)
            labels.extend([index] * len(mine))
        return files, np.array(labels, dtype=np.int64)


def _labelled_by_file(spec: str, root: Path, path: Path) -> tuple[list[Path], np.ndarray]:
    """Files and labels from a ``name label`` file; every named file must exist."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"{spec}: labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{spec}: labels file {path} cannot be read ({exc})") from None
    files, labels, missing = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = [f for f in re.split(r"[\s,]+", line.strip()) if f]
        if not fields:
            continue
        name, label = fields[0], fields[-1]
        if len(fields) != 2 or not label.isdigit():
            if number == 1 and len(fields) == 2:
                continue  # a header line
            raise UsageError(
                f"{path}:{number} is not '<file name> <class index>'; fix the line or remove it"
            )
        file = root / name
        if not file.is_file():
            missing.append(name)
            continue
        files.append(file)
        labels.append(int(label))
    if missing:
        raise UsageError(
            f"{path} names {len(missing)} files missing from {root} (first: {missing[0]}); "
            "fix the labels file or add the images"
        )
    if not files:
        raise UsageError(f"{spec}: labels file {path} names no images")
    return files, np.array(labels, dtype=np.int64)


def _check_classes(spec: str, labels: np.ndarray | None, manifest: Mapping[str, Any]) -> None:
    classes = (manifest.get("model") or {}).get("num_classes")
    if labels is None or not isinstance(classes, int):
        return
    if labels.min() < 0 or labels.max() >= classes:
        raise UsageError(
            f"{spec} has labels {labels.min()}..{labels.max()}, but the model predicts "
            f"{classes} classes; use a folder of this model's classes, or drop the labels"
        )


def _decode(
    files: list[Path], preprocess: Mapping[str, Any], strict: bool, progress: Progress | None
) -> tuple[np.ndarray, np.ndarray]:
    """(pixels [N, C, H, W] float32 in a scratch memory map, which files could be read)."""
    shape = (len(files), *(int(v) for v in preprocess["input_size"]))
    with tempfile.TemporaryFile(prefix="trimformer-images-") as scratch:
        pixels = np.memmap(scratch, dtype=np.float32, mode="w+", shape=shape)
    kept = np.ones(len(files), dtype=bool)

    def read(index: int) -> None:
        try:
            pixels[index] = load_image(files[index], preprocess)
        except UnreadableImage:
            if strict:
                raise UsageError(
                    f"{files[index]} is not an image PIL can read; remove it, or drop --strict "
                    "to skip unreadable images"
                ) from None
            kept[index] = False

    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        for done, _ in enumerate(pool.map(read, range(len(files))), start=1):
            if progress is not None and (done % 32 == 0 or done == len(files)):
                progress("decode", done, len(files))
    return pixels, kept

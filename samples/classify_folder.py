"""Embed the trimformer runtime in an application: classify every image in a folder.

    python samples/classify_folder.py BUNDLE IMAGE_FOLDER [--batch 8]

Only the runtime is imported (numpy, onnxruntime, PIL): no torch, no timm, as on a device.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from trimformer.runtime import load, load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def classify(bundle: Path, folder: Path, batch: int) -> list[tuple[str, str, float]]:
    """Return (file name, top-1 label, probability) for every image in ``folder``."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    results = []
    with load(bundle) as session:
        labels = session.manifest.get("labels")
        preprocess = session.manifest["preprocess"]
        for start in range(0, len(paths), batch):
            chunk = paths[start : start + batch]
            logits = next(
                iter(session.run(np.stack([load_image(p, preprocess) for p in chunk])).values())
            )
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            for path, row in zip(chunk, probs, strict=True):
                top = int(row.argmax())
                results.append((path.name, labels[top] if labels else str(top), float(row[top])))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    for name, label, prob in classify(args.bundle, args.folder, args.batch):
        print(f"{name}\t{label}\t{prob:.3f}")


if __name__ == "__main__":
    main()

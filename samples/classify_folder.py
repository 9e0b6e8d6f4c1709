"""Embed the trimformer runtime in an application: classify every image in a folder.

    python samples/classify_folder.py BUNDLE IMAGE_FOLDER [--batch 8]
        [--backend cpu|cuda|tensorrt-ep|tensorrt] [--profile desktop-rtx]

cpu, cuda and tensorrt-ep run the bundle's graph with ONNX Runtime on that execution provider;
they import only the runtime (numpy, onnxruntime, PIL): no torch, no timm, as on a device.
tensorrt runs the engine ``trimformer build BUNDLE --device PROFILE`` wrote (TensorRT and torch
for its buffers). Every backend serves the same ``run``; a last, smaller batch is fine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from trimformer.errors import TrimformerError
from trimformer.runtime import Session, load, load_image
from trimformer.runtime.ort_providers import execution_providers

BACKENDS = ("cpu", "cuda", "tensorrt-ep", "tensorrt")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def open_session(bundle: Path, backend: str, profile: str) -> Session:
    """The bundle on ``backend``: ONNX Runtime on an execution provider, or a TensorRT engine."""
    if backend == "tensorrt":
        from trimformer.runtime.trt_session import load_engine

        return load_engine(bundle, profile)
    return load(bundle, providers=execution_providers(backend.removesuffix("-ep")))


def classify(
    bundle: Path, folder: Path, batch: int, backend: str = "cpu", profile: str = "desktop-rtx"
) -> list[tuple[str, str, float]]:
    """Return (file name, top-1 label, probability) for every image in ``folder``."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    results = []
    with open_session(bundle, backend, profile) as session:
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
    parser.add_argument("--backend", choices=BACKENDS, default="cpu")
    parser.add_argument("--profile", default="desktop-rtx", help="device profile (tensorrt)")
    args = parser.parse_args()
    try:
        rows = classify(args.bundle, args.folder, args.batch, args.backend, args.profile)
    except TrimformerError as exc:  # one line that says what to do, as the CLI does
        sys.exit(f"error: {exc}")
    for name, label, prob in rows:
        print(f"{name}\t{label}\t{prob:.3f}")


if __name__ == "__main__":
    main()

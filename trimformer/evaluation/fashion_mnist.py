"""Read Fashion-MNIST from its idx files (Debian's ``dataset-fashion-mnist`` installs them).

The idx format is a big-endian header (magic, then one uint32 per dimension) followed by uint8
data; numpy reads it directly, so no torchvision or download code is needed.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trimformer.errors import UsageError

__all__ = ["DEFAULT_ROOT", "normalise", "read_fashion_mnist", "read_idx"]

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
_INSTALL_HINT = "install it with `apt-get install -y dataset-fashion-mnist`"
_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Return the uint8 array stored in an idx file (gzip-compressed or plain)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; {_INSTALL_HINT}") from None
    except (OSError, EOFError) as exc:
        raise UsageError(f"{path} cannot be read ({exc}); reinstall the data set") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise UsageError(f"{path} is not an idx file of unsigned bytes; reinstall the data set")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise UsageError(f"{path} is truncated: header says {dims}; reinstall the data set")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def read_fashion_mnist(split: str, root: Path = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 [N, 28, 28]) and labels (int64 [N]) of the ``train`` or ``test`` split."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise UsageError(f"unknown Fashion-MNIST split {split!r}; use train or test")
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise UsageError(f"{root}: {split} images {images.shape} and labels {labels.shape} differ")
    return images, labels


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28]: pixels / 255, then (x - mean) / std.

    This is the bundle's eval preprocess for a 1 x 28 x 28 model with crop_pct 1 (no resize).
    """
    if len(mean) != 1 or len(std) != 1:
        raise UsageError(
            f"preprocess mean {list(mean)} / std {list(std)} are not single-channel; "
            "Fashion-MNIST needs a grayscale (1-channel) model"
        )
    pixels = images.astype(np.float32) / 255.0
    return ((pixels - np.float32(mean[0])) / np.float32(std[0]))[:, None].astype(np.float32)

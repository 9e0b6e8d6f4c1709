"""Turn an image file into a model input the way timm's eval transform does, without torch.

The manifest's ``preprocess`` dict is timm's data config of the exported model (input_size,
interpolation, mean, std, crop_pct, crop_mode). Resizing uses PIL exactly as torchvision does on
PIL images, so the result matches timm's transform up to float rounding.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from trimformer.errors import UsageError

__all__ = ["UnreadableImage", "decode_image", "load_image"]


class UnreadableImage(UsageError):
    """The file or bytes are not an image PIL can decode (the preprocess settings were fine)."""


_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
_DEFAULT_CROP_PCT = 0.875


def load_image(path: str | Path, preprocess: Mapping[str, Any]) -> np.ndarray:
    """Read an image file and return the float32 [C, H, W] array the model expects (see
    ``_prepare``)."""
    return _prepare(Path(path), preprocess)


def decode_image(data: bytes, preprocess: Mapping[str, Any]) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ... bytes, as a client sends it to a server) and
    return the float32 [C, H, W] array the model expects, exactly as ``load_image`` would."""
    return _prepare(io.BytesIO(data), preprocess)


def _prepare(source: Path | io.BytesIO, preprocess: Mapping[str, Any]) -> np.ndarray:
    """Resize (shorter side to H / crop_pct for crop_mode "center"), center-crop to H x W, scale to
    [0, 1] and normalise by mean and std. Channels come from input_size: 3 is RGB, 1 grayscale.
    """
    channels, height, width = (int(v) for v in preprocess["input_size"])
    if channels not in (1, 3):
        raise UsageError(f"preprocess input_size {preprocess['input_size']} needs 1 or 3 channels")
    image = _read(source, "L" if channels == 1 else "RGB")
    crop_pct = preprocess.get("crop_pct") or _DEFAULT_CROP_PCT
    mode = preprocess.get("crop_mode") or "center"
    resample = _resample(preprocess.get("interpolation", "bilinear"))
    mean = _per_channel(preprocess, "mean", channels)
    std = _per_channel(preprocess, "std", channels)
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    fill: int | tuple[int, ...] = 0
    if mode == "center":
        image = image.resize(_keep_ratio(image.size, scale, shortest=True), resample)
    elif mode == "squash":
        image = image.resize((scale[1], scale[0]), resample)
    elif mode == "border":
        image = image.resize(_keep_ratio(image.size, scale, shortest=False), resample)
        rgb = tuple(round(255 * float(v)) for v in np.broadcast_to(mean.ravel(), (channels,)))
        fill = rgb[0] if channels == 1 else rgb
    else:
        raise UsageError(
            f"preprocess crop_mode {mode!r} is not supported; use center, squash or border"
        )
    image = _center_crop_or_pad(image, height, width, fill)
    pixels = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 255.0
    return np.ascontiguousarray((pixels.transpose(2, 0, 1) - mean) / std, dtype=np.float32)


def _read(source: Path | io.BytesIO, mode: str) -> Image.Image:
    try:
        with Image.open(source) as image:
            return image.convert(mode)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        what = source if isinstance(source, Path) else "the data"
        raise UnreadableImage(f"{what} is not an image PIL can read; pass a JPEG/PNG/...") from None


def _per_channel(preprocess: Mapping[str, Any], key: str, channels: int) -> np.ndarray:
    values = np.asarray(preprocess[key], dtype=np.float32).reshape(-1)
    if values.size not in (1, channels):
        raise UsageError(
            f"preprocess {key} has {values.size} values for {channels} channels; re-export"
        )
    return values.reshape(-1, 1, 1)


def _resample(name: str) -> Image.Resampling:
    try:
        return _RESAMPLE[name]
    except KeyError:
        raise UsageError(
            f"preprocess interpolation {name!r} is not supported; use {', '.join(_RESAMPLE)}"
        ) from None


def _keep_ratio(size: tuple[int, int], target: tuple[int, int], shortest: bool) -> tuple[int, int]:
    """(width, height) that keeps the aspect ratio and fits ``target`` (h, w) on one side.

    ``shortest``: the shorter side reaches its target (the rest overflows, to be cropped);
    otherwise the longer side does (the rest is padded). Rounds as torchvision / timm do.
    """
    width, height = size
    if target[0] == target[1] and shortest:
        short, long = min(width, height), max(width, height)
        new_long = int(target[0] * long / short)
        return (target[0], new_long) if width <= height else (new_long, target[0])
    ratios = (height / target[0], width / target[1])
    ratio = min(ratios) if shortest else max(ratios)
    return round(width / ratio), round(height / ratio)


def _center_crop_or_pad(
    image: Image.Image, height: int, width: int, fill: int | tuple[int, ...]
) -> Image.Image:
    """Center-crop to height x width, first padding with ``fill`` where the image is smaller."""
    if width > image.width or height > image.height:
        padded = Image.new(image.mode, (max(width, image.width), max(height, image.height)), fill)
        left = (width - image.width) // 2 if width > image.width else 0
        top = (height - image.height) // 2 if height > image.height else 0
        padded.paste(image, (left, top))
        image = padded
    top = round((image.height - height) / 2.0)
    left = round((image.width - width) / 2.0)
    return image.crop((left, top, left + width, top + height))

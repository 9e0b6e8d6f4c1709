"""A Hugging Face image processor's settings, as the manifest's ``preprocess`` dict.

The runtime (runtime/preprocess.py) resizes, center-crops and normalises with timm's keys:
``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``. transformers'
processors say the same things differently: ``size`` {height, width} is a squash resize (then
``crop_size`` is cropped from it), ``size`` {shortest_edge} keeps the aspect ratio. What cannot be
said in those keys (no center crop after a shortest-edge resize, a rescale other than 1/255, a
processor made for another image size than the model's) gets one warning naming what differs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

__all__ = ["image_preprocess"]

log = logging.getLogger(__name__)

# PIL.Image.Resampling values, which transformers stores as ints.
_INTERPOLATION = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_DEFAULT_MEAN_STD = (0.5, 0.5, 0.5)


def _size(value: Any, key: str) -> int | None:
    if value is None:
        return None
    found = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
    return int(found) if found is not None else None


def image_preprocess(folder: Path, channels: int, image_size: int) -> dict[str, Any]:
    """The preprocess dict for a model exported at ``image_size``, from the folder's processor."""
    from transformers import AutoImageProcessor

    model_input = [channels, image_size, image_size]
    try:
        processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError):
        log.warning(
            "%s has no image processor config; `trimformer run` will resize images to %dx%d and "
            "normalise with mean 0.5, std 0.5. Save the model's image processor next to it",
            folder.name,
            image_size,
            image_size,
        )
        return {
            "input_size": model_input,
            "interpolation": "bicubic",
            "mean": list(_DEFAULT_MEAN_STD),
            "std": list(_DEFAULT_MEAN_STD),
            "crop_pct": 1.0,
            "crop_mode": "squash",
        }
    issues: list[str] = []
    normalize = getattr(processor, "do_normalize", True)
    mean = list(processor.image_mean) if normalize else [0.0] * channels
    std = list(processor.image_std) if normalize else [1.0] * channels
    resample = getattr(processor, "resample", 3)
    interpolation = _INTERPOLATION.get(int(resample) if resample is not None else 3, "bicubic")
    rescale = getattr(processor, "rescale_factor", 1 / 255)
    if not getattr(processor, "do_rescale", True) or not math.isclose(rescale, 1 / 255):
        issues.append("its rescale differs from 1/255")
    size, crop = processor.size, getattr(processor, "crop_size", None)
    cropping = bool(getattr(processor, "do_center_crop", False)) and crop is not None
    height, width = _size(size, "height"), _size(size, "width")
    shortest = _size(size, "shortest_edge")
    crop_h, crop_w = (_size(crop, "height"), _size(crop, "width")) if cropping else (None, None)
    mode, final, resized = "squash", (image_size, image_size), image_size
    if not getattr(processor, "do_resize", True):
        issues.append("it does not resize")
    elif height is not None and width is not None:
        final, resized = (crop_h or height, crop_w or width), height
        if not math.isclose(final[1] / width, final[0] / height):
            issues.append(f"its crop {final} is not one share of its resize {(height, width)}")
    elif shortest is not None and cropping:
        mode, final, resized = "center", (crop_h, crop_w), shortest
    else:
        issues.append(f"its resize {size} is not a squash or shortest-edge + crop resize")
    crop_pct = final[0] / resized
    if math.floor(final[0] / crop_pct) != resized:  # the runtime resizes to floor(size / pct)
        crop_pct *= 1 - 1e-9
    if list(final) != model_input[1:]:
        issues.append(f"it makes {final[0]}x{final[1]} images, the model takes {image_size}")
    if issues:
        log.warning(
            "%s: the image processor cannot be reproduced exactly (%s); `trimformer run` "
            "resizes to %dx%d",
            folder.name,
            "; ".join(issues),
            image_size,
            image_size,
        )
    return {
        "input_size": model_input,
        "interpolation": interpolation,
        "mean": mean,
        "std": std,
        "crop_pct": crop_pct,
        "crop_mode": mode,
    }

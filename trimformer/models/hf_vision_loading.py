"""Load Hugging Face vision models (ViT, DeiT, CLIP, SigLIP, DINOv2, LLaVA's vision side).

The architecture named in ``config.json`` (``architectures``) is built with transformers' eager
attention, whose additive mask the reducing layers extend, and wrapped as a ``VisionEncoder``;
its image processor becomes the manifest's preprocess dict. Exported at the config's image size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trimformer.errors import UsageError
from trimformer.models.base import AdapterError, GraphIO
from trimformer.models.hf_llava import llava_encoder
from trimformer.models.hf_preprocess import image_preprocess
from trimformer.models.hf_vision import FAMILIES, VisionEncoder, vision_encoder, vision_family
from trimformer.models.loading import LoadedModel, ModelOptions

__all__ = ["SUPPORTED_VISION_TYPES", "load_vision_model"]

_LLAVA_TYPES = ("llava",)
SUPPORTED_VISION_TYPES = (*(t for f in FAMILIES for t in f.model_types), *_LLAVA_TYPES)


def _build(folder: Path, config: Any) -> torch.nn.Module:
    """The architecture ``config`` names (or the bare model), loaded in float32 with eager
    attention. LLaVA's language model is not exported: it is built with no layers, so that its
    weights (most of the checkpoint) are never read into memory."""
    import copy

    import transformers
    from transformers.utils import logging as hf_logging

    architectures = getattr(config, "architectures", None) or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        cls = transformers.AutoModel
    verbosity = hf_logging.get_verbosity()
    if config.model_type in _LLAVA_TYPES:
        config = copy.deepcopy(config)
        config.text_config.num_hidden_layers = 0
        hf_logging.set_verbosity_error()  # not the report of every language-model weight skipped
    try:
        model = cls.from_pretrained(
            folder, config=config, attn_implementation="eager", dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval()


def load_vision_model(name: str, folder: Path, config: Any, options: ModelOptions) -> LoadedModel:
    """A ``VisionEncoder`` over the transformers vision model in ``folder``."""
    if options.seq_len is not None:
        raise UsageError("--seq-len is for text models; image models take --image-size")
    model = _build(folder, config)
    try:
        if config.model_type in _LLAVA_TYPES:
            encoder: VisionEncoder = llava_encoder(model)
        else:
            family = vision_family(config.model_type)
            assert family is not None  # the caller routes only supported types here
            encoder = vision_encoder(model, family)
    except AdapterError as exc:
        raise UsageError(f"{name}: {exc}") from None
    tower = encoder.tower.config
    size = int(tower.image_size)
    if options.image_size is not None and options.image_size != size:
        raise UsageError(
            f"--image-size {options.image_size}: {name} is exported at its config's image size "
            f"{size} (its position embeddings are learned for it); drop --image-size"
        )
    channels = int(getattr(tower, "num_channels", 3))
    example = {"pixel_values": torch.randn(options.example_batch, channels, size, size)}
    dynamic = {"pixel_values": {0: "batch"}} if options.batch is None else {}
    logits = encoder.head.output == "logits"
    return LoadedModel(
        model=encoder.eval(),
        model_id=name.removeprefix("hf:") if name.startswith("hf:") else Path(name).name,
        source="hf",
        weights=f"folder:{Path(name).name}" if not name.startswith("hf:") else "pretrained",
        preprocess=image_preprocess(folder, channels, size),
        io=GraphIO(example, dynamic, (encoder.head.output,)),
        num_classes=int(config.num_labels) if logits else None,
    )

"""Adapter for a LLaVA-style vision tower: vision encoder + projector + visual-token reduction.

The exported graph maps ``pixel_values`` to ``image_features`` [batch, tokens, text hidden]: what
``LlavaForConditionalGeneration`` splices into the language model's input in place of the image
tokens. It runs the tower's layers up to ``vision_feature_layer`` (the later ones do not feed the
LLM, so they are not run), drops the CLS token for ``vision_feature_select_strategy: default``,
and applies the multi-modal projector. A method reduces inside the tower, between a layer's
attention residual and its MLP: at the last layer run (``layers`` / ``select_layer`` = depth - 1)
that is the tower's output, where DivPrune and HiRED prune a VLM's visual tokens. Every visual
token removed there is one token fewer in the LLM's prefill. A delete gate is refused: it masks
tokens instead of removing them, and the LLM would still receive them.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from trimformer.models.base import AdapterError, register_adapter
from trimformer.models.hf_vision import (
    ALL_BUT_GATE,
    Head,
    HFVisionAdapter,
    VisionEncoder,
    vision_family,
)

__all__ = ["FAMILY", "LlavaVision", "llava_encoder"]

FAMILY = "hf-llava"


class LlavaVision(nn.Module):
    """The parts of a LLaVA model that make its visual tokens (the language model is left out)."""

    base_model_prefix = "vision_model"

    def __init__(self, vision_model: nn.Module, projector: nn.Module, drop_cls: bool) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.multi_modal_projector = projector
        self.drop_cls = drop_cls


def _image_features(
    model: nn.Module, tower: nn.Module, x: torch.Tensor, _w: torch.Tensor
) -> torch.Tensor:
    return model.multi_modal_projector(x[:, 1:] if model.drop_cls else x)


def _depth(layer: object, num_layers: int) -> int:
    """Layers to run so that the last one's output is hidden_states[layer]."""
    if not isinstance(layer, int):
        raise AdapterError(
            f"vision_feature_layer {layer} concatenates several layers; trimformer supports "
            "one feature layer (an int)"
        )
    depth = layer if layer >= 0 else num_layers + 1 + layer
    if not 1 <= depth <= num_layers:
        raise AdapterError(
            f"vision_feature_layer {layer} selects no layer output of the {num_layers}-layer "
            f"tower; use one in 1..{num_layers} or -{num_layers}..-1"
        )
    return depth


def llava_encoder(model: nn.Module) -> VisionEncoder:
    """The vision side of a ``LlavaForConditionalGeneration`` (or ``LlavaModel``)."""
    config = model.config
    family = vision_family(config.vision_config.model_type)
    if family is None:
        raise AdapterError(
            f"the LLaVA vision tower is {config.vision_config.model_type!r}; supported towers: "
            "clip_vision_model, siglip_vision_model, vit, dinov2"
        )
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise AdapterError(
            f"vision_feature_select_strategy {strategy!r} is not supported; use default or full"
        )
    inner = getattr(model, "model", model)  # LlavaForConditionalGeneration wraps a LlavaModel
    parts = LlavaVision(inner.vision_tower, inner.multi_modal_projector, strategy == "default")
    tower = family.layout.tower(parts)
    depth = _depth(config.vision_feature_layer, len(family.layout.layers(tower)))
    return VisionEncoder(
        parts, FAMILY, family.layout, Head("image_features", _image_features), depth
    )


register_adapter(functools.partial(HFVisionAdapter, FAMILY, ALL_BUT_GATE))

"""Adapters for Hugging Face vision transformers: ViT, DeiT (incl. distilled), CLIP, SigLIP and
DINOv2 (with and without registers).

The exported module is ``VisionEncoder``: ``pixel_values`` in, one output out, named as
transformers names it (``logits`` for classifiers, ``pooler_output`` for bare vision models,
``image_embeds`` where a projection follows). It runs the model's own modules: embeddings (and
CLIP's pre-layernorm), each layer's attention and MLP sub-modules, the final norm and head. Only
the two residual lines of a layer are written here (``Layout``), so the reducer can run between
the attention residual and the MLP; with nothing reduced the output equals the model's (tested).

Each layer's attention is transformers' eager attention, whose additive mask carries ToMe's
proportional attention (log sizes) and a method's TokenState.attn_bias. Queries and keys are read
by wrapping the attention's ``q_proj`` / ``k_proj`` (Tap). Protected tokens: CLS; DeiT's
distillation token; DINOv2's registers. Heads that pool over tokens weigh each token by its size
(a merged token counts for the tokens it replaced) and drop tokens a delete gate masked (read from
the CLS row of the gate's bias): size-weighted means for mean pooling; for SigLIP, which has no
CLS token and pools with an attention-pooling head (MAP), log(size) is added to the pooling
attention's logits, the proportional attention of its probe. A delete gate is refused for SigLIP:
without a CLS token that is never deleted, the pooling cannot tell which tokens were deleted.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from trimformer.models.base import (
    AdapterError,
    AttentionTaps,
    Reducer,
    Tap,
    TokenState,
    register_adapter,
)

__all__ = [
    "FAMILIES",
    "HFVisionAdapter",
    "Head",
    "Layout",
    "VisionEncoder",
    "vision_encoder",
    "vision_family",
]

# Every method but the delete gate, which masks tokens instead of removing them: fine for a CLS
# output, but a head that pools over tokens or hands them on must know which are gone.
ALL_BUT_GATE = (
    *("tome", "evit", "zero_tprune", "divprune", "hired", "todre"),
    *("tail_drop", "keep_subset", "group_merge"),
)

Pool = Callable[[nn.Module, nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Head:
    """An architecture's output: its name and how it is computed from the last hidden states.

    ``pool(model, tower, x, weights)`` gets the states [B,M,C] after the last layer and each
    token's pooling weight [B,M,1] (its size, 0 where a gate deleted it).
    """

    output: str
    pool: Pool


class Layout:
    """Where a family keeps its modules; the ViT / DeiT layout. Subclasses change what differs."""

    def tower(self, model: nn.Module) -> nn.Module:
        """The vision transformer inside ``model`` (a classifier's backbone, CLIP's vision side)."""
        for name in ("vision_model", model.base_model_prefix):
            inner = getattr(model, name, None)
            if isinstance(inner, nn.Module):
                return inner
        return model

    def embed(self, tower: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return tower.embeddings(pixels)

    def layers(self, tower: nn.Module) -> nn.ModuleList:
        return tower.layers

    def attention(self, layer: nn.Module) -> nn.Module:
        """The module holding the layer's ``q_proj`` and ``k_proj``."""
        return layer.attention

    def scale(self, attention: nn.Module) -> float:
        return float(attention.scaling)

    def attend(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The layer's attention residual line."""
        out = layer.attention(layer.layernorm_before(x), attention_mask=bias)[0]
        return x + layer.dropout(out)

    def feed_forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's MLP residual line."""
        return x + layer.dropout(layer.mlp(layer.layernorm_after(x)))

    def protected(self, tower: nn.Module) -> int:
        return 1


class DeiTLayout(Layout):
    def protected(self, tower: nn.Module) -> int:
        return 2  # CLS and distillation token


class CLIPLayout(Layout):
    """CLIP and SigLIP vision transformers (SigLIP has no pre-layernorm and no CLS token)."""

    def __init__(self, cls_token: bool) -> None:
        self.cls_token = cls_token

    def embed(self, tower: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        x = tower.embeddings(pixels)
        pre_norm = getattr(tower, "pre_layrnorm", None)  # CLIP's name for it
        return pre_norm(x) if pre_norm is not None else x

    def layers(self, tower: nn.Module) -> nn.ModuleList:
        return tower.encoder.layers

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def scale(self, attention: nn.Module) -> float:
        return float(attention.scale)

    def attend(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return x + layer.self_attn(hidden_states=layer.layer_norm1(x), attention_mask=bias)[0]

    def feed_forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x + layer.mlp(layer.layer_norm2(x))

    def protected(self, tower: nn.Module) -> int:
        return int(self.cls_token)


class DINOv2Layout(Layout):
    def layers(self, tower: nn.Module) -> nn.ModuleList:
        return tower.encoder.layer

    def attend(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = layer.attention(layer.norm1(x), attention_mask=bias)[0]
        return x + layer.drop_path(layer.layer_scale1(out))

    def feed_forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x + layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(x))))

    def protected(self, tower: nn.Module) -> int:
        return 1 + int(getattr(tower.config, "num_register_tokens", 0))


def _weighted_mean(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


def _attention_pool(head: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """SigLIP's MAP head with log(weight) added to the probe's attention logits."""
    probe = head.probe.repeat(x.shape[0], 1, 1)
    bias = weights.log().transpose(1, 2).repeat_interleave(head.attention.num_heads, dim=0)
    pooled = head.attention(probe, x, x, attn_mask=bias)[0]
    pooled = pooled + head.mlp(head.layernorm(pooled))
    return pooled[:, 0]


def _cls_logits(model: nn.Module, tower: nn.Module, x: torch.Tensor, _w: torch.Tensor):
    return model.classifier(tower.layernorm(x)[:, 0])


def _pooler(model: nn.Module, tower: nn.Module, x: torch.Tensor, _w: torch.Tensor):
    if tower.pooler is None:
        raise AdapterError("the model was built without its pooler; re-save it with one")
    return tower.pooler(tower.layernorm(x))


def _teacher_logits(model: nn.Module, tower: nn.Module, x: torch.Tensor, _w: torch.Tensor):
    h = tower.layernorm(x)
    return (model.cls_classifier(h[:, 0]) + model.distillation_classifier(h[:, 1])) / 2


def _clip_pooled(model: nn.Module, tower: nn.Module, x: torch.Tensor, _w: torch.Tensor):
    return tower.post_layernorm(x[:, 0])


def _clip_embeds(model: nn.Module, tower: nn.Module, x: torch.Tensor, w: torch.Tensor):
    return model.visual_projection(_clip_pooled(model, tower, x, w))


def _clip_logits(model: nn.Module, tower: nn.Module, x: torch.Tensor, w: torch.Tensor):
    return model.classifier(_weighted_mean(x[:, 1:], w[:, 1:]))


def _siglip_pooled(model: nn.Module, tower: nn.Module, x: torch.Tensor, w: torch.Tensor):
    if not getattr(tower, "use_head", False):
        raise AdapterError("the SigLIP vision model has no pooling head (vision_use_head=False)")
    return _attention_pool(tower.head, tower.post_layernorm(x), w)


def _siglip_logits(model: nn.Module, tower: nn.Module, x: torch.Tensor, w: torch.Tensor):
    return model.classifier(_weighted_mean(tower.post_layernorm(x), w))


def _dino_pooled(model: nn.Module, tower: nn.Module, x: torch.Tensor, _w: torch.Tensor):
    return tower.layernorm(x)[:, 0]


def _dino_logits(model: nn.Module, tower: nn.Module, x: torch.Tensor, w: torch.Tensor):
    h = tower.layernorm(x)
    p = DINOv2Layout().protected(tower)
    return model.classifier(torch.cat([h[:, 0], _weighted_mean(h[:, p:], w[:, p:])], dim=1))


@dataclass(frozen=True)
class Family:
    """One adapter's family: its config model types, layout, and heads by architecture."""

    name: str
    model_types: tuple[str, ...]
    layout: Layout
    heads: dict[str, Head]
    methods: tuple[str, ...] | None = None


_LOGITS = Head("logits", _cls_logits)
FAMILIES: tuple[Family, ...] = (
    Family(
        "hf-vit",
        ("vit",),
        Layout(),
        {"ViTForImageClassification": _LOGITS, "ViTModel": Head("pooler_output", _pooler)},
    ),
    Family(
        "hf-deit",
        ("deit",),
        DeiTLayout(),
        {
            "DeiTForImageClassification": _LOGITS,
            "DeiTForImageClassificationWithTeacher": Head("logits", _teacher_logits),
            "DeiTModel": Head("pooler_output", _pooler),
        },
    ),
    Family(
        "hf-clip",
        ("clip", "clip_vision_model"),
        CLIPLayout(cls_token=True),
        {
            "CLIPModel": Head("image_embeds", _clip_embeds),
            "CLIPVisionModelWithProjection": Head("image_embeds", _clip_embeds),
            "CLIPVisionModel": Head("pooler_output", _clip_pooled),
            "CLIPForImageClassification": Head("logits", _clip_logits),
        },
    ),
    Family(
        "hf-siglip",
        ("siglip", "siglip_vision_model"),
        CLIPLayout(cls_token=False),
        {
            "SiglipModel": Head("pooler_output", _siglip_pooled),
            "SiglipVisionModel": Head("pooler_output", _siglip_pooled),
            "SiglipForImageClassification": Head("logits", _siglip_logits),
        },
        methods=ALL_BUT_GATE,
    ),
    Family(
        "hf-dinov2",
        ("dinov2", "dinov2_with_registers"),
        DINOv2Layout(),
        {
            "Dinov2Model": Head("pooler_output", _dino_pooled),
            "Dinov2ForImageClassification": Head("logits", _dino_logits),
            "Dinov2WithRegistersModel": Head("pooler_output", _dino_pooled),
            "Dinov2WithRegistersForImageClassification": Head("logits", _dino_logits),
        },
    ),
)


def vision_family(model_type: str) -> Family | None:
    """The family that loads config ``model_type``, or None."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def vision_encoder(model: nn.Module, family: Family) -> VisionEncoder:
    """``model`` (a transformers model of ``family``) with the head its architecture has."""
    head = family.heads.get(type(model).__name__)
    if head is None:
        raise AdapterError(
            f"{type(model).__name__} is not supported; supported {family.name} architectures: "
            f"{', '.join(family.heads)}"
        )
    return VisionEncoder(model, family.name, family.layout, head)


def _heads(tap: nn.Module, heads: int) -> torch.Tensor:
    """A query/key projection's captured output [B,N,H*Dh] as [B,H,N,Dh]."""
    value = tap.take()
    b, n, _ = value.shape
    return value.view(b, n, heads, -1).transpose(1, 2)


class VisionEncoder(nn.Module):
    """A transformers vision model's tower, run layer by layer, and one head (module docstring).

    ``depth`` layers run (fewer than the tower has where a head reads an earlier layer, as LLaVA
    does); ``family`` names the adapter.
    """

    def __init__(
        self, model: nn.Module, family: str, layout: Layout, head: Head, depth: int | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.family = family
        self.layout = layout
        self.head = head
        self.tower = layout.tower(model)
        self.depth = len(layout.layers(self.tower)) if depth is None else depth
        config = self.tower.config
        patch, size = config.patch_size, config.image_size
        if not isinstance(size, int) or not isinstance(patch, int):
            raise AdapterError(
                f"image_size {size} / patch_size {patch} are not single ints; trimformer "
                "exports square images of square patches"
            )
        self.grid = (size // patch, size // patch)
        self.protected = layout.protected(self.tower)
        self.num_tokens = self.grid[0] * self.grid[1] + self.protected
        self.heads = int(config.num_attention_heads)
        self.reducer: Reducer | None = None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        layout, reducer = self.layout, self.reducer
        x = layout.embed(self.tower, pixel_values)
        state = TokenState()
        for index, layer in enumerate(layout.layers(self.tower)[: self.depth]):
            bias = state.attn_bias
            if reducer is not None and reducer.proportional_attention and state.sizes is not None:
                log_sizes = state.sizes.log().transpose(1, 2).unsqueeze(1)  # [B,1,1,N]
                bias = log_sizes if bias is None else bias + log_sizes
            x = layout.attend(layer, x, bias)
            if reducer is not None:
                attention = layout.attention(layer)
                taps = AttentionTaps(
                    _heads(attention.q_proj, self.heads),
                    _heads(attention.k_proj, self.heads),
                    layout.scale(attention),
                    bias,
                    hidden=x,
                )
                x, state = reducer(index, x, state, taps)
            x = layout.feed_forward(layer, x)
        return self.head.pool(self.model, self.tower, x, self._weights(x, state))

    def _weights(self, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        """Pooling weights [B,M,1]: sizes, zero where a delete gate masked a token."""
        weights = state.sizes_or_ones(x)
        if state.attn_bias is not None and self.protected >= 1:
            # The CLS token is never deleted: its row of the bias is 0 exactly at kept tokens.
            kept = state.attn_bias[:, 0, 0, :].expand(x.shape[0], -1) == 0
            weights = weights * kept.unsqueeze(-1).to(weights.dtype)
        return weights


class HFVisionAdapter:
    """``VisionEncoder`` of one family (see the module docstring)."""

    default_metric = "keys"  # ToMe's choice for ViTs

    def __init__(self, family: str, methods: tuple[str, ...] | None) -> None:
        self.family = family
        self.methods = methods

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, VisionEncoder) and model.family == self.family

    def num_layers(self, model: nn.Module) -> int:
        return int(model.depth)

    def num_tokens(self, model: nn.Module) -> int:
        return int(model.num_tokens)

    def protected_tokens(self, model: nn.Module) -> int:
        return int(model.protected)

    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        return model.grid

    def embed_dim(self, model: nn.Module) -> int:
        return int(model.tower.config.hidden_size)

    def insert(self, model: nn.Module, reducer: Reducer) -> nn.Module:
        """A copy of ``model`` that reduces; the original is left untouched."""
        reduced = copy.deepcopy(model)
        for layer in reduced.layout.layers(reduced.tower)[: reduced.depth]:
            attention = reduced.layout.attention(layer)
            attention.q_proj = Tap(attention.q_proj)
            attention.k_proj = Tap(attention.k_proj)
        reduced.reducer = reducer
        return reduced

    @contextlib.contextmanager
    def export_patches(self, model: nn.Module) -> Iterator[nn.Module]:
        """Nothing to patch: vision models are loaded with transformers' eager attention."""
        yield model


for _family in FAMILIES:
    register_adapter(functools.partial(HFVisionAdapter, _family.name, _family.methods))

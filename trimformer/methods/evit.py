"""EViT (Liang et al., ICLR 2022): keep the tokens the CLS token attends to most, fuse the rest.

At each chosen layer, after the attention residual and before the MLP, the unprotected tokens are
ranked by the CLS row of that block's attention probabilities (mean over heads) and the top
k = ceil(keep·(N - protected)) are kept, in their original order (TopKSelect). With ``fuse`` the
dropped tokens become one extra token: their CLS-attention-weighted sum, with the sum of their
sizes; later reductions rank it like any other token. With ``proportional_attention`` (as ToMe)
later attention adds log(size) to its logits, so the fused token counts as the tokens it replaced.
The paper has no such bias, so it is off by default. ``layers`` are zero-based
block indices: the paper's 4th, 7th and 10th of 12 blocks are the default (3, 6, 9). A layer
where k keeps every token is skipped. Zero-shot use drops some accuracy; EViT's published
numbers are for fine-tuned models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trimformer.methods.base import ConfigError, MethodPlan, ModelGeometry, register_method
from trimformer.models.base import AttentionTaps, TokenState
from trimformer.ops.topk_select import TOPK_SELECT

__all__ = ["EViT", "EViTParams", "EViTReducer", "kept_tokens"]


def kept_tokens(keep: float, candidates: int) -> int:
    """ceil(keep·candidates), without float noise pushing an exact product up (0.7·10 -> 7)."""
    return math.ceil(round(keep * candidates, 9))


@dataclass(frozen=True)
class EViTParams:
    """EViT's knobs, as written in a reductions profile."""

    keep: float = 0.7
    layers: tuple[int, ...] = (3, 6, 9)
    fuse: bool = True
    proportional_attention: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.keep <= 1:
            raise ConfigError(f"evit: key 'keep' must be in (0, 1], got {self.keep}")
        if not self.layers:
            raise ConfigError("evit: key 'layers' must name at least one layer (zero-based)")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"evit: key 'layers' repeats a layer: {list(self.layers)}")


@dataclass(frozen=True)
class EViTReducer:
    """Calls TopKSelect with each layer's k on the CLS attention; k = 0 leaves a layer alone."""

    k_per_layer: tuple[int, ...]
    protected: int
    fuse: bool
    proportional_attention: bool

    def __call__(
        self, layer: int, x: torch.Tensor, state: TokenState, taps: AttentionTaps
    ) -> tuple[torch.Tensor, TokenState]:
        k = self.k_per_layer[layer]
        if k == 0:
            return x, state
        x, sizes = torch.ops.trimformer.topk_select(
            x, taps.cls_attention(), state.sizes_or_ones(x), k, self.protected, int(self.fuse)
        )
        return x, TokenState(sizes=sizes)


@register_method
class EViT:
    name = "evit"
    params_type = EViTParams

    def plan(self, params: EViTParams, geometry: ModelGeometry) -> MethodPlan:
        out_of_range = [i for i in params.layers if not 0 <= i < geometry.num_layers]
        if out_of_range:
            raise ConfigError(
                f"evit: key 'layers' has {out_of_range} outside the model's zero-based layers "
                f"0..{geometry.num_layers - 1}"
            )
        if geometry.protected < 1:
            raise ConfigError("evit: ranks tokens by CLS attention, but the model has no CLS token")
        p, tokens = geometry.protected, geometry.num_tokens
        k_per_layer, counts, layers = [], [], []
        for layer in range(geometry.num_layers):
            k = kept_tokens(params.keep, tokens - p) if layer in params.layers else 0
            if 0 < k < tokens - p:
                attrs = {"k": k, "protected": p, "fuse": int(params.fuse)}
                tokens = TOPK_SELECT.output_tokens(tokens, attrs)
                layers.append({"op": TOPK_SELECT.name, **attrs})
            else:
                k = 0
                layers.append({})
            k_per_layer.append(k)
            counts.append(tokens)
        return MethodPlan(
            method=self.name,
            tokens_per_layer=tuple(counts),
            layers=tuple(layers),
            params={
                "keep": params.keep,
                "layers": sorted(params.layers),
                "fuse": params.fuse,
                "proportional_attention": params.proportional_attention,
            },
            reducer=EViTReducer(
                tuple(k_per_layer),
                p,
                params.fuse,
                # Without fusing every size stays 1 and the bias would be log(1) = 0.
                params.proportional_attention and params.fuse,
            ),
        )

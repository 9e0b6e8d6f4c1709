"""Adapter for Hugging Face BERT-family text encoders (BERT, MiniLM, RoBERTa, MPNet) with pooling.

The exported module is ``TextEncoder``: the transformers model and its sentence pooling (mean or
CLS, optionally L2-normalised, as a sentence-transformers folder declares), mapping
``input_ids``, ``attention_mask`` (and ``token_type_ids``) to ``sentence_embedding``.

Without a reducer the forward is the transformers model's own, pooled. With one, it runs the
model's own embeddings and layer sub-modules in a loop that carries two things from layer to
layer: token sizes (ToMe's proportional attention) and which tokens are padding. Padding rides
along as one extra channel of the hidden states while a reduction runs, so every op (merge,
select, fuse) moves or averages it exactly as it does the token it belongs to; it becomes the
additive attention mask of later layers (-max for padding, as transformers' own eager mask) and
the weight of mean pooling, which is size-weighted so that a merged token counts for all the
tokens it stands for. Matching features set padding apart (AttentionTaps.matching_metric), so
padding merges with padding and real tokens with real ones.

MPNet adds to every layer's logits a bias looked up from the bucketed relative position of each
key to each query (transformers computes it once, from token indices 0..N-1). Reduction moves and
merges tokens, so each token's position rides along as one more channel too: a merged token sits
at the size-weighted mean of its members' positions, a kept one keeps its own. Each layer's bias
is recomputed from the carried positions, bucketing the relative position rounded to the nearest
integer (the buckets are defined on integers; rounding the difference rather than each position
keeps a pair's distance as close as it can be to the mean distance of the members).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

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

__all__ = ["SUPPORTED_TEXT_TYPES", "HFTextAdapter", "TextEncoder"]

SUPPORTED_TEXT_TYPES = ("bert", "roberta", "xlm-roberta", "mpnet")
_REAL = 0.5  # a token is real when at least half of what it stands for is real


def _heads(tap: nn.Module, heads: int) -> torch.Tensor:
    """A query/key projection's captured output [B,N,H*Dh] as [B,H,N,Dh]."""
    value = tap.take()
    b, n, _ = value.shape
    return value.view(b, n, heads, -1).transpose(1, 2)


def _attention_bias(mask: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
    """Additive logits bias [B,1,1,N]: -max for padding, log(size) when sizes are tracked."""
    real = (mask >= _REAL).transpose(1, 2).unsqueeze(1)
    bias = torch.zeros_like(real, dtype=mask.dtype).masked_fill(~real, torch.finfo(mask.dtype).min)
    if sizes is not None:
        bias = bias + sizes.log().transpose(1, 2).unsqueeze(1)
    return bias


def _position_bias(encoder: nn.Module, positions: torch.Tensor) -> torch.Tensor:
    """MPNet's relative position bias [B,H,N,N] for carried token positions [B,N,1]."""
    relative = (positions.transpose(1, 2) - positions).round().long()  # key minus query
    buckets = encoder.relative_position_bucket(relative)  # transformers' own default buckets
    return encoder.relative_attention_bias(buckets).permute(0, 3, 1, 2)


def _projections(layer: nn.Module) -> nn.Module:
    """The module holding a layer's query/key projections (BERT's ``self``, MPNet's ``attn``)."""
    return layer.attention.attn if hasattr(layer.attention, "attn") else layer.attention.self


class TextEncoder(nn.Module):
    """A transformers text encoder and its sentence pooling, exported as one graph."""

    def __init__(self, backbone: nn.Module, pooling: str, normalize: bool, seq_len: int) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise AdapterError(f"pooling {pooling!r} is not supported; use mean or cls pooling")
        self.backbone = backbone
        self.pooling = pooling
        self.normalize = normalize
        self.seq_len = seq_len
        self.uses_token_types = getattr(backbone.config, "type_vocab_size", 1) > 1
        self.relative = hasattr(backbone.encoder, "relative_attention_bias")  # MPNet
        self.reducer: Reducer | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        names = ("input_ids", "attention_mask")
        return (*names, "token_type_ids") if self.uses_token_types else names

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.reducer is None:
            hidden = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        else:
            hidden, weights = self._reduced(input_ids, attention_mask, token_type_ids)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def _reduced(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [B,M,C] after the reducing layers, and pooling weights [B,M,1]."""
        assert self.reducer is not None
        x = self.backbone.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        positions = torch.arange(x.shape[1], dtype=x.dtype, device=x.device)
        positions = positions.view(1, -1, 1).expand(x.shape[0], -1, -1)
        state = TokenState()
        for layer_index, layer in enumerate(self.backbone.encoder.layer):
            sizes = state.sizes if self.reducer.proportional_attention else None
            bias = _attention_bias(mask, sizes)
            projections = _projections(layer)
            heads = projections.num_attention_heads
            if self.relative:
                position_bias = _position_bias(self.backbone.encoder, positions)
                x = layer.attention(x, attention_mask=bias, position_bias=position_bias)[0]
                scale, logits_bias = projections.attention_head_size**-0.5, bias + position_bias
                queries, keys = projections.q, projections.k
            else:
                x = layer.attention(x, attention_mask=bias)[0]
                scale, logits_bias = projections.scaling, bias
                queries, keys = projections.query, projections.key
            taps = AttentionTaps(
                _heads(queries, heads),
                _heads(keys, heads),
                scale,
                logits_bias,
                hidden=x,
                token_mask=(mask.squeeze(-1) >= _REAL).to(x.dtype),
            )
            extra = [positions, mask] if self.relative else [mask]
            carried, state = self.reducer(layer_index, torch.cat([x, *extra], -1), state, taps)
            x, positions, mask = carried[..., : x.shape[-1]], carried[..., -2:-1], carried[..., -1:]
            x = layer.output(layer.intermediate(x), x)  # both families' feed-forward
        return x, state.sizes_or_ones(x) * mask


@register_adapter
class HFTextAdapter:
    """``TextEncoder`` over a BERT-family transformers model (see the module docstring)."""

    family = "hf-text"
    default_metric = "hidden"  # measured closer to the full model than keys (METHODS.md)
    # Methods whose ops average tokens by size or keep them whole, so that padding stays
    # padding; EViT's fused token weights by attention and would blur it.
    methods = ("tome", "group_merge")

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, TextEncoder)

    def num_layers(self, model: nn.Module) -> int:
        return len(model.backbone.encoder.layer)

    def num_tokens(self, model: nn.Module) -> int:
        return int(model.seq_len)

    def protected_tokens(self, model: nn.Module) -> int:
        return 1  # [CLS] / <s>: the pooled token of CLS pooling, and the start of every text

    def patch_grid(self, model: nn.Module) -> None:
        return None  # a sequence, not an image

    def embed_dim(self, model: nn.Module) -> int:
        return int(model.backbone.config.hidden_size)

    def insert(self, model: nn.Module, reducer: Reducer) -> nn.Module:
        """A copy of ``model`` that reduces; the original is left untouched."""
        reduced = copy.deepcopy(model)
        for layer in reduced.backbone.encoder.layer:
            projections = _projections(layer)
            if model.relative:
                projections.q, projections.k = Tap(projections.q), Tap(projections.k)
            else:
                projections.query, projections.key = Tap(projections.query), Tap(projections.key)
        reduced.reducer = reducer
        return reduced

    @contextlib.contextmanager
    def export_patches(self, model: nn.Module) -> Iterator[nn.Module]:
        """Nothing to patch: text encoders are loaded with transformers' eager attention."""
        yield model

"""Adapter for the text tower of Hugging Face CLIP (``CLIPTextModel``, with or without projection).

The exported module is ``ClipTextEncoder``: ``input_ids`` and ``attention_mask`` to the pooled,
projected text embedding, exactly as transformers computes it without a reducer: causal
attention, the final layer norm at the end-of-text token (the largest id for configs older than
transformers PR #24773, whose eos_token_id is 2; else the first eos_token_id), then the
projection when the model has one.

With a reducer, two rules keep this meaning:

- The pooled token survives. Its position depends on the data, so it is gathered to the front
  before the first layer (the other tokens keep their order behind it) and protected, with the
  start-of-text token behind it (every token attends to it); both come out of every reduction
  untouched, and the pooled state is read at index 0. Tokens after the end-of-text token cannot
  reach it in the causal model, so they count as padding: matching sets them apart and no real
  token merges with them.
- Causality holds for what tokens carry. Each token carries the latest original position it
  stands for (its "last"): a merged token's last is the latest of its members', and a query may
  attend a key only when the key's last is not later than its own. So no token ever holds
  information from an original position later than its last, and the pooled token, whose last
  is its own position, depends on exactly the tokens it depends on in the full model. The last
  position rides along as one extra channel, 4**(p - c) for position p (c = (N - 1) / 2 keeps
  it a normal float32 for N <= 126), which the ops average by size: size times the channel is
  then a sum of distinct powers of four, at least 4**(last - c) and below 4/3 of it, so
  last = round(log4(sum) + c) exactly.
- Padding rides along as in hf_text (a channel averaged by size, -max in the attention bias).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from trimformer.errors import UsageError
from trimformer.models.base import (
    AttentionTaps,
    Reducer,
    Tap,
    TokenState,
    register_adapter,
)
from trimformer.models.hf_text import _REAL, _heads

__all__ = ["CLIP_TEXT_TYPES", "ClipTextEncoder", "HFClipTextAdapter"]

CLIP_TEXT_TYPES = ("clip_text_model",)
_MAX_REDUCED_LEN = 126  # 4**(+-(N - 1) / 2) stays a normal float32
_LEGACY_EOS_ID = 2  # configs before transformers PR #24773: pool at the largest id


def _causal_bias(last: torch.Tensor, mask: torch.Tensor, sizes: torch.Tensor | None):
    """Additive logits bias [B,1,N,N]: keys later than the query (by last position) and padding
    get -max; log(size) is added when sizes are tracked."""
    visible = (last.transpose(1, 2) <= last) & (mask >= _REAL).transpose(1, 2)
    bias = torch.zeros_like(visible, dtype=mask.dtype).masked_fill(
        ~visible, torch.finfo(mask.dtype).min
    )
    if sizes is not None:
        bias = bias + sizes.log().transpose(1, 2)
    return bias.unsqueeze(1)


class ClipTextEncoder(nn.Module):
    """A transformers CLIP text model, its end-of-text pooling and projection, as one graph."""

    input_names = ("input_ids", "attention_mask")
    uses_token_types = False

    def __init__(self, backbone: nn.Module, projection: nn.Module | None, seq_len: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.seq_len = seq_len
        self.reducer: Reducer | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.reducer is None:
            pooled = self.backbone(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        else:
            pooled = self._reduced(input_ids, attention_mask)
        return self.projection(pooled) if self.projection is not None else pooled

    def _eos_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Where transformers pools [B]: the first largest id (legacy configs) or first EOS."""
        ids = input_ids.to(torch.int32)
        eos_id = self.backbone.config.eos_token_id
        if eos_id == _LEGACY_EOS_ID:
            return ids.argmax(dim=-1)
        return (ids == eos_id).to(torch.int32).argmax(dim=-1)

    def _reduced(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled state [B,C] after the reducing layers (see the module docstring)."""
        assert self.reducer is not None
        n = input_ids.shape[1]
        eos = self._eos_index(input_ids).unsqueeze(1)
        rest = torch.arange(n - 1, device=input_ids.device).unsqueeze(0)
        order = torch.cat([eos, rest + (rest >= eos).to(rest.dtype)], dim=1)  # EOS first
        x = self.backbone.embeddings(input_ids=input_ids)
        x = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        last = order.unsqueeze(-1).to(x.dtype)
        before_eos = (order <= eos).to(x.dtype)
        mask = (torch.gather(attention_mask, 1, order).to(x.dtype) * before_eos).unsqueeze(-1)
        centre = (n - 1) / 2
        power = torch.exp2(2 * (last - centre))
        state = TokenState()
        for layer_index, layer in enumerate(self.backbone.encoder.layers):
            sizes = state.sizes if self.reducer.proportional_attention else None
            bias = _causal_bias(last, mask, sizes)
            attention = layer.self_attn
            x = x + attention(layer.layer_norm1(x), attention_mask=bias)[0]
            taps = AttentionTaps(
                _heads(attention.q_proj, attention.num_heads),
                _heads(attention.k_proj, attention.num_heads),
                attention.scale,
                bias,
                hidden=x,
                token_mask=(mask.squeeze(-1) >= _REAL).to(x.dtype),
            )
            carried, state = self.reducer(layer_index, torch.cat([x, power, mask], -1), state, taps)
            x, power, mask = carried[..., :-2], carried[..., -2:-1], carried[..., -1:]
            total = power * state.sizes_or_ones(x)
            last = torch.round(torch.log2(total) / 2 + centre)
            x = x + layer.mlp(layer.layer_norm2(x))
        return self.backbone.final_layer_norm(x[:, 0])


@register_adapter
class HFClipTextAdapter:
    """``ClipTextEncoder`` over a transformers CLIP text model (see the module docstring)."""

    family = "hf-clip-text"
    default_metric = "hidden"
    # ToMe only: its size-weighted merge keeps the carried last position and padding flag
    # exact. group_merge's group_ids name tokens in text order, which the gathered end-of-text
    # token breaks, and its empty groups (size 0) have no last position; pruning methods keep
    # tokens by scores that do not know the padding (see hf_text).
    methods = ("tome",)

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, ClipTextEncoder)

    def num_layers(self, model: nn.Module) -> int:
        return len(model.backbone.encoder.layers)

    def num_tokens(self, model: nn.Module) -> int:
        return int(model.seq_len)

    def protected_tokens(self, model: nn.Module) -> int:
        return 2  # the pooled end-of-text token (gathered to the front) and start-of-text

    def patch_grid(self, model: nn.Module) -> None:
        return None  # a sequence, not an image

    def embed_dim(self, model: nn.Module) -> int:
        return int(model.backbone.config.hidden_size)

    def insert(self, model: nn.Module, reducer: Reducer) -> nn.Module:
        """A copy of ``model`` that reduces; the original is left untouched."""
        if model.seq_len > _MAX_REDUCED_LEN:
            raise UsageError(
                f"CLIP text reduction tracks causality for up to {_MAX_REDUCED_LEN} tokens, got "
                f"{model.seq_len}; pass --seq-len {_MAX_REDUCED_LEN} or less"
            )
        reduced = copy.deepcopy(model)
        for layer in reduced.backbone.encoder.layers:
            attention = layer.self_attn
            attention.q_proj, attention.k_proj = Tap(attention.q_proj), Tap(attention.k_proj)
        reduced.reducer = reducer
        return reduced

    @contextlib.contextmanager
    def export_patches(self, model: nn.Module) -> Iterator[nn.Module]:
        """Nothing to patch: CLIP text models are loaded with transformers' eager attention."""
        yield model

"""What every model-family adapter provides, and the registry that picks one for a model.

An adapter knows one family: where its blocks are, how many leading tokens are protected, how to
read each attention's queries and keys (from which taps recompute CLS attention and attention
probabilities), and how to add ToMe's proportional-attention bias. It inserts a method's
reductions between each block's attention residual and its MLP, without copying the model's
forward: the model keeps its own embedding, blocks' sub-modules, norm and head.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

__all__ = [
    "AdapterError",
    "AttentionTaps",
    "ModelAdapter",
    "Reducer",
    "TokenState",
    "adapter_for",
    "register_adapter",
    "registered_adapters",
]


class AdapterError(ValueError):
    """The model is not of a family an adapter supports, or uses a feature it cannot handle."""


@dataclass(frozen=True)
class AttentionTaps:
    """What a block's attention exposes to a reduction, as the attention itself computed it.

    ``queries`` and ``head_keys`` [B,H,N,Dh] are taken after any q/k norm and before scaling;
    ``scale`` and ``bias`` (additive logit bias broadcastable to [B,H,N,N], e.g. proportional
    attention's log-sizes, or None) are those the attention used. Attention probabilities are
    recomputed from them, so they are available whether the model ran a fused kernel or not.
    """

    queries: torch.Tensor
    head_keys: torch.Tensor
    scale: float
    bias: torch.Tensor | None = None

    @property
    def keys(self) -> torch.Tensor:
        """Keys averaged over heads [B,N,Dh] (ToMe's matching metric)."""
        return self.head_keys.mean(dim=1)

    def _probs(self, queries: torch.Tensor) -> torch.Tensor:
        logits = (queries * self.scale) @ self.head_keys.transpose(-2, -1)
        if self.bias is not None:
            logits = logits + self.bias
        return logits.softmax(dim=-1)

    def attention_probs(self) -> torch.Tensor:
        """The attention probabilities [B,H,N,N] (rows: queries, columns: keys)."""
        return self._probs(self.queries)

    def cls_attention(self) -> torch.Tensor:
        """The first token's (CLS) row of the attention probabilities, mean over heads [B,N]."""
        return self._probs(self.queries[:, :, :1]).mean(dim=1).squeeze(1)


@dataclass(frozen=True)
class TokenState:
    """Per-forward token bookkeeping carried from block to block.

    ``sizes`` [B,N,1] counts the original tokens each token stands for; None means all ones
    (nothing merged yet), which lets the first blocks skip the proportional-attention bias.
    ``scores`` [B,N] are what a method computed at one block for use at a later one (HiRED's
    early CLS attention). ``attn_bias`` (broadcastable to [B,H,N,N]) is added to the attention
    logits of every later block (a deletion gate's mask). A reducer that changes the token
    count returns a state without them.
    """

    sizes: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    attn_bias: torch.Tensor | None = None

    def sizes_or_ones(self, x: torch.Tensor) -> torch.Tensor:
        """The sizes, materialised as ones shaped like x[..., :1] when nothing merged yet."""
        return self.sizes if self.sizes is not None else torch.ones_like(x[..., :1])


class Reducer(Protocol):
    """A method's per-forward reduction, called by the adapter between attention and MLP."""

    proportional_attention: bool

    def __call__(
        self, layer: int, x: torch.Tensor, state: TokenState, taps: AttentionTaps
    ) -> tuple[torch.Tensor, TokenState]: ...


class ModelAdapter(Protocol):
    """One model family (see the module docstring)."""

    family: str

    def matches(self, model: nn.Module) -> bool: ...

    def num_layers(self, model: nn.Module) -> int: ...

    def num_tokens(self, model: nn.Module) -> int: ...

    def protected_tokens(self, model: nn.Module) -> int: ...

    def patch_grid(self, model: nn.Module) -> tuple[int, int] | None:
        """Rows and columns of the unprotected tokens on the image (None: not an image grid)."""
        ...

    def embed_dim(self, model: nn.Module) -> int: ...

    def insert(self, model: nn.Module, reducer: Reducer) -> nn.Module: ...

    def export_patches(self, model: nn.Module) -> AbstractContextManager[nn.Module]: ...


_ADAPTERS: list[ModelAdapter] = []


def register_adapter(factory: Callable[[], ModelAdapter]) -> Callable[[], ModelAdapter]:
    """Class decorator: instantiate and register an adapter."""
    _ADAPTERS.append(factory())
    return factory


def registered_adapters() -> list[ModelAdapter]:
    """All adapters, in registration order."""
    return list(_ADAPTERS)


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter whose family the model belongs to, or AdapterError naming the supported ones."""
    for adapter in _ADAPTERS:
        if adapter.matches(model):
            return adapter
    families = ", ".join(a.family for a in _ADAPTERS)
    raise AdapterError(
        f"no adapter for {type(model).__name__}; supported model families: {families}"
    )

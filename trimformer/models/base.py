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
    "GraphIO",
    "ModelAdapter",
    "Reducer",
    "Tap",
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
    hidden: torch.Tensor | None = None  # [B,N,C] the block's state after the attention residual
    token_mask: torch.Tensor | None = None  # [B,N] 1 for real tokens, 0 for padding (text)

    @property
    def keys(self) -> torch.Tensor:
        """Keys averaged over heads [B,N,Dh] (ToMe's matching metric)."""
        return self.head_keys.mean(dim=1)

    def matching_metric(self, kind: str) -> torch.Tensor:
        """Features to match tokens on: ``keys`` (ToMe's) or ``hidden`` states [B,N,*].

        With padding, real tokens become [unit features, sqrt(3)] and padding the constant
        [0, -1]: cosines between real tokens map monotonically to [0.5, 1], between padding to
        exactly 1, and between real and padding to -0.87. So padding is matched with padding
        first, and never merged into a real token while a real partner exists.
        """
        if kind == "hidden":
            if self.hidden is None:
                raise ValueError("this adapter does not expose hidden states for matching")
            metric = self.hidden
        else:
            metric = self.keys
        if self.token_mask is None:
            return metric
        real = self.token_mask.unsqueeze(-1).to(metric.dtype)
        unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        side = real * (3**0.5 + 1) - 1
        return torch.cat([unit * real, side], dim=-1)

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


@dataclass(frozen=True)
class GraphIO:
    """What an exported graph takes and returns, as the model's forward sees it.

    ``example`` holds one example tensor per input, in the order of the forward's arguments, with
    batch >= 2 where the batch is dynamic (torch would otherwise specialise it to 1);
    ``dynamic`` names each dynamic axis per input; ``outputs`` names the forward's outputs.
    """

    example: dict[str, torch.Tensor]
    dynamic: dict[str, dict[int, str]]
    outputs: tuple[str, ...]

    @classmethod
    def image(cls, pixels: torch.Tensor, dynamic_batch: bool = True) -> GraphIO:
        """An image classifier's: ``pixel_values`` in, ``logits`` out."""
        dynamic = {"pixel_values": {0: "batch"}} if dynamic_batch else {}
        return cls({"pixel_values": pixels}, dynamic, ("logits",))


class Reducer(Protocol):
    """A method's per-forward reduction, called by the adapter between attention and MLP."""

    proportional_attention: bool

    def __call__(
        self, layer: int, x: torch.Tensor, state: TokenState, taps: AttentionTaps
    ) -> tuple[torch.Tensor, TokenState]: ...


class ModelAdapter(Protocol):
    """One model family (see the module docstring)."""

    family: str
    default_metric: str  # features ToMe-style matching uses unless a config says otherwise
    methods: tuple[str, ...] | None  # the reduction methods it supports; None: all

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


class Tap(nn.Module):
    """Wraps a module inside an attention (a q/k norm or projection) and keeps its last output,
    so the reduction reads queries and keys exactly as the model's own attention code made them.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self._value: torch.Tensor | None = None

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = self.inner(t)
        self._value = t
        return t

    def take(self) -> torch.Tensor:
        """Return the tensor captured by the last attention call and forget it."""
        value, self._value = self._value, None
        if value is None:
            raise RuntimeError("attention ran without computing queries and keys")
        return value


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

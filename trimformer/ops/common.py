"""Small tensor helpers shared by the torch faces of several ops."""

from __future__ import annotations

import torch

__all__ = ["gather_rows", "output_buffers"]


def gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[b, idx[b, k], :] for every batch item b: the token rows ``idx`` [B,K] of t [B,N,C]."""
    return torch.gather(t, 1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def output_buffers(x: torch.Tensor, tokens: int, poison: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x_out [B,tokens,C] and size_out [B,tokens,1] for a kernel reducing x [B,N,C]: filled with
    NaN when ``poison`` (an element the kernel never writes shows), else left uninitialised."""
    batch, _, channels = x.shape

    def make(*shape: int) -> torch.Tensor:
        if poison:
            return torch.full(shape, float("nan"), dtype=x.dtype, device=x.device)
        return torch.empty(shape, dtype=x.dtype, device=x.device)

    return make(batch, tokens, channels), make(batch, tokens, 1)

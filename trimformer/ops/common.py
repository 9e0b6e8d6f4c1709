"""Small tensor helpers shared by the torch faces of several ops."""

from __future__ import annotations

import torch

__all__ = ["gather_rows"]


def gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[b, idx[b, k], :] for every batch item b: the token rows ``idx`` [B,K] of t [B,N,C]."""
    return torch.gather(t, 1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

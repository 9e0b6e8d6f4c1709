"""Ranks counted by pairwise comparison: exact, with ties to the lower index, and exportable.

Sorting would give the same ranks, but its ONNX form (TopK over data-dependent orders) is less
direct than plain comparisons and a sum, which every runtime runs the same way.
"""

from __future__ import annotations

import torch

__all__ = ["descending_rank"]


def descending_rank(values: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """Position [B,M] of every value in descending order, ties to the lower index first.

    With ``same`` [M,M] (bool: tokens t and u are in one group) the rank counts only the
    values of the token's own group.
    """
    v, u = values.unsqueeze(-1), values.unsqueeze(-2)  # token t along dim 1, u along dim 2
    index = torch.arange(values.shape[-1], device=values.device)
    lower = index.unsqueeze(0) < index.unsqueeze(1)  # [t, u]: u < t
    ahead = (u > v) | ((u == v) & lower)
    if same is not None:
        ahead = ahead & same
    return ahead.sum(dim=-1)

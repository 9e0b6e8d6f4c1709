"""Count a module's floating-point operations (matmuls, convolutions, attention) at batch 1."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops"]


def count_flops(module: nn.Module, example: torch.Tensor) -> int:
    """FLOPs (2 x multiply-adds) of one forward on ``example[:1]``.

    Counted by torch's FlopCounterMode, which covers the dense ops that dominate a transformer;
    the reduction ops themselves are custom ops and not counted.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(example[:1])
    return int(counter.get_total_flops())

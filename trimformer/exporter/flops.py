"""Count a module's floating-point operations (matmuls, convolutions, attention) at batch 1."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from trimformer.models.base import GraphIO

__all__ = ["count_flops"]


def count_flops(module: nn.Module, io: GraphIO) -> int:
    """FLOPs (2 x multiply-adds) of one forward on the first sample of ``io.example``.

    Counted by torch's FlopCounterMode, which covers the dense ops that dominate a transformer;
    the reduction ops themselves are custom ops and not counted. (For text, the first sample is
    the unpadded one: padding costs the same FLOPs as real tokens.)
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*(t[:1] for t in io.example.values()))
    return int(counter.get_total_flops())

"""MrT5-style delete gate (Kallini et al., 2024): a learned gate deletes tokens at one block.

At block ``layer``, after its attention residual and before its MLP, a linear gate scores every
token, s = w·x + b (no LayerNorm), and the unprotected tokens with s < ``threshold`` are deleted;
protected tokens (CLS, registers) never are. How many go depends on the data, so the graph keeps
all N tokens (padded to the maximum) and deletes by masking: from the next block on, every
attention adds -inf to the logits between a deleted token and any other token, so no kept token
attends to a deleted one and a deleted one attends only to itself. The kept tokens and the CLS
output are those of the sequence with the deleted tokens removed (MrT5's hard deletion); the
graph's FLOPs do not shrink, a runtime would have to skip the masked tokens to gain time.

MrT5 computes G = c·sigmoid(-(w·LN(h) + b)) with c < 0 and keeps tokens with G > c/2, that is
w·LN(h) + b > 0: the default ``threshold`` 0 is that rule on a gate trained without the LayerNorm.
Its gate follows encoder layer 3, so deletion takes effect from the 4th block; here the default
``layer`` is zero-based 2, whose reduction point is followed by the 4th block (the gate reads the
3rd block's state before its MLP, the closest point the adapter offers). The weights come from a
safetensors file (``gate: PATH`` with ``weight`` [D] and ``bias`` []); without one the gate is
random (``seed``), which only exercises the export path and says so in a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from trimformer.methods.base import ConfigError, MethodPlan, ModelGeometry, register_method
from trimformer.methods.budget import check_layers
from trimformer.models.base import AttentionTaps, TokenState

__all__ = ["DeleteGateReducer", "GateParams", "MrT5Gate", "deletion_bias", "load_gate"]

log = logging.getLogger(__name__)


def deletion_bias(keep: torch.Tensor) -> torch.Tensor:
    """Additive attention bias [B,1,N,N] from kept-token flags [B,N]: 0 where query and key are
    both kept or are the same token, -inf elsewhere."""
    eye = torch.eye(keep.shape[1], dtype=torch.bool, device=keep.device)
    allowed = (keep.unsqueeze(2) & keep.unsqueeze(1)) | eye
    zeros = torch.zeros(allowed.shape, dtype=torch.float32, device=keep.device)
    return zeros.masked_fill(~allowed, -torch.inf).unsqueeze(1)


def load_gate(path: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate's ``weight`` [dim] and ``bias`` [] from a safetensors file (float32), checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path)
    try:
        found = file.is_file()
    except OSError:  # e.g. a name too long for the file system
        found = False
    if not found:
        raise ConfigError(f"mrt5_gate: key 'gate' names {path}, which is not a file")
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"mrt5_gate: cannot read gate file {path}: {exc}") from None
    if set(tensors) != {"weight", "bias"}:
        raise ConfigError(
            f"mrt5_gate: gate file {path} must hold exactly tensors 'weight' [{dim}] and "
            f"'bias' [], found {sorted(tensors)}"
        )
    weight, bias = tensors["weight"], tensors["bias"]
    if tuple(weight.shape) != (dim,) or bias.numel() != 1:
        raise ConfigError(
            f"mrt5_gate: gate file {path} has weight {list(weight.shape)} and bias "
            f"{list(bias.shape)}; the model needs weight [{dim}] and bias []"
        )
    if not (weight.is_floating_point() and bias.is_floating_point()):
        raise ConfigError(f"mrt5_gate: gate file {path} must hold floating-point tensors")
    weight, bias = weight.float(), bias.float().reshape(())
    if not (weight.isfinite().all() and bias.isfinite()):
        raise ConfigError(f"mrt5_gate: gate file {path} holds NaN or infinite values")
    return weight, bias


@dataclass(frozen=True)
class GateParams:
    """The gate's knobs, as written in a reductions profile."""

    gate: str | None = None
    seed: int = 0
    threshold: float = 0.0
    layer: int = 2

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold):
            raise ConfigError(
                f"mrt5_gate: key 'threshold' must be a finite number, got {self.threshold}"
            )
        if self.seed < 0:
            raise ConfigError(f"mrt5_gate: key 'seed' must be >= 0, got {self.seed}")


@dataclass(frozen=True, eq=False)
class DeleteGateReducer:
    """At ``layer``, flags the tokens the gate keeps and sets the deletion bias for later blocks."""

    layer: int
    weight: torch.Tensor  # [D]
    bias: torch.Tensor  # []
    threshold: float
    protected: int
    proportional_attention: bool = False  # deletion only: every size stays 1

    def __call__(
        self, layer: int, x: torch.Tensor, state: TokenState, taps: AttentionTaps
    ) -> tuple[torch.Tensor, TokenState]:
        if layer != self.layer:
            return x, state
        scores = x @ self.weight.to(x) + self.bias.to(x)
        position = torch.arange(x.shape[1], device=x.device)
        keep = (scores >= self.threshold) | (position < self.protected)
        return x, dataclasses.replace(state, attn_bias=deletion_bias(keep).to(x.dtype))


@register_method
class MrT5Gate:
    name = "mrt5_gate"
    params_type = GateParams

    def plan(self, params: GateParams, geometry: ModelGeometry) -> MethodPlan:
        check_layers(self.name, "layer", (params.layer,), geometry.num_layers)
        if geometry.dim is None:
            raise ConfigError("mrt5_gate: needs the model's token width; use a supported model")
        if params.gate is not None:
            weight, bias = load_gate(params.gate, geometry.dim)
        else:
            log.warning(
                "mrt5_gate: no 'gate' file given, so the gate is random (seed %d) and deletes "
                "arbitrary tokens; pass gate: PATH to a safetensors file with 'weight' [%d] and "
                "'bias' []",
                params.seed,
                geometry.dim,
            )
            generator = torch.Generator().manual_seed(params.seed)
            weight = torch.randn(geometry.dim, generator=generator) / math.sqrt(geometry.dim)
            bias = torch.zeros(())
        p = geometry.protected
        record = {"gate": "delete", "threshold": params.threshold, "protected": p}
        return MethodPlan(
            method=self.name,
            tokens_per_layer=(geometry.num_tokens,) * geometry.num_layers,
            layers=tuple(record if i == params.layer else {} for i in range(geometry.num_layers)),
            params=dataclasses.asdict(params),
            reducer=DeleteGateReducer(params.layer, weight, bias, params.threshold, p),
        )

"""ToMe (Bolya et al., ICLR 2023): merge r tokens per block by bipartite soft matching on keys.

Zero-shot on off-the-shelf ViTs with proportional attention. ``r`` is one int (every layer), a
per-layer list, or an int with ``schedule: decreasing`` (linear from 2r to 0, same total).
A layer that cannot remove its r tokens removes what it can, with one warning for the plan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from trimformer.methods.base import ConfigError, MethodPlan, ModelGeometry, register_method
from trimformer.models.base import AttentionTaps, TokenState
from trimformer.ops.bipartite_merge import BIPARTITE_MERGE, max_merge_r

__all__ = ["ToMe", "ToMeParams", "ToMeReducer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToMeParams:
    """ToMe's knobs, as written in a reductions profile."""

    r: int | tuple[int, ...] = 13
    schedule: Literal["constant", "decreasing"] = "constant"
    proportional_attention: bool = True
    metric: Literal["auto", "keys", "hidden"] = "auto"  # auto: the model family's default

    def __post_init__(self) -> None:
        values = self.r if isinstance(self.r, tuple) else (self.r,)
        if any(v < 0 for v in values):
            raise ConfigError(f"tome: r must be >= 0, got {self.r}")
        if isinstance(self.r, tuple) and self.schedule != "constant":
            raise ConfigError("tome: a per-layer r list takes no schedule; drop 'schedule'")

    def per_layer(self, num_layers: int) -> list[int]:
        """The requested r of every layer, before clamping to what the tokens allow."""
        if isinstance(self.r, tuple):
            if len(self.r) != num_layers:
                raise ConfigError(
                    f"tome: r lists {len(self.r)} values but the model has {num_layers} layers"
                )
            return list(self.r)
        if self.schedule == "constant" or num_layers == 1:
            return [self.r] * num_layers
        step = 2 * self.r / (num_layers - 1)
        return [int(2 * self.r - step * i) for i in range(num_layers)]


@dataclass(frozen=True)
class ToMeReducer:
    """Calls BipartiteMerge with each layer's r on the keys averaged over heads."""

    r_per_layer: tuple[int, ...]
    protected: int
    proportional_attention: bool
    metric: str = "keys"

    def __call__(
        self, layer: int, x: torch.Tensor, state: TokenState, taps: AttentionTaps
    ) -> tuple[torch.Tensor, TokenState]:
        r = self.r_per_layer[layer]
        if r == 0:
            return x, state
        x, sizes = torch.ops.trimformer.bipartite_merge(
            x, taps.matching_metric(self.metric), state.sizes_or_ones(x), r, self.protected
        )
        return x, TokenState(sizes=sizes)


@register_method
class ToMe:
    name = "tome"
    params_type = ToMeParams

    def plan(self, params: ToMeParams, geometry: ModelGeometry) -> MethodPlan:
        requested = params.per_layer(geometry.num_layers)
        metric = geometry.matching if params.metric == "auto" else params.metric
        tokens, applied, clamped = geometry.num_tokens, [], []
        for layer, r in enumerate(requested):
            limit = max_merge_r(tokens, geometry.protected)
            if r > limit:
                clamped.append(f"{layer}: {r}->{limit}")
                r = limit
            applied.append(r)
            tokens -= r
        if clamped:
            log.warning(
                "tome: some layers cannot remove the requested r and remove what they can "
                "(layer: requested->applied) %s",
                ", ".join(clamped),
            )
        counts, n = [], geometry.num_tokens
        for r in applied:
            n -= r
            counts.append(n)
        layers = tuple(
            {"op": BIPARTITE_MERGE.name, "r": r, "protected": geometry.protected} if r else {}
            for r in applied
        )
        return MethodPlan(
            method=self.name,
            tokens_per_layer=tuple(counts),
            layers=layers,
            params={
                "r": list(params.r) if isinstance(params.r, tuple) else params.r,
                "schedule": params.schedule,
                "proportional_attention": params.proportional_attention,
                "metric": metric,
                "r_per_layer": applied,
            },
            reducer=ToMeReducer(
                tuple(applied), geometry.protected, params.proportional_attention, metric
            ),
        )

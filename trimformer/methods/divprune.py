"""DivPrune (Alvar et al., CVPR 2025): keep the most diverse tokens, by greedy max-min selection.

At each chosen block, after the attention residual and before the MLP, the unprotected tokens
are reduced to the k = ceil(keep·(N - protected)) (or exactly ``k``) that greedy farthest-point
selection on cosine distance picks (DiverseSelect); protected tokens stay, the kept tokens keep
their order. The paper prunes a VLM's visual tokens at the vision tower's output, on the tokens
themselves (``metric: hidden``, the default; ``keys`` uses the attention keys averaged over
heads, as ToMe). A classifier pooling its CLS token cannot prune at its output (the CLS token
would be unchanged), so the default is one block in the middle (zero-based ``num_layers // 2``:
block 6 of 12, the 7th) keeping half of the tokens; a vision tower can name its last block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from trimformer.methods.base import MethodPlan, ModelGeometry, register_method
from trimformer.methods.budget import KeepBudget, plan_kept
from trimformer.models.base import AttentionTaps, TokenState
from trimformer.ops.diverse_select import DIVERSE_SELECT

__all__ = ["DivPrune", "DivPruneParams", "DivPruneReducer"]


@dataclass(frozen=True)
class DivPruneParams(KeepBudget):
    """DivPrune's knobs, as written in a reductions profile (see KeepBudget for keep/k/layers)."""

    metric: Literal["hidden", "keys"] = "hidden"

    method = "divprune"


@dataclass(frozen=True)
class DivPruneReducer:
    """Calls DiverseSelect with each layer's k on the tokens or keys; k = 0 leaves a layer alone."""

    k_per_layer: tuple[int, ...]
    protected: int
    metric: str
    proportional_attention: bool = False  # selection only: every size stays 1

    def __call__(
        self, layer: int, x: torch.Tensor, state: TokenState, taps: AttentionTaps
    ) -> tuple[torch.Tensor, TokenState]:
        k = self.k_per_layer[layer]
        if k == 0:
            return x, state
        features = x if self.metric == "hidden" else taps.keys
        x, sizes = torch.ops.trimformer.diverse_select(
            x, features, state.sizes_or_ones(x), k, self.protected
        )
        return x, TokenState(sizes=sizes)


@register_method
class DivPrune:
    name = "divprune"
    params_type = DivPruneParams

    def plan(self, params: DivPruneParams, geometry: ModelGeometry) -> MethodPlan:
        layers = params.resolved_layers(geometry.num_layers)
        kept = plan_kept(
            DIVERSE_SELECT,
            geometry,
            lambda layer, candidates: params.kept(candidates) if layer in layers else 0,
        )
        return MethodPlan(
            method=self.name,
            tokens_per_layer=kept.tokens_per_layer,
            layers=kept.layers,
            params={**params.record(geometry.num_layers), "metric": params.metric},
            reducer=DivPruneReducer(kept.k_per_layer, geometry.protected, params.metric),
        )

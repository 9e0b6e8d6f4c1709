"""Zero-TPrune (Wang et al., CVPR 2024): prune by attention-graph importance, then by similarity.

Per layer, after the attention residual and before the MLP:
- I-stage: importance = weighted PageRank on the attention graph (probabilities averaged over
  heads, rows = queries): s⁰ = 1/N, sᵗ⁺¹ = Aᵀsᵗ for a fixed number of ``iterations``; the
  ``importance[layer]`` least important unprotected tokens are pruned.
- S-stage: the survivors, sorted by importance, split into the more important half B
  (ceil(S/2) tokens) and the rest A; each A token's similarity is its best key cosine to a B
  token, and the ``similarity[layer]`` most similar A tokens are pruned (deleted, not averaged).
Both stages become one TopKSelect (fuse 0) on a combined score: B tokens 2, A tokens minus their
similarity (in [-1, 1]), I-pruned tokens -2. Ties keep the lower token index. The paper's head
filtering and early-layer region emphasis are not reproduced (their details are unverified).
Counts are static; a layer that cannot remove what is asked removes what it can, with one warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trimformer.methods.base import ConfigError, MethodPlan, ModelGeometry, register_method
from trimformer.methods.ranking import descending_rank
from trimformer.models.base import AttentionTaps, TokenState
from trimformer.ops.topk_select import TOPK_SELECT

__all__ = ["ZeroTPrune", "ZeroTPruneParams", "ZeroTPruneReducer", "pagerank", "two_stage_scores"]

log = logging.getLogger(__name__)

_NORM_EPS = 1e-12


def pagerank(graph: torch.Tensor, iterations: int) -> torch.Tensor:
    """Weighted PageRank [B,N] of a row-stochastic graph [B,N,N]: s <- sA from uniform s."""
    s = torch.full_like(graph[:, :1, :], 1.0 / graph.shape[-1])
    for _ in range(iterations):
        s = s @ graph
    return s.squeeze(1)


def two_stage_scores(
    importance: torch.Tensor, keys: torch.Tensor, protected: int, survivors: int
) -> torch.Tensor:
    """TopKSelect scores [B,N] ranking B above A (by dissimilarity) above the I-pruned tokens.

    ``survivors`` unprotected tokens pass the I-stage; protected tokens get score 0 (TopKSelect
    keeps them whatever their score).
    """
    rank = descending_rank(importance[:, protected:])
    in_b = rank < (survivors + 1) // 2
    in_a = ~in_b & (rank < survivors)
    unit = keys[:, protected:]
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    similarity = (unit @ unit.transpose(1, 2)).masked_fill(~in_b.unsqueeze(1), -torch.inf)
    best = similarity.amax(dim=-1)
    scores = torch.where(in_b, 2.0, torch.where(in_a, -best, -2.0))
    return F.pad(scores, (protected, 0))


@dataclass(frozen=True)
class ZeroTPruneParams:
    """Zero-TPrune's knobs, as written in a reductions profile: tokens pruned per layer."""

    importance: int | tuple[int, ...] = 6
    similarity: int | tuple[int, ...] = 6
    iterations: int = 10

    def __post_init__(self) -> None:
        for key in ("importance", "similarity"):
            value = getattr(self, key)
            if any(v < 0 for v in (value if isinstance(value, tuple) else (value,))):
                raise ConfigError(f"zero_tprune: key {key!r} must be >= 0, got {value}")
        if not 1 <= self.iterations <= 100:
            raise ConfigError(
                f"zero_tprune: key 'iterations' must be in 1..100, got {self.iterations}"
            )

    def per_layer(self, key: str, num_layers: int) -> list[int]:
        """The requested count of ``key`` for every layer."""
        value = getattr(self, key)
        if not isinstance(value, tuple):
            return [value] * num_layers
        if len(value) != num_layers:
            raise ConfigError(
                f"zero_tprune: key {key!r} lists {len(value)} values but the model has "
                f"{num_layers} layers"
            )
        return list(value)


@dataclass(frozen=True)
class ZeroTPruneReducer:
    """Calls TopKSelect with each layer's k; k = 0 leaves a layer alone.

    ``survivors[layer]`` unprotected tokens pass the I-stage; k below it means an S-stage.
    """

    k_per_layer: tuple[int, ...]
    survivors: tuple[int, ...]
    protected: int
    iterations: int
    proportional_attention: bool = False  # pruning only: every size stays 1

    def __call__(
        self, layer: int, x: torch.Tensor, state: TokenState, taps: AttentionTaps
    ) -> tuple[torch.Tensor, TokenState]:
        k, survivors = self.k_per_layer[layer], self.survivors[layer]
        if k == 0:
            return x, state
        scores = pagerank(taps.attention_probs().mean(dim=1), self.iterations)
        if k < survivors:
            scores = two_stage_scores(scores, taps.keys, self.protected, survivors)
        x, sizes = torch.ops.trimformer.topk_select(
            x, scores, state.sizes_or_ones(x), k, self.protected, 0
        )
        return x, TokenState(sizes=sizes)


@register_method
class ZeroTPrune:
    name = "zero_tprune"
    params_type = ZeroTPruneParams

    def plan(self, params: ZeroTPruneParams, geometry: ModelGeometry) -> MethodPlan:
        requested = zip(
            params.per_layer("importance", geometry.num_layers),
            params.per_layer("similarity", geometry.num_layers),
            strict=True,
        )
        p, tokens = geometry.protected, geometry.num_tokens
        ks, survivors, counts, layers, applied, clamped = [], [], [], [], [], []
        for layer, (want_i, want_s) in enumerate(requested):
            m = tokens - p
            r_i = min(want_i, max(m - 1, 0))
            r_s = min(want_s, (m - r_i) // 2)
            if (r_i, r_s) != (want_i, want_s):
                clamped.append(f"{layer}: {want_i}+{want_s}->{r_i}+{r_s}")
            applied.append([r_i, r_s])
            k = m - r_i - r_s if r_i + r_s else 0
            if k:
                attrs = {"k": k, "protected": p, "fuse": 0}
                tokens = TOPK_SELECT.output_tokens(tokens, attrs)
                layers.append({"op": TOPK_SELECT.name, **attrs})
            else:
                layers.append({})
            ks.append(k)
            survivors.append(m - r_i)
            counts.append(tokens)
        if clamped:
            log.warning(
                "zero_tprune: some layers cannot prune the requested tokens and prune what they "
                "can (layer: importance+similarity requested->applied) %s",
                ", ".join(clamped),
            )
        return MethodPlan(
            method=self.name,
            tokens_per_layer=tuple(counts),
            layers=tuple(layers),
            params={
                "importance": _plain(params.importance),
                "similarity": _plain(params.similarity),
                "iterations": params.iterations,
                "pruned_per_layer": applied,
            },
            reducer=ZeroTPruneReducer(tuple(ks), tuple(survivors), p, params.iterations),
        )


def _plain(value: int | tuple[int, ...]) -> int | list[int]:
    return list(value) if isinstance(value, tuple) else value

"""ToDRE (2025): a diverse subset of tokens, then the ones relevant to the task.

Stage 1 keeps k = ceil(keep·(N - protected)) (or exactly ``k``) unprotected tokens by greedy
k-center selection on cosine distance, which is DiverseSelect's greedy farthest-point rule
(the paper's first stage, after the vision encoder). Stage 2, with ``query: true``, adds a graph
input ``query_embedding`` [batch, C] (e.g. the text prompt embedded into the tokens' space) and
keeps the ceil(relevant·k) diverse tokens most similar to it by cosine (TopKSelect, order kept):
the paper drops text-irrelevant visual tokens inside the language model, by cross-modal
attention; a deployed tower has no language model, so the query's embedding stands for it.
Protected tokens always stay. Like DivPrune, the default block is the middle one for a classifier
that pools CLS; a vision tower names its last block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from trimformer.methods.base import (
    ConfigError,
    InputSlot,
    MethodInput,
    MethodPlan,
    ModelGeometry,
    register_method,
)
from trimformer.methods.budget import KeepBudget, plan_kept
from trimformer.methods.evit import kept_tokens
from trimformer.models.base import AttentionTaps, TokenState
from trimformer.ops.diverse_select import DIVERSE_SELECT
from trimformer.ops.topk_select import TOPK_SELECT

__all__ = ["QUERY_INPUT", "ToDRE", "ToDREParams", "ToDREReducer", "relevance"]

QUERY_INPUT = "query_embedding"


@dataclass(frozen=True)
class ToDREParams(KeepBudget):
    """ToDRE's knobs (see KeepBudget for keep/k/layers of the diversity stage)."""

    query: bool = False
    relevant: float = 0.5  # share of the diverse tokens kept by relevance to the query
    metric: Literal["hidden", "keys"] = "hidden"

    method = "todre"
    default_keep = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.relevant <= 1:
            raise ConfigError(f"todre: key 'relevant' must be in (0, 1], got {self.relevant}")


def relevance(x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [B,N] of every token x [B,N,C] to its sample's query [B,C]."""
    unit_x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    unit_q = query / query.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (unit_x @ unit_q.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class ToDREReducer:
    """DiverseSelect with each layer's k, then (with a query) TopKSelect by relevance."""

    k_per_layer: tuple[int, ...]
    relevant_per_layer: tuple[int, ...]  # 0: no relevance stage at that layer
    protected: int
    metric: str
    slot: InputSlot = field(default_factory=InputSlot)
    proportional_attention: bool = False  # selection only: every size stays 1

    def __call__(
        self, layer: int, x: torch.Tensor, state: TokenState, taps: AttentionTaps
    ) -> tuple[torch.Tensor, TokenState]:
        k = self.k_per_layer[layer]
        sizes = state.sizes_or_ones(x)
        if k:
            features = x if self.metric == "hidden" else taps.keys
            x, sizes = torch.ops.trimformer.diverse_select(x, features, sizes, k, self.protected)
        if kept := self.relevant_per_layer[layer]:
            scores = relevance(x, self.slot[QUERY_INPUT])
            x, sizes = torch.ops.trimformer.topk_select(x, scores, sizes, kept, self.protected, 0)
        return x, TokenState(sizes=sizes) if k or kept else state


@register_method
class ToDRE:
    name = "todre"
    params_type = ToDREParams

    def plan(self, params: ToDREParams, geometry: ModelGeometry) -> MethodPlan:
        layers = params.resolved_layers(geometry.num_layers)
        diverse = plan_kept(
            DIVERSE_SELECT,
            geometry,
            lambda layer, candidates: params.kept(candidates) if layer in layers else 0,
        )
        p, tokens = geometry.protected, geometry.num_tokens
        relevant, counts, records = [], [], []
        for layer, record in enumerate(diverse.layers):
            if record:
                tokens = DIVERSE_SELECT.output_tokens(tokens, record)
            chosen = params.query and layer in layers
            kept = kept_tokens(params.relevant, tokens - p) if chosen else 0
            if 0 < kept < tokens - p:
                stage2 = {"k": kept, "protected": p, "fuse": 0}
                tokens = TOPK_SELECT.output_tokens(tokens, stage2)
                then = {"op": TOPK_SELECT.name, **stage2}
                record = {**record, "then": then} if record else then
            else:
                kept = 0
            relevant.append(kept)
            counts.append(tokens)
            records.append(record)
        reducer = ToDREReducer(
            diverse.k_per_layer, tuple(relevant), geometry.protected, params.metric
        )
        inputs = ()
        if params.query:
            if geometry.dim is None:
                raise ConfigError("todre: query needs the model's token width; adapter gives none")
            doc = "the task's query (e.g. the prompt) embedded into the tokens' space"
            inputs = (MethodInput(QUERY_INPUT, (geometry.dim,), doc),)
        return MethodPlan(
            method=self.name,
            tokens_per_layer=tuple(counts),
            layers=tuple(records),
            params={
                **params.record(geometry.num_layers),
                "query": params.query,
                "relevant": params.relevant,
                "metric": params.metric,
            },
            reducer=reducer,
            inputs=inputs,
            slot=reducer.slot if inputs else None,
        )

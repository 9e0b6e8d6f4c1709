"""Subtoken group merge (token merging for code models, 2025): one token per group of tokens.

The tokens of one unit (the subtokens of one identifier, or any grouping the caller knows) are
averaged into one token. The graph gains an input ``group_ids`` [batch, N] (int64): for each
token its group in 0..groups-1, or -1 to drop it (e.g. padding). At the chosen block, after the
attention residual and before the MLP, the N - protected unprotected tokens become ``groups``
tokens, in group order: the size-weighted mean of their members, with size the sum of the
members' sizes. The group count of a text is data-dependent, so ``groups`` is a static maximum:
an unused group is a zero token of size 0, which the proportional-attention bias (log size =
-inf) hides from every later attention and which size-weighted pooling ignores. Proportional
attention is therefore always on. Protected tokens stay as they are.

Expressed with standard ONNX ops only (OneHot and MatMul, as BipartiteMerge's merge): no new op,
and TensorRT runs it natively, without a plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trimformer.methods.base import (
    ConfigError,
    InputSlot,
    MethodInput,
    MethodPlan,
    ModelGeometry,
    register_method,
)
from trimformer.methods.budget import check_layers
from trimformer.models.base import AttentionTaps, TokenState

__all__ = ["GROUP_INPUT", "GroupMerge", "GroupMergeParams", "GroupMergeReducer", "merge_groups"]

GROUP_INPUT = "group_ids"


@dataclass(frozen=True)
class GroupMergeParams:
    """Where to merge and the most groups a text may have."""

    groups: int | None = None  # None: half of the unprotected tokens
    layer: int = 0

    def __post_init__(self) -> None:
        if self.groups is not None and self.groups < 1:
            raise ConfigError(f"group_merge: key 'groups' must be >= 1, got {self.groups}")


def merge_groups(
    x: torch.Tensor, sizes: torch.Tensor, group_ids: torch.Tensor, groups: int, protected: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Protected tokens, then each group's size-weighted mean [B,p+groups,C] and sizes."""
    ids = group_ids[:, protected:]
    # One-hot over groups+1 classes, the first for -1 (dropped), then cut away: [B,N-p,groups].
    assign = torch.nn.functional.one_hot(ids + 1, groups + 1)[..., 1:].to(x.dtype)
    members = assign.transpose(1, 2)  # [B,groups,N-p]
    weights = sizes[:, protected:]
    group_sizes = members @ weights
    merged = (members @ (x[:, protected:] * weights)) / group_sizes.clamp_min(1e-12)
    return (
        torch.cat([x[:, :protected], merged], dim=1),
        torch.cat([sizes[:, :protected], group_sizes], dim=1),
    )


@dataclass(frozen=True)
class GroupMergeReducer:
    """Merges the groups given by the ``group_ids`` input at one layer."""

    layer: int
    groups: int
    protected: int
    slot: InputSlot = field(default_factory=InputSlot)
    proportional_attention: bool = True  # hides empty groups (size 0) from attention

    def __call__(
        self, layer: int, x: torch.Tensor, state: TokenState, taps: AttentionTaps
    ) -> tuple[torch.Tensor, TokenState]:
        if layer != self.layer:
            return x, state
        ids = self.slot[GROUP_INPUT]
        x, sizes = merge_groups(x, state.sizes_or_ones(x), ids, self.groups, self.protected)
        return x, TokenState(sizes=sizes)


@register_method
class GroupMerge:
    name = "group_merge"
    params_type = GroupMergeParams

    def plan(self, params: GroupMergeParams, geometry: ModelGeometry) -> MethodPlan:
        check_layers(self.name, "layer", (params.layer,), geometry.num_layers)
        p, n = geometry.protected, geometry.num_tokens
        groups = params.groups if params.groups is not None else max((n - p) // 2, 1)
        if groups > n - p:
            raise ConfigError(
                f"group_merge: key 'groups' is {groups}, more than the {n - p} unprotected "
                "tokens; lower it"
            )
        counts = tuple(n if i < params.layer else p + groups for i in range(geometry.num_layers))
        record = {"op": "OneHot+MatMul", "groups": groups, "protected": p}
        reducer = GroupMergeReducer(params.layer, groups, p)
        doc = "group of every token (0..groups-1), -1 to drop it"
        return MethodPlan(
            method=self.name,
            tokens_per_layer=counts,
            layers=tuple(record if i == params.layer else {} for i in range(len(counts))),
            params={"groups": groups, "layer": params.layer},
            reducer=reducer,
            inputs=(MethodInput(GROUP_INPUT, (n,), doc, integers_below=groups),),
            slot=reducer.slot,
        )

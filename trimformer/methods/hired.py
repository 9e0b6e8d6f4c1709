"""HiRED (Arif et al., AAAI 2025): split a static token budget across image partitions by early
CLS attention, then keep each partition's most attended tokens by a later block's CLS attention.

For one ViT the partitions are a ``partitions`` x ``partitions`` grid of tiles over the patch grid
(patch (r, c) is in tile (r·g // rows, c·g // cols), so tiles differ by a row or column when g
does not divide the grid). Protected tokens (CLS, registers) are always kept. With the CLS row of
the attention probabilities, mean over heads:
1. At block ``budget_layer`` (after its attention) each tile's share of the CLS attention paid
   to all patches, rounded to a multiple of 2^-16, splits the budget K = ceil(keep·patches) (or
   exactly ``k``): quotas K·share are floored and the seats the floors leave go to the largest
   remainders, one each (ties: the lower tile index). A tile gets at most as many seats as it has
   tokens. The rounding makes exact ties (equal tiles, all-equal tokens) survive float noise,
   so torch and ONNX Runtime split alike: every later step is exact arithmetic.
2. At block ``select_layer`` (after its attention, before its MLP) every tile keeps as many of its
   tokens as it has seats, those with the highest CLS attention (ties: the lower index); the seats
   of a tile too small for its quota (or left by the share rounding) go to the most attended
   tokens left anywhere, so exactly K are kept.
Step 2 is TopKSelect (fuse 0) on a constructed score, the CLS attention plus 2 for the tokens
within their tile's seats: kept tokens keep their order, the count is static, and only which
tokens are kept depends on the data (no new op, no new plugin).

Layers and defaults, and why: the reference code (LLaVA-Next's CLIP ViT-L, 24 blocks) reads the
budget attention at block 0 and selects on block 22's, the layer whose features feed the LLM, so
``budget_layer`` defaults to 0. A classifier pooling its CLS token cannot select at its last block
(the CLS output would not change), so ``select_layer`` defaults to the middle block
(``num_layers // 2``, as DivPrune and tail drop here); a vision tower can name its feature layer.
``keep`` defaults to 0.5 (the paper's 20 % budget is for an LLM's visual tokens), ``partitions``
to 2 (2x2 tiles, like LLaVA-Next's four sub-images). The paper's share α for the full view has no
counterpart for one image; the reference sums the heads where this averages them (same shares,
same ranking) and truncates quotas, which loses up to one token per partition.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trimformer.methods.base import ConfigError, MethodPlan, ModelGeometry, register_method
from trimformer.methods.budget import KeepCount, check_layers, plan_kept
from trimformer.methods.ranking import descending_rank
from trimformer.models.base import AttentionTaps, TokenState
from trimformer.ops.topk_select import TOPK_SELECT

__all__ = ["HiRED", "HiREDParams", "HiREDReducer", "hired_scores", "tile_of_patches"]

_SNAP = 65536.0  # shares are rounded to multiples of 1/_SNAP
_IN_SEATS = 2.0  # added to the scores of tokens within their tile's seats (attention <= 1)


def tile_of_patches(grid: tuple[int, int], partitions: int) -> tuple[int, ...]:
    """The tile (row-major, 0..partitions²-1) of every patch of a row-major ``grid``."""
    rows, cols = grid
    g = partitions
    return tuple((r * g // rows) * g + c * g // cols for r in range(rows) for c in range(cols))


def hired_scores(
    budget_attention: torch.Tensor,
    select_attention: torch.Tensor,
    member: torch.Tensor,
    k: int,
    protected: int,
) -> torch.Tensor:
    """TopKSelect scores [B,N] that keep HiRED's k tokens (see the module docstring).

    ``budget_attention`` and ``select_attention`` [B,N] are CLS attention at the two blocks;
    ``member`` [M,P] is the one-hot tile of each of the M patches. Protected tokens score 0
    (TopKSelect keeps them whatever their score).
    """
    mass = budget_attention[:, protected:] @ member
    share = mass / mass.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(mass.dtype).tiny)
    quota = torch.round(share * _SNAP) / _SNAP * k
    floor = quota.floor()
    left = k - floor.sum(dim=-1, keepdim=True)
    seats = floor + (descending_rank(quota - floor) < left).to(quota.dtype)
    seats = torch.minimum(seats, member.sum(dim=0))
    attention = select_attention[:, protected:]
    rank = descending_rank(attention, (member @ member.T) > 0)
    within = rank.to(attention.dtype) < seats @ member.T
    return F.pad(attention + _IN_SEATS * within.to(attention.dtype), (protected, 0))


@dataclass(frozen=True)
class HiREDParams(KeepCount):
    """HiRED's knobs, as written in a reductions profile (see KeepCount for keep/k)."""

    partitions: int = 2
    budget_layer: int = 0
    select_layer: int | None = None

    method = "hired"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.partitions < 1:
            raise ConfigError(
                f"hired: key 'partitions' must be >= 1 (tiles per side), got {self.partitions}"
            )


@dataclass(frozen=True)
class HiREDReducer:
    """Keeps the early CLS attention at ``budget_layer``; selects k tokens at ``select_layer``.

    k = 0 keeps every token (nothing to do at any layer).
    """

    k: int
    budget_layer: int
    select_layer: int
    protected: int
    tiles: tuple[int, ...]  # tile of every unprotected token
    proportional_attention: bool = False  # selection only: every size stays 1

    def __call__(
        self, layer: int, x: torch.Tensor, state: TokenState, taps: AttentionTaps
    ) -> tuple[torch.Tensor, TokenState]:
        if self.k == 0:
            return x, state
        if layer == self.budget_layer:
            state = dataclasses.replace(state, scores=taps.cls_attention())
        if layer != self.select_layer:
            return x, state
        tiles = torch.tensor(self.tiles, device=x.device)
        member = F.one_hot(tiles, max(self.tiles) + 1).to(x.dtype)
        scores = hired_scores(state.scores, taps.cls_attention(), member, self.k, self.protected)
        x, sizes = torch.ops.trimformer.topk_select(
            x, scores, state.sizes_or_ones(x), self.k, self.protected, 0
        )
        return x, TokenState(sizes=sizes)


def _patch_grid(geometry: ModelGeometry) -> tuple[int, int]:
    """The model's patch grid, or a square one when the adapter does not say."""
    patches = geometry.num_tokens - geometry.protected
    side = math.isqrt(patches)
    grid = geometry.grid or (side, side)
    if grid[0] * grid[1] != patches:
        raise ConfigError(
            f"hired: tiles the patch grid, but the model's {patches} unprotected tokens are not "
            "a known grid of patches; use a ViT whose tokens are image patches"
        )
    return grid


@register_method
class HiRED:
    name = "hired"
    params_type = HiREDParams

    def plan(self, params: HiREDParams, geometry: ModelGeometry) -> MethodPlan:
        depth = geometry.num_layers
        select = params.select_layer if params.select_layer is not None else depth // 2
        check_layers(self.name, "budget_layer", (params.budget_layer,), depth)
        check_layers(self.name, "select_layer", (select,), depth)
        if params.budget_layer > select:
            raise ConfigError(
                f"hired: key 'budget_layer' ({params.budget_layer}) comes after 'select_layer' "
                f"({select}); the budget must be split at or before the selecting block"
            )
        if geometry.protected < 1:
            raise ConfigError(
                "hired: ranks tokens by CLS attention, but the model has no CLS token"
            )
        grid = _patch_grid(geometry)
        if params.partitions > min(grid):
            raise ConfigError(
                f"hired: key 'partitions' must be at most {min(grid)} for the model's "
                f"{grid[0]}x{grid[1]} patch grid (every tile needs patches), "
                f"got {params.partitions}"
            )
        kept = plan_kept(
            TOPK_SELECT,
            geometry,
            lambda layer, candidates: params.kept(candidates) if layer == select else 0,
            {"fuse": 0},
        )
        return MethodPlan(
            method=self.name,
            tokens_per_layer=kept.tokens_per_layer,
            layers=kept.layers,
            params={
                **params.count_record(),
                "partitions": params.partitions,
                "budget_layer": params.budget_layer,
                "select_layer": select,
            },
            reducer=HiREDReducer(
                kept.k_per_layer[select],
                params.budget_layer,
                select,
                geometry.protected,
                tile_of_patches(grid, params.partitions),
            ),
        )

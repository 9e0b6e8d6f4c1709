"""DiverseSelect as one Triton kernel, one program per batch item (semantics: the op's spec).

The first pick needs every token's nearest other token: cosine tiles [BLOCK_I, BLOCK_J] of the
normalised features (``tl.dot`` in IEEE float32), diagonal masked, reduced tile by tile to a running
minimum, so no operand spans all N tokens (shared memory stays small). Each of the k-1 greedy steps
then needs one row of the similarity matrix, recomputed from the picked token's features instead
of keeping the N x N matrix, which would not fit in registers: O(N·Cf) per step. ``closest``
(each token's highest similarity to the selected set, +inf once selected) is the only state.
Every argmin takes the lowest index among equal values. Selected tokens keep their order through
a prefix sum.
"""

from __future__ import annotations

import triton
import triton.language as tl

from trimformer.triton_kernels.common import (
    copy_protected,
    cosine_tile,
    move_tokens,
    row_norms,
    unit_tile,
)

__all__ = ["diverse_select_kernel"]


@triton.jit
def _similarity_row(
    f_ptr, rows, valid, norms, pick_row, pick_norm, CF: tl.constexpr, BLOCK_CF: tl.constexpr
):
    """Cosine similarity of every token in ``rows`` to the token at row ``pick_row``."""
    sims = tl.zeros([rows.shape[0]], dtype=tl.float32)
    for c0 in range(0, CF, BLOCK_CF):
        c = c0 + tl.arange(0, BLOCK_CF)
        unit = unit_tile(f_ptr, rows, valid, norms, c0, CF, BLOCK_CF)
        picked = (
            tl.load(f_ptr + pick_row * CF + c, mask=c < CF, other=0.0).to(tl.float32) / pick_norm
        )
        sims += tl.sum(unit * picked[None, :], axis=1)
    return sims


@triton.jit
def diverse_select_kernel(
    x_ptr,
    features_ptr,
    size_ptr,
    batch,
    x_out_ptr,
    size_out_ptr,
    N: tl.constexpr,
    C: tl.constexpr,
    CF: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_CF: tl.constexpr,
):
    b = tl.program_id(0)
    live = b < batch
    T: tl.constexpr = N - P
    M: tl.constexpr = P + K
    t = tl.arange(0, BLOCK_T)
    valid = (t < T) & live
    rows = b * N + P + t
    norms = row_norms(features_ptr, rows, valid, CF, BLOCK_CF)

    # First pick: the token whose nearest other token is least similar, tiled over BLOCK_I rows
    # with a running (value, index) minimum; a strict < keeps the lowest index among equals.
    first_value = tl.full([], float("inf"), dtype=tl.float32)
    first = tl.full([], 0, dtype=tl.int32)
    for i0 in range(0, T, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        valid_i = (i < T) & live
        rows_i = b * N + P + i
        norms_i = row_norms(features_ptr, rows_i, valid_i, CF, BLOCK_CF)
        nearest = tl.full([BLOCK_I], float("-inf"), dtype=tl.float32)
        for j0 in range(0, T, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            valid_j = (j < T) & live
            rows_j = b * N + P + j
            norms_j = row_norms(features_ptr, rows_j, valid_j, CF, BLOCK_CF)
            sims = cosine_tile(
                features_ptr, rows_i, valid_i, norms_i, rows_j, valid_j, norms_j, CF, BLOCK_CF
            )
            others = valid_j[None, :] & (j[None, :] != i[:, None])
            nearest = tl.maximum(nearest, tl.max(tl.where(others, sims, float("-inf")), axis=1))
        nearest = tl.where(valid_i, nearest, float("inf"))
        tile_value = tl.min(nearest, axis=0)
        better = tile_value < first_value
        first = tl.where(better, tl.argmin(nearest, axis=0).to(tl.int32) + i0, first)
        first_value = tl.where(better, tile_value, first_value)

    pick = first
    closest = tl.full([BLOCK_T], float("-inf"), dtype=tl.float32)
    for _ in range(K):
        pick_norm = tl.sum(tl.where(t == pick, norms, 0.0), axis=0)
        row = _similarity_row(
            features_ptr, rows, valid, norms, b * N + P + pick, pick_norm, CF, BLOCK_CF
        )
        closest = tl.where((t == pick) | ~valid, float("inf"), tl.maximum(closest, row))
        pick = tl.argmin(closest, axis=0)

    selected = valid & (closest == float("inf"))
    dest = P + tl.cumsum(selected.to(tl.int32), 0) - 1
    copy_protected(x_ptr, size_ptr, x_out_ptr, size_out_ptr, b, live, N, M, C, P, BLOCK_C)
    move_tokens(
        x_ptr, size_ptr, x_out_ptr, size_out_ptr, rows, valid, b * M + dest, selected, C, BLOCK_C
    )

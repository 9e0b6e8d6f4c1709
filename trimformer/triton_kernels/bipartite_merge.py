"""BipartiteMerge as one Triton kernel, one program per batch item (semantics: the op's spec).

1. Each A token's best B match: cosine tiles [BLOCK_I, BLOCK_J] of the normalised metric
   (``tl.dot`` in IEEE float32), the running maximum kept across B tiles with a strict ``>`` so
   the first maximum wins, as the reference's argmax.
2. Ranking: an A token merges when fewer than r A tokens rank ahead of it (higher best score, or
   equal and lower index), counted BLOCK_I tokens at a time.
3. Output: protected tokens, the unmerged A tokens in order (a prefix sum gives their rows), then
   each B token as the size-weighted mean of itself and the A tokens merged into it, gathered by
   one-hot [BLOCK_J, BLOCK_K] matrix products over chunks of A instead of atomics, so the result
   is deterministic.
"""

from __future__ import annotations

import triton
import triton.language as tl

from trimformer.triton_kernels.common import (
    chunk,
    copy_protected,
    cosine_tile,
    count_ahead,
    move_tokens,
    row_norms,
    spread,
)

__all__ = ["bipartite_merge_kernel"]


@triton.jit
def bipartite_merge_kernel(
    x_ptr,
    metric_ptr,
    size_ptr,
    batch,
    x_out_ptr,
    size_out_ptr,
    N: tl.constexpr,
    C: tl.constexpr,
    CM: tl.constexpr,
    R: tl.constexpr,
    P: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_CM: tl.constexpr,
):
    b = tl.program_id(0)
    live = b < batch
    T: tl.constexpr = N - P
    # ToMe's split: A = even indices of the whole sequence, B = odd; the first unprotected A
    # and B tokens are OA and OB tokens after the protected ones.
    OA: tl.constexpr = P % 2
    OB: tl.constexpr = 1 - OA
    NA: tl.constexpr = (T - OA + 1) // 2
    NB: tl.constexpr = (T - OB + 1) // 2
    M: tl.constexpr = N - R
    a = tl.arange(0, BLOCK_A)
    valid_a = (a < NA) & live
    rows_a = b * N + P + OA + 2 * a

    # 1. Best B match per A token, BLOCK_I A tokens at a time, spread into the full vectors.
    best = tl.full([BLOCK_A], float("-inf"), dtype=tl.float32)
    match = tl.zeros([BLOCK_A], dtype=tl.int32)
    for i0 in range(0, NA, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        valid_i = (i < NA) & live
        rows_i = b * N + P + OA + 2 * i
        norms_i = row_norms(metric_ptr, rows_i, valid_i, CM, BLOCK_CM)
        best_i = tl.full([BLOCK_I], float("-inf"), dtype=tl.float32)
        match_i = tl.zeros([BLOCK_I], dtype=tl.int32)
        for j0 in range(0, NB, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            valid_j = (j < NB) & live
            rows_j = b * N + P + OB + 2 * j
            norms_j = row_norms(metric_ptr, rows_j, valid_j, CM, BLOCK_CM)
            scores = cosine_tile(
                metric_ptr, rows_i, valid_i, norms_i, rows_j, valid_j, norms_j, CM, BLOCK_CM
            )
            scores = tl.where(valid_j[None, :], scores, float("-inf"))
            tile_best = tl.max(scores, axis=1)
            better = tile_best > best_i
            match_i = tl.where(better, tl.argmax(scores, axis=1).to(tl.int32) + j0, match_i)
            best_i = tl.where(better, tile_best, best_i)
        in_tile = (a >= i0) & (a < i0 + BLOCK_I)
        best = tl.where(in_tile, spread(best_i, i, a), best)
        match = tl.where(in_tile, spread(match_i, i, a), match)

    # 2. Rank: count the A tokens ahead of each, BLOCK_I at a time.
    ahead = tl.zeros([BLOCK_A], dtype=tl.int32)
    for i0 in range(0, NA, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        ahead += count_ahead(spread(best, a, i), i, i < NA, best, a)
    merged = valid_a & (ahead < R)
    unmerged = valid_a & (ahead >= R)
    dest_a = P + tl.cumsum(unmerged.to(tl.int32), 0) - 1

    copy_protected(x_ptr, size_ptr, x_out_ptr, size_out_ptr, b, live, N, M, C, P, BLOCK_C)
    move_tokens(
        x_ptr,
        size_ptr,
        x_out_ptr,
        size_out_ptr,
        rows_a,
        valid_a,
        b * M + dest_a,
        unmerged,
        C,
        BLOCK_C,
    )
    sizes_a = tl.load(size_ptr + rows_a, mask=valid_a, other=0.0).to(tl.float32)
    merge_weights = tl.where(merged, sizes_a, 0.0)  # an A token's weight in its match's mean
    for j0 in range(0, NB, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        valid_j = (j < NB) & live
        rows_j = b * N + P + OB + 2 * j
        into = match[None, :] == j[:, None]
        sizes_j = tl.load(size_ptr + rows_j, mask=valid_j, other=0.0).to(tl.float32)
        total = sizes_j + tl.sum(tl.where(into, merge_weights[None, :], 0.0), axis=1)
        out_rows = b * M + P + (NA - R) + j
        tl.store(size_out_ptr + out_rows, total.to(size_out_ptr.dtype.element_ty), mask=valid_j)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            in_c = c < C
            x_j = tl.load(
                x_ptr + rows_j[:, None] * C + c[None, :],
                mask=valid_j[:, None] & in_c[None, :],
                other=0.0,
            )
            mixed = x_j.to(tl.float32) * sizes_j[:, None]
            # the merged A tokens, BLOCK_K at a time, so the tl.dot operands stay small
            for k in tl.static_range(BLOCK_A // BLOCK_K):
                ak = k * BLOCK_K + tl.arange(0, BLOCK_K)
                weights = tl.where(
                    chunk(match, k, BLOCK_K)[None, :] == j[:, None],
                    chunk(merge_weights, k, BLOCK_K)[None, :],
                    0.0,
                )
                x_a = tl.load(
                    x_ptr + (b * N + P + OA + 2 * ak)[:, None] * C + c[None, :],
                    mask=((ak < NA) & live)[:, None] & in_c[None, :],
                    other=0.0,
                )
                mixed += tl.dot(weights, x_a.to(tl.float32), input_precision="ieee")
            mean = mixed / tl.where(valid_j, total, 1.0)[:, None]
            tl.store(
                x_out_ptr + out_rows[:, None] * C + c[None, :],
                mean.to(x_out_ptr.dtype.element_ty),
                mask=valid_j[:, None] & in_c[None, :],
            )

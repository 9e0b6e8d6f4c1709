"""TopKSelect as one Triton kernel, one program per batch item (semantics: the op's spec).

Every score is ranked against every other (ahead = higher score, or equal score and lower index),
tiled over ``BLOCK_J`` columns so the comparison tile stays [BLOCK_T, BLOCK_J]. A token is kept
when fewer than k tokens are ahead of it; a prefix sum of the kept flags gives each kept token its
output row, so the original order is preserved without sorting. Arithmetic is float32 whatever the
tensors' type, as the float32 torch reference on upcast inputs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from trimformer.triton_kernels.common import copy_protected, count_ahead, move_tokens

__all__ = ["topk_select_kernel"]


@triton.jit
def topk_select_kernel(
    x_ptr,
    scores_ptr,
    size_ptr,
    batch,
    x_out_ptr,
    size_out_ptr,
    N: tl.constexpr,
    C: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    FUSE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0)
    live = b < batch
    T: tl.constexpr = N - P
    M: tl.constexpr = P + K + FUSE
    t = tl.arange(0, BLOCK_T)
    valid = (t < T) & live
    row_scores = scores_ptr + b * N + P
    s = tl.load(row_scores + t, mask=valid, other=0.0).to(tl.float32)

    ahead = tl.zeros([BLOCK_T], dtype=tl.int32)
    for j0 in range(0, T, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        sj = tl.load(row_scores + j, mask=(j < T) & live, other=0.0).to(tl.float32)
        ahead += count_ahead(sj, j, j < T, s, t)
    kept = valid & (ahead < K)
    dropped = valid & (ahead >= K)
    dest = P + tl.cumsum(kept.to(tl.int32), 0) - 1

    rows = b * N + P + t
    copy_protected(x_ptr, size_ptr, x_out_ptr, size_out_ptr, b, live, N, M, C, P, BLOCK_C)
    move_tokens(
        x_ptr, size_ptr, x_out_ptr, size_out_ptr, rows, valid, b * M + dest, kept, C, BLOCK_C
    )
    if FUSE:  # one token: the score-weighted sum of the dropped tokens, their sizes summed
        sizes = tl.load(size_ptr + rows, mask=dropped, other=0.0).to(tl.float32)
        fused_row = b * M + P + K
        tl.store(
            size_out_ptr + fused_row,
            tl.sum(sizes, axis=0).to(size_out_ptr.dtype.element_ty),
            mask=live,
        )
        weights = tl.where(dropped, s, 0.0)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            in_c = c < C
            tokens = tl.load(
                x_ptr + rows[:, None] * C + c[None, :],
                mask=dropped[:, None] & in_c[None, :],
                other=0.0,
            )
            fused = tl.sum(weights[:, None] * tokens.to(tl.float32), axis=0)
            tl.store(
                x_out_ptr + fused_row * C + c,
                fused.to(x_out_ptr.dtype.element_ty),
                mask=in_c & live,
            )

"""Pieces every trimformer Triton kernel shares."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "chunk",
    "copy_protected",
    "cosine_tile",
    "count_ahead",
    "move_tokens",
    "row_norms",
    "spread",
    "unit_tile",
]


@triton.jit
def copy_protected(
    x_ptr,
    size_ptr,
    x_out_ptr,
    size_out_ptr,
    b,
    live,
    N: tl.constexpr,
    M: tl.constexpr,
    C: tl.constexpr,
    P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Copy batch item b's P leading (protected) tokens and their sizes unchanged."""
    for i in tl.static_range(P):
        tl.store(size_out_ptr + b * M + i, tl.load(size_ptr + b * N + i, mask=live), mask=live)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            in_c = (c < C) & live
            row = tl.load(x_ptr + (b * N + i) * C + c, mask=in_c)
            tl.store(x_out_ptr + (b * M + i) * C + c, row, mask=in_c)


@triton.jit
def row_norms(ptr, rows, valid, CM: tl.constexpr, BLOCK_CM: tl.constexpr):
    """L2 norms of the rows ``rows`` of a [*, CM] tensor, clamped at 1e-12 (float32)."""
    squares = tl.zeros([rows.shape[0]], dtype=tl.float32)
    for c0 in range(0, CM, BLOCK_CM):
        c = c0 + tl.arange(0, BLOCK_CM)
        tile = tl.load(
            ptr + rows[:, None] * CM + c[None, :],
            mask=valid[:, None] & (c < CM)[None, :],
            other=0.0,
        )
        tile = tile.to(tl.float32)
        squares += tl.sum(tile * tile, axis=1)
    return tl.maximum(tl.sqrt(squares), 1e-12)


@triton.jit
def unit_tile(ptr, rows, valid, norms, c0, CM: tl.constexpr, BLOCK_CM: tl.constexpr):
    """Channels c0..c0+BLOCK_CM of the rows ``rows``, divided by their norms (float32)."""
    c = c0 + tl.arange(0, BLOCK_CM)
    tile = tl.load(
        ptr + rows[:, None] * CM + c[None, :], mask=valid[:, None] & (c < CM)[None, :], other=0.0
    )
    return tile.to(tl.float32) / norms[:, None]


@triton.jit
def spread(values, positions, wanted):
    """``values`` (held at ``positions``) read at ``wanted``, 0 where absent: a register gather,
    as a compare-and-sum over [len(wanted), len(values)], since Triton cannot index registers."""
    hit = wanted[:, None] == positions[None, :]
    return tl.sum(tl.where(hit, values[None, :], tl.zeros_like(values)[None, :]), axis=1)


@triton.jit
def cosine_tile(
    ptr,
    rows_i,
    valid_i,
    norms_i,
    rows_j,
    valid_j,
    norms_j,
    CM: tl.constexpr,
    BLOCK_CM: tl.constexpr,
):
    """Cosine similarities [len(rows_i), len(rows_j)] of two row sets of a [*, CM] tensor:
    normalised tiles multiplied with ``tl.dot`` in IEEE float32 (no TF32 rounding)."""
    sims = tl.zeros([rows_i.shape[0], rows_j.shape[0]], dtype=tl.float32)
    for c0 in range(0, CM, BLOCK_CM):
        unit_i = unit_tile(ptr, rows_i, valid_i, norms_i, c0, CM, BLOCK_CM)
        unit_j = unit_tile(ptr, rows_j, valid_j, norms_j, c0, CM, BLOCK_CM)
        sims += tl.dot(unit_i, tl.trans(unit_j), input_precision="ieee")
    return sims


@triton.jit
def count_ahead(tile_values, tile_index, tile_valid, values, index):
    """For each of ``values``, how many valid tile entries rank ahead of it: a higher value, or
    an equal one at a lower index (a stable descending sort's order)."""
    higher = tile_values[None, :] > values[:, None]
    tied = (tile_values[None, :] == values[:, None]) & (tile_index[None, :] < index[:, None])
    return tl.sum(((higher | tied) & tile_valid[None, :]).to(tl.int32), axis=1)


@triton.jit
def move_tokens(
    x_ptr,
    size_ptr,
    x_out_ptr,
    size_out_ptr,
    rows,
    valid,
    out_rows,
    write,
    C: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Copy the token rows ``rows`` (and their sizes) to ``out_rows`` where ``write`` holds."""
    sizes = tl.load(size_ptr + rows, mask=valid, other=0.0)
    tl.store(size_out_ptr + out_rows, sizes, mask=write)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        in_c = c < C
        tokens = tl.load(
            x_ptr + rows[:, None] * C + c[None, :], mask=valid[:, None] & in_c[None, :]
        )
        tl.store(
            x_out_ptr + out_rows[:, None] * C + c[None, :],
            tokens,
            mask=write[:, None] & in_c[None, :],
        )


@triton.jit
def chunk(values, k, BLOCK_K: tl.constexpr):
    """Elements k*BLOCK_K .. (k+1)*BLOCK_K-1 of a register vector (k a compile-time index):
    reshaped to [chunks, BLOCK_K] and reduced over the chunk axis, O(len(values))."""
    rows = tl.reshape(values, [values.shape[0] // BLOCK_K, BLOCK_K])
    pick = tl.arange(0, values.shape[0] // BLOCK_K)[:, None] == k
    return tl.sum(tl.where(pick, rows, tl.zeros_like(rows)), axis=0)

"""BipartiteMerge: ToMe's bipartite soft matching with a size-weighted average merge.

Spec (version 2)
  inputs   x [B,N,C] tokens, metric [B,N,Cm] matching features, size [B,N,1] (> 0) tokens per
           token
  attrs    r: tokens to remove; protected: leading tokens (CLS, distillation, registers) that are
           never merged
  outputs  x_out [B,N-r,C], size_out [B,N-r,1]

Semantics (ToMe's own matching, generalised to any number of protected tokens): the whole
sequence is split by parity, A = tokens at even indices 0, 2, 4, ..., B = odd indices 1, 3, 5, ...
(the CLS token is A[0], a distillation token B[0]). Scores are cosine similarities A·Bᵀ of the
L2-normalised metric (norm clamped at 1e-12); a protected token keeps its parity set but is masked:
its A row is -inf (never a source), its B column -inf (never a destination). N - protected >= 2,
and r <= (N - protected) // 2. Each A token's best B is the first maximum of its row; A tokens are
ranked by that best score, descending, ties broken by the lower A index, and the first r ranked A
tokens merge into their best B, ToMe's size-weighted average: a B token becomes sum(x·size) /
sum(size) over itself and everything merged into it, its size the sum; every other token passes
through unchanged. Output layout: the protected tokens in their original order, the unmerged
unprotected A tokens ascending, then the unprotected B tokens in order; r = 0 therefore regroups
A before B. With no protected token (SigLIP) this is the plain parity split.

Equivalently, since a masked row ranks last and a masked column is never a row's maximum, the
matching runs on the unprotected tokens alone with A starting at the first even index >= protected
and B at the first odd one; every face computes it that way. Version 1 split the unprotected tokens
by their offset from ``protected`` instead, which differs from ToMe when ``protected`` is odd (a
v1 call in an older bundle still runs: its function body travels in its model).

The count N-r is static; only which tokens merge depends on the data. Methods skip layers with
r = 0 rather than call the op.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from onnxscript import FLOAT, script
from onnxscript import opset18 as op
from onnxscript.values import Opset

from trimformer.ops.common import gather_rows
from trimformer.ops.registry import (
    DOMAIN,
    AttributeSpec,
    OpSpec,
    OpValidationError,
    function_builder,
    register_op,
)

__all__ = ["BIPARTITE_MERGE", "bipartite_merge", "max_merge_r", "set_starts"]

_NORM_EPS = 1e-12


def max_merge_r(n_tokens: int, protected: int) -> int:
    """The largest r one BipartiteMerge can remove from n tokens: (N - protected) // 2, which
    never exceeds the unprotected A tokens or leaves B without an unprotected token."""
    return max(n_tokens - protected, 0) // 2


def set_starts(protected: int) -> tuple[int, int]:
    """The indices of the first unprotected A token (even) and B token (odd): A and B are every
    second token from there."""
    odd = protected % 2
    return protected + odd, protected + 1 - odd


def _output_tokens(n_tokens: int, attrs: Mapping[str, Any]) -> int:
    r, protected = attrs["r"], attrs["protected"]
    if n_tokens - protected < 2:
        raise OpValidationError(
            f"BipartiteMerge: needs at least 2 unprotected tokens, got {n_tokens} tokens with "
            f"{protected} protected; skip this layer instead"
        )
    limit = max_merge_r(n_tokens, protected)
    if r > limit:
        raise OpValidationError(
            f"BipartiteMerge: r={r} exceeds the maximum {limit} for {n_tokens} tokens with "
            f"{protected} protected; lower r"
        )
    return n_tokens - r


@torch.library.custom_op(f"{DOMAIN}::bipartite_merge", mutates_args=())
def bipartite_merge(
    x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, protected: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference face of BipartiteMerge (see the module docstring for the semantics)."""
    a0, b0 = set_starts(protected)
    unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    best, best_idx = (unit[:, a0::2] @ unit[:, b0::2].transpose(1, 2)).max(dim=-1)  # first max
    order = torch.sort(best, dim=-1, descending=True, stable=True).indices
    src_idx, unm_idx = order[:, :r], torch.sort(order[:, r:], dim=-1).values
    dst_idx = torch.gather(best_idx, 1, src_idx).unsqueeze(-1)
    xa, xb = x[:, a0::2], x[:, b0::2]
    sa, sb = size[:, a0::2], size[:, b0::2]
    src_s = gather_rows(sa, src_idx)
    merged_s = sb.scatter_add(1, dst_idx, src_s)
    merged_x = (xb * sb).scatter_add(
        1, dst_idx.expand(-1, -1, x.shape[-1]), gather_rows(xa, src_idx) * src_s
    )
    x_out = torch.cat([x[:, :protected], gather_rows(xa, unm_idx), merged_x / merged_s], dim=1)
    s_out = torch.cat([size[:, :protected], gather_rows(sa, unm_idx), merged_s], dim=1)
    return x_out, s_out


@bipartite_merge.register_fake
def _(x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, protected: int):
    b, n, c = x.shape
    return x.new_empty((b, n - r, c)), size.new_empty((b, n - r, 1))


_domain = Opset(DOMAIN, 2)


@script(_domain, default_opset=op)
def _bipartite_merge_fn(x: FLOAT, metric: FLOAT, size: FLOAT, r: int, protected: int):
    # Written for few nodes and few passes over the tokens: at batch 1 a merge's cost is per-node
    # overhead and copies. The attribute arithmetic (a0, b0, r) is constant-folded by runtimes.
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])  # also the last axis of every [B,N,*] tensor
    end = op.Constant(value_ints=[9223372036854775807])
    p = op.Reshape(op.Constant(value_int=protected), one)
    odd = op.Mod(p, two)
    a0 = op.Add(p, odd)  # the first unprotected A (even) and B (odd) index
    b0 = op.Sub(op.Add(p, one), odd)
    rr = op.Reshape(op.Constant(value_int=r), one)

    unit = op.Div(
        metric, op.Max(op.ReduceL2(metric, two, keepdims=1), op.Constant(value_float=1e-12))
    )
    scores = op.MatMul(
        op.Slice(unit, a0, end, one, two),
        op.Transpose(op.Slice(unit, b0, end, one, two), perm=[0, 2, 1]),
    )
    # [B,NA,1] each A token's best score and first maximum; [B,*,1] indices feed GatherND.
    best, best_idx = op.TopK(scores, one, axis=-1, largest=1, sorted=1)
    n_a = op.Shape(best, start=1, end=2)
    _, order = op.TopK(best, n_a, axis=1, largest=1, sorted=1)
    dst_idx = op.Squeeze(op.GatherElements(best_idx, op.Slice(order, zero, rr, one), axis=1), two)
    # The ranked A tokens as token indices of x, so rows are gathered from x itself (no copy
    # of set A): the first r merge, the rest stay, in ascending order.
    placed = op.Add(op.Mul(order, two), a0)
    src_rows = op.Slice(placed, zero, rr, one)
    unm_rows, _ = op.TopK(op.Slice(placed, rr, end, one), op.Sub(n_a, rr), axis=1, largest=0)

    sb = op.Slice(size, b0, end, one, two)
    # One-hot [B,NB,r] assignment of merged A tokens to their B tokens: a MatMul instead of
    # ScatterElements(reduction=add), which TensorRT runs as a slow, atomic plugin.
    assign = op.OneHot(
        dst_idx, op.Shape(sb, start=1, end=2), op.Constant(value_floats=[0.0, 1.0]), axis=1
    )
    src_s = op.GatherND(size, src_rows, batch_dims=1)
    merged_s = op.Add(sb, op.MatMul(assign, src_s))
    # sum(x·size)/sum(size), the division applied to the small weights, not to the tokens
    src_x = op.Mul(op.GatherND(x, src_rows, batch_dims=1), src_s)
    merged_x = op.Add(
        op.Mul(op.Slice(x, b0, end, one, two), op.Div(sb, merged_s)),
        op.MatMul(op.Div(assign, merged_s), src_x),
    )
    x_out = op.Concat(
        op.Slice(x, zero, p, one), op.GatherND(x, unm_rows, batch_dims=1), merged_x, axis=1
    )
    s_out = op.Concat(
        op.Slice(size, zero, p, one), op.GatherND(size, unm_rows, batch_dims=1), merged_s, axis=1
    )
    return x_out, s_out


BIPARTITE_MERGE = register_op(
    OpSpec(
        name="BipartiteMerge",
        version=2,
        doc="ToMe bipartite soft matching: merge r tokens into their most similar partner.",
        inputs=("x", "metric", "size"),
        outputs=("x_out", "size_out"),
        attributes=(
            AttributeSpec("r", int, "tokens removed by this merge", minimum=0),
            AttributeSpec("protected", int, "leading tokens never merged", minimum=0),
        ),
        output_tokens=_output_tokens,
        torch_op=torch.ops.trimformer.bipartite_merge.default,
        onnx_function=function_builder(_bipartite_merge_fn, "BipartiteMerge"),
    )
)

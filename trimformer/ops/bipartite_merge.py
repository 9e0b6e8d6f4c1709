"""BipartiteMerge: ToMe's bipartite soft matching with a size-weighted average merge.

Spec (version 1)
  inputs   x [B,N,C] tokens, metric [B,N,Cm] matching features, size [B,N,1] tokens per token
  attrs    r: tokens to remove; protected: leading tokens (CLS, distillation, registers) that are
           passed through untouched and never matched
  outputs  x_out [B,N-r,C], size_out [B,N-r,1]

Semantics: the N-p unprotected tokens are split alternately into A (even offsets) and B (odd).
Scores are cosine similarities A·Bᵀ of the L2-normalised metric (norm clamped at 1e-12). Each A
token's best B match is the first maximum of its row; A tokens are ranked by that best score,
descending, ties broken by the lower A index. The first r ranked A tokens are merged into their
matches: a B token becomes sum(x·size)/sum(size) over itself and everything merged into it, its
size the sum. The output holds the kept tokens (protected, unmerged A, every B) in their original
order, so r = 0 is the identity. The count N-r is static; only which tokens merge depends on data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import onnx
import torch
from onnxscript import FLOAT, script
from onnxscript import opset18 as op
from onnxscript.values import Opset

from trimformer.ops.registry import (
    DOMAIN,
    AttributeSpec,
    OpSpec,
    OpValidationError,
    register_op,
    retarget_function,
)

__all__ = ["BIPARTITE_MERGE", "bipartite_merge", "max_merge_r"]

_NORM_EPS = 1e-12


def max_merge_r(n_tokens: int, protected: int) -> int:
    """The largest r one BipartiteMerge can remove from n tokens: the size of set A."""
    return max(n_tokens - protected, 0) // 2


def _output_tokens(n_tokens: int, attrs: Mapping[str, Any]) -> int:
    r, protected = attrs["r"], attrs["protected"]
    if protected > n_tokens:
        raise OpValidationError(
            f"BipartiteMerge: protected={protected} exceeds the {n_tokens} tokens in the input"
        )
    limit = max_merge_r(n_tokens, protected)
    if r > limit:
        raise OpValidationError(
            f"BipartiteMerge: r={r} exceeds the maximum {limit} for {n_tokens} tokens with "
            f"{protected} protected; lower r"
        )
    return n_tokens - r


def _match(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (src_idx [B,r], dst_idx [B,r], unm_idx [B,NA-r]) over the A/B split."""
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    scores = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)
    node_max = scores.amax(dim=-1)
    node_idx = scores.argmax(dim=-1)  # the first maximum, as ONNX ArgMax
    order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices
    src_idx = order[:, :r]
    unm_idx = order[:, r:]
    dst_idx = torch.gather(node_idx, 1, src_idx)
    return src_idx, dst_idx, unm_idx


def _kept_in_order(unm_idx: torch.Tensor, n_a: int, n_b: int) -> torch.Tensor:
    """Indices into cat(A, B) of the kept tokens (unmerged A, every B) in their original order."""
    b_pos = torch.arange(n_b, device=unm_idx.device).mul(2).add(1).expand(unm_idx.shape[0], -1)
    positions = torch.sort(torch.cat([unm_idx * 2, b_pos], dim=1), dim=1).values
    return torch.where(positions % 2 == 0, positions // 2, n_a + positions // 2)


@torch.library.custom_op(f"{DOMAIN}::bipartite_merge", mutates_args=())
def bipartite_merge(
    x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, protected: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference face of BipartiteMerge (see the module docstring for the semantics)."""
    if r == 0:
        return x.clone(), size.clone()
    p = protected
    src_idx, dst_idx, unm_idx = _match(metric[:, p:], r)
    xt, st = x[:, p:], size[:, p:]
    xa, xb = xt[:, 0::2] * st[:, 0::2], xt[:, 1::2] * st[:, 1::2]
    sa, sb = st[:, 0::2], st[:, 1::2]
    channels = x.shape[-1]

    def rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return torch.gather(t, 1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

    merged_x = xb.scatter_add(1, dst_idx.unsqueeze(-1).expand(-1, -1, channels), rows(xa, src_idx))
    merged_s = sb.scatter_add(1, dst_idx.unsqueeze(-1), rows(sa, src_idx))
    keep = _kept_in_order(unm_idx, sa.shape[1], sb.shape[1])
    x_kept = rows(torch.cat([xt[:, 0::2], merged_x / merged_s], dim=1), keep)
    s_kept = rows(torch.cat([sa, merged_s], dim=1), keep)
    x_out = torch.cat([x[:, :p], x_kept], dim=1)
    s_out = torch.cat([size[:, :p], s_kept], dim=1)
    return x_out, s_out


@bipartite_merge.register_fake
def _(x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, protected: int):
    b, n, c = x.shape
    return x.new_empty((b, n - r, c)), size.new_empty((b, n - r, 1))


_domain = Opset(DOMAIN, 1)


@script(_domain, default_opset=op)
def _bipartite_merge_fn(x: FLOAT, metric: FLOAT, size: FLOAT, r: int, protected: int):
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    big = op.Constant(value_ints=[9223372036854775807])
    axis1 = op.Constant(value_ints=[1])
    p = op.Reshape(op.Constant(value_int=protected), one)
    rr = op.Reshape(op.Constant(value_int=r), one)

    x_p = op.Slice(x, zero, p, axis1)
    s_p = op.Slice(size, zero, p, axis1)
    xt = op.Slice(x, p, big, axis1)
    st = op.Slice(size, p, big, axis1)
    mt = op.Slice(metric, p, big, axis1)

    norm = op.Max(op.ReduceL2(mt, op.Constant(value_ints=[-1]), keepdims=1), 1e-12)
    mt = op.Div(mt, norm)
    ma = op.Slice(mt, zero, big, axis1, two)
    mb = op.Slice(mt, one, big, axis1, two)
    scores = op.MatMul(ma, op.Transpose(mb, perm=[0, 2, 1]))
    # A -inf column keeps ArgMax defined when B is empty (one unprotected token, r = 0).
    pad_shape = op.Concat(op.Shape(scores, start=0, end=2), one, axis=0)
    scores = op.Concat(scores, op.Expand(op.Constant(value_float=float("-inf")), pad_shape), axis=2)
    node_max = op.ReduceMax(scores, op.Constant(value_ints=[-1]), keepdims=0)
    node_idx = op.ArgMax(scores, axis=-1, keepdims=0)

    n_a = op.Shape(node_max, start=1, end=2)
    _, order = op.TopK(node_max, n_a, axis=-1, largest=1, sorted=1)
    src_idx = op.Slice(order, zero, rr, axis1)
    unm_idx = op.Slice(order, rr, big, axis1)
    dst_idx = op.GatherElements(node_idx, src_idx, axis=1)

    xa = op.Slice(xt, zero, big, axis1, two)
    xb = op.Slice(xt, one, big, axis1, two)
    sa = op.Slice(st, zero, big, axis1, two)
    sb = op.Slice(st, one, big, axis1, two)

    n_b = op.Shape(sb, start=1, end=2)
    # One-hot [B, NB, r] assignment of each merged A token to its destination B token:
    # a MatMul instead of ScatterElements(reduction=add), which TensorRT runs as a slow plugin.
    b_positions = op.Unsqueeze(op.Range(0, op.Squeeze(n_b), 1), op.Constant(value_ints=[-1]))
    assign = op.Cast(op.Equal(op.Unsqueeze(dst_idx, one), b_positions), to=1)

    src_rows = op.Unsqueeze(src_idx, op.Constant(value_ints=[-1]))
    src_s = op.GatherElements(sa, src_rows, axis=1)
    channels = op.Shape(xt, start=2, end=3)
    src_shape = op.Concat(op.Shape(src_idx), channels, axis=0)
    src_x = op.GatherElements(xa, op.Expand(src_rows, src_shape), axis=1)

    merged_s = op.Add(sb, op.MatMul(assign, src_s))
    merged_x = op.Div(op.Add(op.Mul(xb, sb), op.MatMul(assign, op.Mul(src_x, src_s))), merged_s)

    # Kept tokens in their original order: A offset t = 2i sits at i in cat(A, B), and
    # B offset t = 2j + 1 at NA + j.
    b_offsets = op.Add(op.Mul(op.Range(0, op.Squeeze(n_b), 1), 2), 1)
    b_offsets = op.Expand(op.Unsqueeze(b_offsets, zero), op.Shape(sb, start=0, end=2))
    offsets = op.Concat(op.Mul(unm_idx, 2), b_offsets, axis=1)
    offsets, _ = op.TopK(offsets, op.Shape(offsets, start=1, end=2), axis=-1, largest=0, sorted=1)
    halves = op.Div(offsets, 2)
    keep = op.Where(op.Equal(op.Mod(offsets, 2), 0), halves, op.Add(halves, n_a))
    keep_rows = op.Unsqueeze(keep, op.Constant(value_ints=[-1]))
    keep_shape = op.Concat(op.Shape(keep), channels, axis=0)
    x_kept = op.GatherElements(
        op.Concat(xa, merged_x, axis=1), op.Expand(keep_rows, keep_shape), axis=1
    )
    s_kept = op.GatherElements(op.Concat(sa, merged_s, axis=1), keep_rows, axis=1)

    x_out = op.Concat(x_p, x_kept, axis=1)
    s_out = op.Concat(s_p, s_kept, axis=1)
    return x_out, s_out


def _onnx_function(opset: int) -> onnx.FunctionProto:
    fn = _bipartite_merge_fn.to_function_proto()
    fn.name = "BipartiteMerge"
    return retarget_function(fn, opset)


BIPARTITE_MERGE = register_op(
    OpSpec(
        name="BipartiteMerge",
        version=1,
        doc="ToMe bipartite soft matching: merge r tokens into their most similar partner.",
        inputs=("x", "metric", "size"),
        outputs=("x_out", "size_out"),
        attributes=(
            AttributeSpec("r", int, "tokens removed by this merge", minimum=0),
            AttributeSpec("protected", int, "leading tokens never merged", minimum=0),
        ),
        output_tokens=_output_tokens,
        torch_op=torch.ops.trimformer.bipartite_merge.default,
        onnx_function=_onnx_function,
    )
)

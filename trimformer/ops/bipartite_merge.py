"""BipartiteMerge: ToMe's bipartite soft matching with a size-weighted average merge.

Spec (version 1)
  inputs   x [B,N,C] tokens, metric [B,N,Cm] matching features, size [B,N,1] tokens per token
  attrs    r: tokens to remove; protected: leading tokens (CLS, distillation, registers) that are
           passed through untouched and never matched
  outputs  x_out [B,N-r,C], size_out [B,N-r,1]

Semantics: the N-p >= 2 unprotected tokens are split alternately into A (even offsets) and B (odd).
Scores are cosine similarities A·Bᵀ of the L2-normalised metric (norm clamped at 1e-12). Each A
token's best B match is the first maximum of its row; A tokens are ranked by that best score,
descending, ties broken by the lower A index. The first r ranked A tokens are merged into their
matches: a B token becomes sum(x·size)/sum(size) over itself and everything merged into it, its
size the sum. Output layout (ToMe's): protected tokens, the unmerged A tokens in ascending order,
then every B token in order; r = 0 therefore regroups A before B. The count N-r is static; only
which tokens merge depends on the data. Methods skip layers with r = 0 rather than call the op.
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

__all__ = ["BIPARTITE_MERGE", "bipartite_merge", "max_merge_r"]

_NORM_EPS = 1e-12


def max_merge_r(n_tokens: int, protected: int) -> int:
    """The largest r one BipartiteMerge can remove from n tokens: the size of set A."""
    return max(n_tokens - protected, 0) // 2


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


def _match(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (src_idx [B,r], dst_idx [B,r], unm_idx [B,NA-r] ascending) over the A/B split."""
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    scores = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)
    node_max = scores.amax(dim=-1)
    node_idx = scores.argmax(dim=-1)  # the first maximum, as ONNX ArgMax
    order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices
    unm_idx = torch.sort(order[:, r:], dim=-1).values
    return order[:, :r], torch.gather(node_idx, 1, order[:, :r]), unm_idx


@torch.library.custom_op(f"{DOMAIN}::bipartite_merge", mutates_args=())
def bipartite_merge(
    x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, protected: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference face of BipartiteMerge (see the module docstring for the semantics)."""
    p = protected
    src_idx, dst_idx, unm_idx = _match(metric[:, p:], r)
    xa, xb = x[:, p::2], x[:, p + 1 :: 2]
    sa, sb = size[:, p::2], size[:, p + 1 :: 2]
    src_s = gather_rows(sa, src_idx)
    merged_s = sb.scatter_add(1, dst_idx.unsqueeze(-1), src_s)
    merged_x = (xb * sb).scatter_add(
        1, dst_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]), gather_rows(xa, src_idx) * src_s
    )
    x_out = torch.cat([x[:, :p], gather_rows(xa, unm_idx), merged_x / merged_s], dim=1)
    s_out = torch.cat([size[:, :p], gather_rows(sa, unm_idx), merged_s], dim=1)
    return x_out, s_out


@bipartite_merge.register_fake
def _(x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, protected: int):
    b, n, c = x.shape
    return x.new_empty((b, n - r, c)), size.new_empty((b, n - r, 1))


_domain = Opset(DOMAIN, 1)


@script(_domain, default_opset=op)
def _bipartite_merge_fn(x: FLOAT, metric: FLOAT, size: FLOAT, r: int, protected: int):
    # Written for few nodes: at batch 1 a merge's cost is mostly per-node overhead.
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    last = op.Constant(value_ints=[-1])
    end = op.Constant(value_ints=[9223372036854775807])
    p = op.Reshape(op.Constant(value_int=protected), one)
    p1 = op.Add(p, one)
    rr = op.Reshape(op.Constant(value_int=r), one)

    mt = op.Slice(metric, p, end, one)
    mt = op.Div(mt, op.Max(op.ReduceL2(mt, last, keepdims=1), 1e-12))
    scores = op.MatMul(
        op.Slice(mt, zero, end, one, two),
        op.Transpose(op.Slice(mt, one, end, one, two), perm=[0, 2, 1]),
    )
    node_max = op.ReduceMax(scores, last, keepdims=0)
    node_idx = op.ArgMax(scores, axis=-1, keepdims=0)
    n_a = op.Shape(node_max, start=1, end=2)
    _, order = op.TopK(node_max, n_a, axis=-1, largest=1, sorted=1)
    src_idx = op.Slice(order, zero, rr, one)
    unm_idx, _ = op.TopK(op.Slice(order, rr, end, one), op.Sub(n_a, rr), axis=-1, largest=0)
    dst_idx = op.GatherElements(node_idx, src_idx, axis=1)

    xa = op.Slice(x, p, end, one, two)
    xb = op.Slice(x, p1, end, one, two)
    sa = op.Slice(size, p, end, one, two)
    sb = op.Slice(size, p1, end, one, two)
    # One-hot [B,NB,r] assignment of merged A tokens to their B tokens: a MatMul instead of
    # ScatterElements(reduction=add), which TensorRT runs as a slow, atomic plugin.
    assign = op.OneHot(
        dst_idx, op.Shape(sb, start=1, end=2), op.Constant(value_floats=[0.0, 1.0]), axis=1
    )
    src_rows = op.Unsqueeze(src_idx, last)
    src_s = op.GatherND(sa, src_rows, batch_dims=1)
    src_x = op.Mul(op.GatherND(xa, src_rows, batch_dims=1), src_s)
    merged_s = op.Add(sb, op.MatMul(assign, src_s))
    merged_x = op.Div(op.Add(op.Mul(xb, sb), op.MatMul(assign, src_x)), merged_s)

    unm_rows = op.Unsqueeze(unm_idx, last)
    x_out = op.Concat(
        op.Slice(x, zero, p, one), op.GatherND(xa, unm_rows, batch_dims=1), merged_x, axis=1
    )
    s_out = op.Concat(
        op.Slice(size, zero, p, one), op.GatherND(sa, unm_rows, batch_dims=1), merged_s, axis=1
    )
    return x_out, s_out


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
        onnx_function=function_builder(_bipartite_merge_fn, "BipartiteMerge"),
    )
)

"""TopKSelect: keep the k most important tokens, optionally fusing the rest into one token.

Spec (version 1)
  inputs   x [B,N,C] tokens, scores [B,N] importance per token (e.g. CLS attention),
           size [B,N,1] tokens per token
  attrs    k: unprotected tokens kept (1 <= k <= N-p); protected: leading tokens (CLS,
           distillation, registers) always kept, whatever their score; fuse: 1 appends one token
           standing for every dropped token, 0 drops them
  outputs  x_out [B,p+k+fuse,C], size_out [B,p+k+fuse,1]

Semantics: among the N-p >= 1 unprotected tokens, the k with the highest scores are kept; equal
scores rank the lower index first (so the selection is deterministic). Output layout: the
protected tokens, then the kept tokens in their original order (order-preserving, unlike EViT's
reference, which orders them by score), then with fuse=1 the fused token: sum(score·x) over the
dropped tokens, weights NOT renormalised (as EViT), with size sum(size) over the dropped tokens.
k = N-p drops nothing: the fused token is then all zeros with size 0, which methods avoid by
skipping such layers. Scores must be finite. The count p+k+fuse is static; only which tokens are
kept depends on the data.
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

__all__ = ["TOPK_SELECT", "topk_select"]


def _output_tokens(n_tokens: int, attrs: Mapping[str, Any]) -> int:
    k, protected, fuse = attrs["k"], attrs["protected"], attrs["fuse"]
    if not 1 <= k <= n_tokens - protected:
        raise OpValidationError(
            f"TopKSelect: k={k} must be in 1..{n_tokens - protected} for {n_tokens} tokens with "
            f"{protected} protected"
        )
    return protected + k + fuse


@torch.library.custom_op(f"{DOMAIN}::topk_select", mutates_args=())
def topk_select(
    x: torch.Tensor, scores: torch.Tensor, size: torch.Tensor, k: int, protected: int, fuse: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference face of TopKSelect (see the module docstring for the semantics)."""
    p = protected
    xt, st, sizes = x[:, p:], scores[:, p:], size[:, p:]
    order = torch.sort(st, dim=1, descending=True, stable=True).indices
    keep = torch.sort(order[:, :k], dim=1).values
    x_parts = [x[:, :p], gather_rows(xt, keep)]
    s_parts = [size[:, :p], gather_rows(sizes, keep)]
    if fuse:
        drop = order[:, k:]
        weights = torch.gather(st, 1, drop).unsqueeze(1).to(x.dtype)
        x_parts.append(weights @ gather_rows(xt, drop))
        s_parts.append(gather_rows(sizes, drop).sum(dim=1, keepdim=True))
    return torch.cat(x_parts, dim=1), torch.cat(s_parts, dim=1)


@topk_select.register_fake
def _(x: torch.Tensor, scores: torch.Tensor, size: torch.Tensor, k: int, protected: int, fuse: int):
    b, _, c = x.shape
    m = protected + k + fuse
    return x.new_empty((b, m, c)), size.new_empty((b, m, 1))


_domain = Opset(DOMAIN, 1)


@script(_domain, default_opset=op)
def _topk_select_fn(x: FLOAT, scores: FLOAT, size: FLOAT, k: int, protected: int, fuse: int):
    # Few nodes (per-node overhead dominates at batch 1): one TopK selects, a second sorts the
    # kept indices back into token order. `fuse` is an attribute, so the If below is constant:
    # runtimes keep one branch (ONNX Runtime folds it; TensorRT imports only the taken branch).
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    last = op.Constant(value_ints=[-1])
    end = op.Constant(value_ints=[9223372036854775807])
    p = op.Reshape(op.Constant(value_int=protected), one)
    kk = op.Reshape(op.Constant(value_int=k), one)

    st = op.Slice(scores, p, end, one)
    xt = op.Slice(x, p, end, one)
    sizes = op.Slice(size, p, end, one)
    _, top = op.TopK(st, kk, axis=-1, largest=1, sorted=1)
    keep, _ = op.TopK(top, kk, axis=-1, largest=0, sorted=1)
    rows = op.Unsqueeze(keep, last)
    x_head = op.Slice(x, zero, p, one)
    s_head = op.Slice(size, zero, p, one)
    x_kept = op.GatherND(xt, rows, batch_dims=1)
    s_kept = op.GatherND(sizes, rows, batch_dims=1)
    if op.Cast(op.Constant(value_int=fuse), to=9):
        # Dropped mask [B,1,M]: a one-hot of the kept indices with values (1, 0), min over k.
        off_on = op.CastLike(op.Constant(value_floats=[1.0, 0.0]), x)
        dropped = op.ReduceMin(
            op.OneHot(top, op.Shape(st, start=1, end=2), off_on, axis=-1), one, keepdims=1
        )
        fused_x = op.MatMul(op.Mul(dropped, op.Unsqueeze(st, one)), xt)
        fused_s = op.MatMul(dropped, sizes)
        x_out = op.Concat(x_head, x_kept, fused_x, axis=1)
        s_out = op.Concat(s_head, s_kept, fused_s, axis=1)
    else:
        x_out = op.Concat(x_head, x_kept, axis=1)
        s_out = op.Concat(s_head, s_kept, axis=1)
    return x_out, s_out


TOPK_SELECT = register_op(
    OpSpec(
        name="TopKSelect",
        version=1,
        doc="Keep the k highest-scoring tokens in order; optionally fuse the rest into one token.",
        inputs=("x", "scores", "size"),
        outputs=("x_out", "size_out"),
        attributes=(
            AttributeSpec("k", int, "unprotected tokens kept", minimum=1),
            AttributeSpec("protected", int, "leading tokens always kept", minimum=0),
            AttributeSpec(
                "fuse",
                int,
                "1: append the score-weighted sum of dropped tokens",
                minimum=0,
                maximum=1,
            ),
        ),
        output_tokens=_output_tokens,
        torch_op=torch.ops.trimformer.topk_select.default,
        onnx_function=function_builder(_topk_select_fn, "TopKSelect"),
    )
)

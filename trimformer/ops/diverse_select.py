"""DiverseSelect: keep a diverse subset of k tokens by greedy max-min (farthest-point) selection.

Spec (version 1)
  inputs   x [B,N,C] tokens, features [B,N,Cf] whose cosine distance defines diversity (e.g. the
           tokens themselves, as DivPrune), size [B,N,1] tokens per token
  attrs    k: unprotected tokens kept (1 <= k <= N-p); protected: leading tokens (CLS,
           distillation, registers) always kept and taking no part in the selection
  outputs  x_out [B,p+k,C], size_out [B,p+k,1]

Semantics (DivPrune's greedy max-min diversity, for any batch size): over the N-p >= 1
unprotected tokens, D = 1 - cos(f_i, f_j) of the L2-normalised features (norm clamped at 1e-12,
so a zero feature is at distance 1 from everything). The first pick is the token whose nearest
*other* token is farthest (argmax_i min_{j != i} D_ij; a lone token is picked); then, k-1 times,
the unselected token whose distance to the selected set (its min D to a selected token) is the
largest. Every argmax takes the lowest index among equal values. Computed on similarities
(max-min D is min-max cos), which is the same order without the rounding of 1 - cos. Output
layout: the protected tokens, then the selected tokens in their original order; their sizes
are carried unchanged. Features must be finite. The count p+k is static.

ONNX form: one ONNX ``Loop`` of k-1 iterations whose only loop-carried state is the [B,M]
vector of each token's closest similarity to the selected set (+inf once selected); the [B,M,M]
similarity matrix is computed once, outside the loop, and each iteration reads one row of it
(ArgMin, GatherND, Max). Chosen over unrolling the k-1 steps because (1) the function body is
one FunctionProto shared by every call site, with k an attribute reference: an unrolled body
would need one function per k; (2) its size is constant (37 nodes besides constants), where an
unrolled body grows by 3 nodes per kept token (226 for k = 64, 898 for k = 288 of 577 tokens);
(3) it costs about the same: ORT 1.32 CPU, batch 1, one thread, Cf = 384 (DeiT-S), medians of
300 interleaved runs on a shared 2-core machine, Loop vs unrolled, k = 64: N = 197: 1.1-1.4 vs
0.8-1.3 ms; N = 577: 6.1-6.2 vs 6.0-6.3 ms; k = 288 of 577: 7.5 vs 7.7 ms
(``benchmarks/diverse_select_loop.py``). The Loop pays ~1-2 µs per iteration to run its body
graph; the N x N similarity matrix (0.8 ms at N = 197 with k = 1) dominates both forms.
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

__all__ = ["DIVERSE_SELECT", "diverse_select"]

_NORM_EPS = 1e-12


def _output_tokens(n_tokens: int, attrs: Mapping[str, Any]) -> int:
    k, protected = attrs["k"], attrs["protected"]
    if not 1 <= k <= n_tokens - protected:
        raise OpValidationError(
            f"DiverseSelect: k={k} must be in 1..{n_tokens - protected} for {n_tokens} tokens "
            f"with {protected} protected"
        )
    return protected + k


@torch.library.custom_op(f"{DOMAIN}::diverse_select", mutates_args=())
def diverse_select(
    x: torch.Tensor, features: torch.Tensor, size: torch.Tensor, k: int, protected: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference face of DiverseSelect (see the module docstring for the semantics)."""
    p = protected
    unit = features[:, p:]
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    sim = unit @ unit.transpose(1, 2)
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    pick = sim.masked_fill(eye, -torch.inf).amax(dim=-1).argmin(dim=-1, keepdim=True)
    covered = sim.masked_fill(eye, torch.inf)  # a selected token's own entry: +inf
    closest = gather_rows(covered, pick).squeeze(1)
    for _ in range(k - 1):
        pick = closest.argmin(dim=-1, keepdim=True)
        closest = torch.maximum(closest, gather_rows(covered, pick).squeeze(1))
    keep = torch.argsort((closest != torch.inf).to(torch.uint8), dim=1, stable=True)[:, :k]
    x_out = torch.cat([x[:, :p], gather_rows(x[:, p:], keep)], dim=1)
    s_out = torch.cat([size[:, :p], gather_rows(size[:, p:], keep)], dim=1)
    return x_out, s_out


@diverse_select.register_fake
def _(x: torch.Tensor, features: torch.Tensor, size: torch.Tensor, k: int, protected: int):
    b, _, c = x.shape
    return x.new_empty((b, protected + k, c)), size.new_empty((b, protected + k, 1))


_domain = Opset(DOMAIN, 1)


@script(_domain, default_opset=op)
def _diverse_select_fn(x: FLOAT, features: FLOAT, size: FLOAT, k: int, protected: int):
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    last = op.Constant(value_ints=[-1])
    end = op.Constant(value_ints=[9223372036854775807])
    p = op.Reshape(op.Constant(value_int=protected), one)
    kk = op.Reshape(op.Constant(value_int=k), one)
    steps = op.Sub(op.Constant(value_int=k), op.Constant(value_int=1))
    inf = op.CastLike(op.Constant(value_float=float("inf")), features)
    ninf = op.Neg(inf)

    ft = op.Slice(features, p, end, one)
    unit = op.Div(ft, op.Max(op.ReduceL2(ft, last, keepdims=1), 1e-12))
    sim = op.MatMul(unit, op.Transpose(unit, perm=[0, 2, 1]))
    index = op.Range(
        op.Constant(value_int=0),
        op.Squeeze(op.Shape(sim, start=1, end=2)),
        op.Constant(value_int=1),
    )
    eye = op.Equal(op.Unsqueeze(index, last), op.Unsqueeze(index, zero))
    nearest = op.ReduceMax(op.Where(eye, ninf, sim), last, keepdims=0)
    covered = op.Where(eye, inf, sim)
    closest = op.GatherND(covered, op.ArgMin(nearest, axis=-1, keepdims=1), batch_dims=1)
    for _ in range(steps):
        pick = op.ArgMin(closest, axis=-1, keepdims=1)
        closest = op.Max(closest, op.GatherND(covered, pick, batch_dims=1))
    # Selected tokens are the +inf entries: order them by position (the others sort last).
    key = op.Where(op.IsInf(closest), op.CastLike(index, closest), inf)
    _, keep = op.TopK(key, kk, axis=-1, largest=0, sorted=1)
    rows = op.Unsqueeze(keep, last)
    x_out = op.Concat(
        op.Slice(x, zero, p, one), op.GatherND(op.Slice(x, p, end, one), rows, batch_dims=1), axis=1
    )
    s_out = op.Concat(
        op.Slice(size, zero, p, one),
        op.GatherND(op.Slice(size, p, end, one), rows, batch_dims=1),
        axis=1,
    )
    return x_out, s_out


DIVERSE_SELECT = register_op(
    OpSpec(
        name="DiverseSelect",
        version=1,
        doc="Keep k tokens chosen greedily for max-min cosine diversity (DivPrune), in order.",
        inputs=("x", "features", "size"),
        outputs=("x_out", "size_out"),
        attributes=(
            AttributeSpec("k", int, "unprotected tokens kept", minimum=1),
            AttributeSpec("protected", int, "leading tokens always kept", minimum=0),
        ),
        output_tokens=_output_tokens,
        torch_op=torch.ops.trimformer.diverse_select.default,
        onnx_function=function_builder(_diverse_select_fn, "DiverseSelect"),
    )
)

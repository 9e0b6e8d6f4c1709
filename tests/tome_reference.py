"""ToMe's bipartite soft matching, written from its rule in plain Python loops (float64).

The independent reference that BipartiteMerge (version 2) and ToMe exports are checked against.
It follows ToMe's own formulation, not BipartiteMerge's: the WHOLE sequence is split by parity
(A = even indices, B = odd indices, protected tokens included) and protected tokens are masked
(a protected A row scores -inf, so it is never a source; a protected B column scores -inf, so it
is never a destination), then r is capped at (N - protected) // 2, each A token takes the first
maximum of its row, A tokens are ranked by it (descending, lower A index first on ties) and the
first r merge into their best B by size-weighted average. Output: the protected tokens in their
original order, the unmerged unprotected A tokens ascending, then the unprotected B tokens.

Run as a script to compare ToMe exports of timm models (random weights) against a torch model
whose every merge is this reference, on the logits and on the pooled features (the model without
its head: a random head makes the logits nearly blind to which tokens merged, the features not):

    python tests/tome_reference.py deit_tiny_patch16_224 deit_small_patch16_224 \\
        deit_small_distilled_patch16_224 [--r 13] [--batch 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np
import onnxruntime as ort
import torch

from trimformer.exporter.onnx_export import export_onnx
from trimformer.methods import ModelGeometry, get_method, parse_params
from trimformer.methods.tome import ToMeReducer
from trimformer.models import GraphIO, adapter_for
from trimformer.models.base import TokenState
from trimformer.models.loading import load_model

__all__ = ["ReferenceToMeReducer", "export_vs_reference", "tome_merge"]


def _unit(v: list[float]) -> list[float]:
    norm = max(math.sqrt(sum(value * value for value in v)), 1e-12)
    return [value / norm for value in v]


def tome_merge(
    x: np.ndarray, metric: np.ndarray, size: np.ndarray, r: int, protected: int
) -> tuple[np.ndarray, np.ndarray]:
    """ToMe's merge of r tokens per batch item (see the module docstring), in float64."""
    batch, n_tokens, channels = x.shape
    cap = (n_tokens - protected) // 2
    if not 0 <= r <= cap:
        raise ValueError(f"r={r} is outside 0..{cap} for {n_tokens} tokens, {protected} protected")
    set_a = list(range(0, n_tokens, 2))
    set_b = list(range(1, n_tokens, 2))
    x_rows, s_rows = [], []
    for b in range(batch):
        units = [_unit([float(v) for v in metric[b, t]]) for t in range(n_tokens)]

        # Each A token's best B: the first maximum of its masked score row.
        best = []  # (score, index into set_b) per A token
        for ta in set_a:
            row = []
            for tb in set_b:
                if ta < protected or tb < protected:
                    row.append(-math.inf)
                else:
                    row.append(sum(p * q for p, q in zip(units[ta], units[tb], strict=True)))
            j_best = 0
            for j in range(1, len(row)):
                if row[j] > row[j_best]:
                    j_best = j
            best.append((row[j_best], j_best))

        # Rank A by best score, descending; on ties the lower A index first. First r merge.
        ranking = sorted(range(len(set_a)), key=lambda i, best=best: (-best[i][0], i))
        merged = set(ranking[:r])
        if any(set_a[i] < protected for i in merged):
            raise AssertionError("a protected token was ranked among the first r")

        # Size-weighted sums per B token: itself plus every A token merged into it.
        acc_x = {
            tb: [float(x[b, tb, c]) * float(size[b, tb, 0]) for c in range(channels)]
            for tb in set_b
        }
        acc_s = {tb: float(size[b, tb, 0]) for tb in set_b}
        for i in sorted(merged):
            ta, tb = set_a[i], set_b[best[i][1]]
            for c in range(channels):
                acc_x[tb][c] += float(x[b, ta, c]) * float(size[b, ta, 0])
            acc_s[tb] += float(size[b, ta, 0])

        kept = [
            *range(protected),
            *(t for i, t in enumerate(set_a) if t >= protected and i not in merged),
        ]
        out_x = [[float(v) for v in x[b, t]] for t in kept]
        out_s = [[float(size[b, t, 0])] for t in kept]
        for tb in set_b:
            if tb >= protected:
                out_x.append([value / acc_s[tb] for value in acc_x[tb]])
                out_s.append([acc_s[tb]])
        x_rows.append(out_x)
        s_rows.append(out_s)
    x_out = np.array(x_rows, dtype=np.float64).reshape(batch, n_tokens - r, channels)
    s_out = np.array(s_rows, dtype=np.float64).reshape(batch, n_tokens - r, 1)
    return x_out, s_out


@dataclasses.dataclass(frozen=True)
class ReferenceToMeReducer(ToMeReducer):
    """ToMe's reducer with every merge computed by ``tome_merge`` instead of the op."""

    def __call__(self, layer, x, state, taps):
        r = self.r_per_layer[layer]
        if r == 0:
            return x, state
        out_x, out_s = tome_merge(
            x.detach().double().numpy(),
            taps.matching_metric(self.metric).detach().double().numpy(),
            state.sizes_or_ones(x).detach().double().numpy(),
            r,
            self.protected,
        )
        return torch.from_numpy(out_x).to(x.dtype), TokenState(
            sizes=torch.from_numpy(out_s).to(x.dtype)
        )


def export_vs_reference(model: torch.nn.Module, r: int | list[int], images: torch.Tensor) -> float:
    """Max abs error of ``model``'s ToMe export (ONNX Runtime CPU) against the same model reduced
    by ``ReferenceToMeReducer``, on ``images``."""
    adapter = adapter_for(model)
    geometry = ModelGeometry.of(adapter, model)
    method = get_method("tome")
    params = {"r": r if isinstance(r, int) else tuple(r)}
    plan = method.plan(parse_params("tome", method.params_type, params), geometry)
    reduced = adapter.insert(model, plan.reducer).eval()
    with adapter.export_patches(reduced):
        graph, _ = export_onnx(reduced, GraphIO.image(images), 20)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixel_values": images.numpy()})
    fields = {f.name: getattr(plan.reducer, f.name) for f in dataclasses.fields(plan.reducer)}
    reference = adapter.insert(model, ReferenceToMeReducer(**fields)).eval()
    with torch.no_grad():
        want = reference(images).numpy()
    return float(np.abs(got - want).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--r", type=int, default=13)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    for model_id in args.models:
        errors = {}
        for output in ("logits", "pooled features"):
            loaded = load_model(model_id)
            if output != "logits":
                loaded.model.reset_classifier(0)
            shape = (args.batch, *loaded.preprocess["input_size"])
            images = torch.randn(shape, generator=torch.Generator().manual_seed(0))
            errors[output] = export_vs_reference(loaded.model, args.r, images)
        print(
            f"{model_id} ToMe r={args.r} batch {args.batch}, max abs error: "
            + ", ".join(f"{output} {error:.3g}" for output, error in errors.items())
        )


if __name__ == "__main__":
    main()

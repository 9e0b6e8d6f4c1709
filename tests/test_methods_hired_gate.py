"""HiRED and the MrT5-style delete gate: naive references, plans, configs, export, CLI."""

from __future__ import annotations

import copy
import json
import math
from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import tiny_vit
from safetensors.torch import save_file
from test_methods import DEIT, deit_96, images, plan, reduce
from torch import nn

from trimformer.cli import cli
from trimformer.errors import UsageError
from trimformer.exporter import VERIFY_ATOL
from trimformer.exporter.onnx_export import export_onnx
from trimformer.methods import ConfigError, ModelGeometry
from trimformer.methods.hired import hired_scores, tile_of_patches
from trimformer.models import GraphIO, adapter_for
from trimformer.profiles import load_reduction_config

# --------------------------------------------------------------------------------------------
# Naive references: plain loops over Python numbers, written from the papers' descriptions
# --------------------------------------------------------------------------------------------


def naive_hired_keep(
    budget: list[float],
    select: list[float],
    grid: tuple[int, int],
    partitions: int,
    k: int,
    protected: int,
) -> list[int]:
    """The token indices HiRED keeps for one item (CLS attention per token at both blocks).

    Exact arithmetic (fractions): shares of the early CLS attention per tile rounded to
    multiples of 2^-16 (half to even), quotas k·share floored, leftover seats to the largest
    remainders, one each (ties: lower tile), seats capped at the
    tile's size; each tile keeps its most attended tokens; freed seats go to the most attended
    tokens left anywhere (ties: lower index).
    """
    rows, cols = grid
    tile_members: dict[int, list[int]] = {t: [] for t in range(partitions * partitions)}
    for r in range(rows):
        for c in range(cols):
            tile = (r * partitions // rows) * partitions + c * partitions // cols
            tile_members[tile].append(protected + r * cols + c)
    mass = {
        t: sum((Fraction(budget[i]) for i in ts), Fraction(0)) for t, ts in tile_members.items()
    }
    total = sum(mass.values(), Fraction(0))
    quota = {t: k * Fraction(round(mass[t] / total * 2**16), 2**16) for t in mass}
    seats = {t: math.floor(q) for t, q in quota.items()}
    left = k - sum(seats.values())
    for t in sorted(quota, key=lambda t: (-(quota[t] - seats[t]), t))[:left]:
        seats[t] += 1
    kept: list[int] = []
    for t, members in tile_members.items():
        ranked = sorted(members, key=lambda i: (-select[i], i))
        kept += ranked[: min(seats[t], len(members))]
    rest = sorted(
        (i for i in range(protected, protected + rows * cols) if i not in kept),
        key=lambda i: (-select[i], i),
    )
    kept += rest[: k - len(kept)]
    return [*range(protected), *sorted(kept)]


def naive_gate_keep(x: torch.Tensor, weight: torch.Tensor, bias: float, threshold: float, p: int):
    """The tokens of one item [N,C] a linear gate keeps: protected ones, and score >= threshold."""
    kept = []
    for t in range(x.shape[0]):
        score = sum(float(x[t, c]) * float(weight[c]) for c in range(x.shape[1])) + bias
        if t < p or score >= threshold:
            kept.append(t)
    return kept


# --------------------------------------------------------------------------------------------
# HiRED's selection against the naive reference
# --------------------------------------------------------------------------------------------


def selected_by_op(
    budget: torch.Tensor, select: torch.Tensor, grid, partitions, k, protected
) -> list[list[int]]:
    """The tokens hired_scores + TopKSelect keep, read back from token features = their index."""
    b, n = budget.shape
    tiles = torch.tensor(tile_of_patches(grid, partitions))
    member = F.one_hot(tiles, partitions * partitions).float()
    scores = hired_scores(budget, select, member, k, protected)
    x = torch.arange(n, dtype=torch.float32).expand(b, n).unsqueeze(-1).contiguous()
    out, _ = torch.ops.trimformer.topk_select(x, scores, torch.ones_like(x), k, protected, 0)
    return [[int(v) for v in row] for row in out[..., 0]]


def attention_like(batch: int, n: int, seed: int, levels: int | None = None) -> torch.Tensor:
    """Rows of non-negative values summing to 1; ``levels``: multiples of 1/(8·levels) (ties)."""
    g = torch.Generator().manual_seed(seed)
    if levels is None:
        values = torch.rand(batch, n, generator=g)
        return values / values.sum(dim=-1, keepdim=True)
    return torch.randint(0, levels, (batch, n), generator=g).float() / (8 * levels)


CASES = {
    # name: (grid, partitions, k, protected, budget, select)
    "random": ((8, 8), 2, 20, 1, attention_like(3, 65, 0), attention_like(3, 65, 1)),
    "registers, uneven tiles": (
        (6, 7),
        3,
        17,
        5,
        attention_like(2, 47, 2),
        attention_like(2, 47, 3),
    ),
    "ties": ((8, 8), 2, 21, 1, attention_like(3, 65, 4, 3), attention_like(3, 65, 5, 2)),
    "all equal": ((8, 8), 3, 30, 1, torch.full((2, 65), 1 / 64), torch.full((2, 65), 1 / 64)),
    "k = 1": ((8, 8), 2, 1, 1, attention_like(2, 65, 6), attention_like(2, 65, 7)),
    "k = N": ((8, 8), 2, 64, 1, attention_like(2, 65, 8), attention_like(2, 65, 9)),
    "one tile": ((8, 8), 1, 10, 1, attention_like(2, 65, 10), attention_like(2, 65, 11)),
    "rectangular": ((4, 10), 4, 13, 1, attention_like(2, 41, 12), attention_like(2, 41, 13)),
}


def concentrated(batch: int, n: int) -> torch.Tensor:
    """Early attention almost all on the first tile's patches: its quota exceeds its size."""
    values = torch.full((batch, n), 1e-4)
    values[:, 1:5] = 1.0
    return values / values.sum(dim=-1, keepdim=True)


CASES["capped tile"] = ((8, 8), 2, 40, 1, concentrated(2, 65), attention_like(2, 65, 14))


@pytest.mark.parametrize("case", list(CASES))
def test_hired_selection_equals_the_naive_reference(case):
    grid, partitions, k, p, budget, select = CASES[case]
    got = selected_by_op(budget, select, grid, partitions, k, p)
    for b in range(budget.shape[0]):
        want = naive_hired_keep(budget[b].tolist(), select[b].tolist(), grid, partitions, k, p)
        assert got[b] == want, (case, b)
        assert len(got[b]) == p + k


def test_hired_splits_by_the_early_attention_and_ranks_by_the_late():
    # Early attention only on the left half (tiles 0 and 2, equal mass): 8 seats each, none on
    # the right, whatever the late attention says there; each left tile keeps its top 8.
    budget = torch.zeros(1, 65)
    budget[0, 1:] = torch.tensor([1.0 if c < 4 else 0.0 for r in range(8) for c in range(8)])
    select = attention_like(1, 65, 15)
    (kept,) = selected_by_op(budget, select, (8, 8), 2, 16, 1)
    top_left = [1 + r * 8 + c for r in range(4) for c in range(4)]
    bottom_left = [1 + r * 8 + c for r in range(4, 8) for c in range(4)]
    want = [sorted(t, key=lambda i: -select[0, i])[:8] for t in (top_left, bottom_left)]
    assert kept == [0, *sorted(want[0] + want[1])]


# --------------------------------------------------------------------------------------------
# HiRED on a real model against an eager reimplementation (DeiT-Ti at 96 px: 6x6 patches)
# --------------------------------------------------------------------------------------------


class HiREDReference(nn.Module):
    """timm blocks on the plain attention path, CLS attention read from timm's own attention
    probabilities (the input of attn_drop); the naive selection at ``select_layer``."""

    def __init__(self, blocks, budget_layer, select_layer, partitions, k) -> None:
        super().__init__()
        self.blocks = blocks
        self.budget_layer, self.select_layer = budget_layer, select_layer
        self.partitions, self.k = partitions, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        budget = None
        for i, block in enumerate(self.blocks):
            probs: list[torch.Tensor] = []
            hook = block.attn.attn_drop.register_forward_hook(
                lambda m, a, out, probs=probs: probs.append(out)
            )
            x = x + block.ls1(block.attn(block.norm1(x)))
            hook.remove()
            cls_attention = probs[0][:, :, 0, :].mean(dim=1)
            if i == self.budget_layer:
                budget = cls_attention
            if i == self.select_layer:
                rows = [
                    naive_hired_keep(
                        budget[b].tolist(),
                        cls_attention[b].tolist(),
                        (6, 6),
                        self.partitions,
                        self.k,
                        1,
                    )
                    for b in range(x.shape[0])
                ]
                x = torch.stack([x[b, row] for b, row in enumerate(rows)])
            x = x + block.ls2(block.mlp(block.norm2(x)))
        return x


@pytest.mark.parametrize(("budget_layer", "select_layer", "partitions"), [(0, 3, 2), (2, 2, 3)])
def test_hired_equals_an_eager_reimplementation(budget_layer, select_layer, partitions):
    model = deit_96(fused=False)
    reference = copy.deepcopy(model)
    reference.blocks = HiREDReference(reference.blocks, budget_layer, select_layer, partitions, 14)
    params = dict(k=14, partitions=partitions, budget_layer=budget_layer, select_layer=select_layer)
    x = images(3)
    with torch.no_grad():
        got = reduce(model, "hired", **params)(x)
        want = reference(x)
        full = model(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    assert not torch.allclose(got, full, atol=1e-3)


# --------------------------------------------------------------------------------------------
# The delete gate on a real model against hard deletion (compacting every item separately)
# --------------------------------------------------------------------------------------------


def write_gate(path, dim: int, seed: int, bias: float = 0.0):
    weight = torch.randn(dim, generator=torch.Generator().manual_seed(seed)) / math.sqrt(dim)
    save_file({"weight": weight, "bias": torch.tensor(bias)}, str(path))
    return weight


class HardDeletion(nn.Module):
    """timm blocks that, at ``layer``, drop the tokens the gate deletes from each item's sequence
    (one item at a time, sequences of their own length), as MrT5 does at inference. The output
    rows are zero-padded to N: the model pools only the CLS token."""

    def __init__(self, blocks, layer, weight, bias, threshold, protected) -> None:
        super().__init__()
        self.blocks, self.layer = blocks, layer
        self.weight, self.bias, self.threshold, self.protected = weight, bias, threshold, protected
        self.kept: list[list[int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        self.kept = []
        for b in range(x.shape[0]):
            h = x[b : b + 1]
            for i, block in enumerate(self.blocks):
                h = h + block.ls1(block.attn(block.norm1(h)))
                if i == self.layer:
                    kept = naive_gate_keep(
                        h[0], self.weight, self.bias, self.threshold, self.protected
                    )
                    self.kept.append(kept)
                    h = h[:, kept]
                h = h + block.ls2(block.mlp(block.norm2(h)))
            out[b, : h.shape[1]] = h[0]
        return out


@pytest.mark.parametrize(("kind", "threshold"), [("vit", 0.0), ("registers", 0.05), ("vit", 1e9)])
def test_gate_equals_hard_deletion(tmp_path, kind, threshold):
    # threshold 1e9 deletes every unprotected token: only the protected ones remain.
    model = tiny_vit(kind, fused=True, depth=4)
    gate = tmp_path / "gate.safetensors"
    weight = write_gate(gate, 48, seed=3, bias=0.01)
    p = adapter_for(model).protected_tokens(model)
    reference = copy.deepcopy(model)
    reference.blocks = HardDeletion(reference.blocks, 1, weight, 0.01, threshold, p)
    params = {"gate": str(gate), "threshold": threshold, "layer": 1}
    x = images(3, 32)
    with torch.no_grad():
        got = reduce(model, "mrt5_gate", **params)(x)
        want = reference(x)
        full = model(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    counts = [len(kept) - p for kept in reference.blocks.kept]
    if threshold > 1e6:
        assert counts == [0, 0, 0]
    else:
        assert all(0 < c < 64 for c in counts), counts  # some deleted, some kept, per item
    assert not torch.allclose(got, full, atol=1e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_gate_that_deletes_nothing_leaves_the_model_unchanged(tmp_path, fused):
    model = tiny_vit("registers", fused=fused)
    gate = tmp_path / "gate.safetensors"
    write_gate(gate, 48, seed=4)
    x = images(2, 32)
    with torch.no_grad():
        got = reduce(model, "mrt5_gate", gate=str(gate), threshold=-1e30, layer=0)(x)
        full = model(x)
    np.testing.assert_allclose(got.numpy(), full.numpy(), atol=1e-5)


def test_gate_never_deletes_protected_tokens_and_masks_both_ways():
    from trimformer.methods.mrt5_gate import deletion_bias

    keep = torch.tensor([[True, False, True, False], [True, True, True, True]])
    bias = deletion_bias(keep)[:, 0]
    for b in range(2):
        for q in range(4):
            for k in range(4):
                allowed = q == k or (bool(keep[b, q]) and bool(keep[b, k]))
                assert bias[b, q, k].item() == (0.0 if allowed else -math.inf)


def test_visualize_shows_deleted_tokens_as_pruned(tmp_path):
    from trimformer.visualize import PRUNED, layer_view, track_sources

    model = tiny_vit(depth=4)
    weight = write_gate(tmp_path / "g.safetensors", 48, seed=7)
    adapter = adapter_for(model)
    params = {"gate": str(tmp_path / "g.safetensors"), "layer": 1}
    x = images(1, 32)
    layers = track_sources(
        model, adapter, plan("mrt5_gate", params, ModelGeometry.of(adapter, model)), x, 1
    )
    reference = copy.deepcopy(model)
    reference.blocks = HardDeletion(reference.blocks, 1, weight, 0.0, 0.0, 1)
    with torch.no_grad():
        reference(x)
    (kept,) = reference.blocks.kept
    pruned = [int((layer_view(layer).kind == PRUNED).sum()) for layer in layers]
    assert pruned == [0] + [65 - len(kept)] * 3 and 0 < len(kept) < 65


def test_random_gate_warns(caplog):
    model = tiny_vit()
    with caplog.at_level("WARNING", logger="trimformer"):
        plan("mrt5_gate", {"layer": 1}, ModelGeometry.of(adapter_for(model), model))
    assert "the gate is random (seed 0)" in caplog.text


# --------------------------------------------------------------------------------------------
# Plans and configs
# --------------------------------------------------------------------------------------------


def test_hired_default_plan_and_profile():
    p = plan("hired", {})
    assert p.tokens_per_layer == (197,) * 6 + (99,) * 6
    assert p.layers[6] == {"op": "TopKSelect", "k": 98, "protected": 1, "fuse": 0}
    assert p.params == {
        "keep": 0.5,
        "k": None,
        "partitions": 2,
        "budget_layer": 0,
        "select_layer": 6,
    }
    config = load_reduction_config("deit-small-hired-keep0.5")
    assert plan(config.method, config.params).params == p.params
    assert plan("hired", {"k": 10, "select_layer": 11}).tokens_per_layer[-1] == 11
    assert not plan("hired", {"k": 196}).reduces  # keeps every patch


def test_gate_default_plan_and_profile():
    model = tiny_vit(depth=4)
    geometry = ModelGeometry.of(adapter_for(model), model)
    p = plan("mrt5_gate", {"seed": 1}, geometry)
    assert p.tokens_per_layer == (65,) * 4  # padded: the count is data-dependent
    assert p.layers[2] == {"gate": "delete", "threshold": 0.0, "protected": 1}
    assert p.reduces
    config = load_reduction_config("deit-small-mrt5-gate-random")
    deit_small = ModelGeometry(12, 197, 1, (14, 14), 384)
    assert plan(config.method, config.params, deit_small).params["layer"] == 2


def bad_gate_files(tmp_path):
    files = {}
    files["missing"] = tmp_path / "missing.safetensors"
    files["long"] = tmp_path / ("x" * 5000)
    files["garbage"] = tmp_path / "garbage.safetensors"
    files["garbage"].write_bytes(b"not a safetensors file")
    files["keys"] = tmp_path / "keys.safetensors"
    save_file({"w": torch.zeros(48), "bias": torch.zeros(())}, str(files["keys"]))
    files["shape"] = tmp_path / "shape.safetensors"
    save_file({"weight": torch.zeros(47), "bias": torch.zeros(())}, str(files["shape"]))
    files["nan"] = tmp_path / "nan.safetensors"
    save_file({"weight": torch.full((48,), math.nan), "bias": torch.zeros(())}, str(files["nan"]))
    return files


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("hired", {"partitions": 0}, "key 'partitions' must be >= 1"),
        ("hired", {"partitions": 15}, "'partitions' must be at most 14 for the model's 14x14"),
        ("hired", {"budget_layer": 12}, "'budget_layer' has \\[12\\] outside .* 0..11"),
        ("hired", {"select_layer": -1}, "'select_layer' has \\[-1\\] outside"),
        ("hired", {"budget_layer": 7}, "'budget_layer' \\(7\\) comes after 'select_layer' \\(6\\)"),
        ("hired", {"keep": 0.5, "k": 3}, "give key 'keep' \\(a share\\) or 'k'"),
        ("hired", {"keep": 1.5}, "hired: key 'keep' must be in \\(0, 1\\]"),
        ("hired", {"k": 0}, "hired: key 'k' must be >= 1"),
        ("hired", {"layers": [3]}, "unknown key\\(s\\) '?layers"),
        ("hired", {"partitions": 2.5}, "key 'partitions' must be int"),
        ("mrt5_gate", {"threshold": math.nan}, "'threshold' must be a finite number"),
        ("mrt5_gate", {"threshold": -math.inf}, "'threshold' must be a finite number"),
        ("mrt5_gate", {"seed": -1}, "'seed' must be >= 0"),
        ("mrt5_gate", {"layer": 3}, "'layer' has \\[3\\] outside .* 0..2"),
        ("mrt5_gate", {"keep": 0.5}, "unknown key\\(s\\) '?keep"),
        ("mrt5_gate", {"gate": "missing"}, "key 'gate' names .*missing.safetensors, which is not"),
        ("mrt5_gate", {"gate": "long"}, "key 'gate' names .*xxx, which is not a file"),
        ("mrt5_gate", {"gate": "garbage"}, "cannot read gate file"),
        ("mrt5_gate", {"gate": "keys"}, "must hold exactly tensors 'weight' \\[48\\] and 'bias'"),
        ("mrt5_gate", {"gate": "shape"}, "has weight \\[47\\] and bias \\[\\]; the model needs"),
        ("mrt5_gate", {"gate": "nan"}, "holds NaN or infinite values"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, method, params, message):
    if method == "mrt5_gate":
        model = tiny_vit()
        geometry = ModelGeometry.of(adapter_for(model), model)
        if "gate" in params:
            params = {"gate": str(bad_gate_files(tmp_path)[params["gate"]])}
    else:
        geometry = ModelGeometry(12, 197, 1, (14, 14), 384)
    with pytest.raises(ConfigError, match=message) as info:
        plan(method, params, geometry)
    assert "\n" not in str(info.value)


def test_hired_needs_a_patch_grid_and_a_cls_token():
    with pytest.raises(ConfigError, match="200 unprotected tokens are not a known grid"):
        plan("hired", {}, ModelGeometry(12, 201, 1))
    with pytest.raises(ConfigError, match="no CLS token"):
        plan("hired", {}, ModelGeometry(12, 196, 0, (14, 14)))
    # Without a grid from the adapter a square one is assumed.
    assert plan("hired", {}, ModelGeometry(12, 197, 1)).reduces


# --------------------------------------------------------------------------------------------
# Export: ONNX Runtime equals torch at any batch (tiny ViT with CLS + 4 registers, 8x8 patches)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "ops"),
    [
        ("hired", {"keep": 0.3, "partitions": 3, "budget_layer": 0, "select_layer": 1}, 1),
        ("hired", {"k": 1, "partitions": 2, "budget_layer": 1, "select_layer": 1}, 1),
        ("mrt5_gate", {"threshold": 0.0, "layer": 0}, 0),
    ],
)
def test_graph_matches_eager_at_any_batch(tmp_path, method, params, ops):
    base = tiny_vit("registers", fused=True)
    if method == "mrt5_gate":
        write_gate(tmp_path / "g.safetensors", 48, seed=5)
        params = {**params, "gate": str(tmp_path / "g.safetensors")}
    model = reduce(base, method, **params)
    adapter = adapter_for(model)
    with adapter.export_patches(model):
        graph, used = export_onnx(model, GraphIO.image(images(2, 32)), 20)
    assert used == ({"TopKSelect": 1} if ops else {})
    onnx.checker.check_model(graph, full_check=True)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {"pixel_values": x.numpy()})
        with torch.no_grad():
            want = model(x)
            np.testing.assert_allclose(got, want.numpy(), atol=VERIFY_ATOL)
            assert not torch.allclose(want, base(x), atol=1e-3)  # it did reduce


# --------------------------------------------------------------------------------------------
# CLI: --k, and both methods exported and verified
# --------------------------------------------------------------------------------------------


def export_cli(tmp_path, *args: str) -> dict:
    out = tmp_path / "b"
    result = CliRunner().invoke(
        cli, ["export", "test_vit", "--image-size", "64", *args, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verify"]["max_abs_error"]["model"] <= VERIFY_ATOL
    return manifest


def test_cli_exports_hired_with_k(tmp_path):
    # timm's test_vit (6 blocks, dim 64) at 64 px: CLS + 4x4 patches.
    manifest = export_cli(tmp_path, "--method", "hired", "--k", "5")
    reduction = manifest["reduction"]
    assert reduction["tokens_per_layer"] == [17] * 3 + [6] * 3
    assert reduction["layers"][3] == {"op": "TopKSelect", "k": 5, "protected": 1, "fuse": 0}
    assert reduction["params"]["k"] == 5 and reduction["params"]["select_layer"] == 3
    assert manifest["ops"] == {"TopKSelect": 1}


def test_cli_exports_the_gate(tmp_path):
    write_gate(tmp_path / "g.safetensors", 64, seed=6)
    config = tmp_path / "gate.yaml"
    config.write_text(f"method: mrt5_gate\nparams:\n  gate: {tmp_path / 'g.safetensors'}\n")
    manifest = export_cli(tmp_path, "--config", str(config))
    assert manifest["reduction"]["tokens_per_layer"] == [17] * 6
    assert manifest["reduction"]["layers"][2]["gate"] == "delete"
    assert set(manifest["graphs"]) == {"model", "full"}


@pytest.mark.parametrize("method", ["divprune", "tail_drop"])
def test_cli_k_sets_the_count(tmp_path, method):
    manifest = export_cli(tmp_path, "--method", method, "--k", "3", "--layers", "1")
    assert manifest["reduction"]["layers"][1]["k"] == 3
    assert manifest["reduction"]["tokens_per_layer"][1:] == [4] * 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "hired", "--k", "0"], "hired: key 'k' must be >= 1"),
        (["--method", "hired", "--keep", "0.5", "--k", "4"], "give key 'keep' (a share) or 'k'"),
        (["--method", "tome", "--k", "4"], "unknown key(s) 'k'"),
        (["--k", "4"], "need a method"),
        (["--method", "hired", "--layers", "3"], "unknown key(s) 'layers'"),
        (["--method", "mrt5_gate", "--r", "2"], "unknown key(s) 'r'"),
    ],
)
def test_cli_rejects_bad_params(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["export", DEIT, *args, "-o", str(tmp_path / "b")])
    assert isinstance(result.exception, UsageError), result.output
    assert message in str(result.exception)
    assert "\n" not in str(result.exception)
    assert not (tmp_path / "b").exists()

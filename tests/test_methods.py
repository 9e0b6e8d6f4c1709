"""Methods on real timm models: EViT against an independent eager reimplementation, export, CLI."""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from click.testing import CliRunner
from conftest import tiny_vit
from torch import nn

from trimformer.cli import cli
from trimformer.errors import UsageError
from trimformer.exporter import VERIFY_ATOL, ExportRequest, export_bundle
from trimformer.exporter.onnx_export import export_onnx
from trimformer.methods import ConfigError, ModelGeometry, get_method, parse_params
from trimformer.models import GraphIO, adapter_for
from trimformer.profiles import list_reduction_profiles, load_reduction_config

DEIT = "deit_tiny_patch16_224"
DEIT_GEOMETRY = ModelGeometry(num_layers=12, num_tokens=197, protected=1, grid=(14, 14), dim=192)


def plan(method: str, params: dict, geometry: ModelGeometry = DEIT_GEOMETRY):
    spec = get_method(method)
    return spec.plan(parse_params(method, spec.params_type, params), geometry)


def reduce(model: nn.Module, method: str, **params) -> nn.Module:
    adapter = adapter_for(model)
    geometry = ModelGeometry.of(adapter, model)
    return adapter.insert(model, plan(method, params, geometry).reducer).eval()


@functools.cache
def deit_96(fused: bool) -> nn.Module:
    """DeiT-Ti with random weights at 96 px: 36 patches + CLS (shared: never modify it)."""
    torch.manual_seed(0)
    model = timm.create_model(DEIT, img_size=96).eval()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    return model


def images(batch: int = 2, size: int = 96) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------------------------
# EViT in eager torch
# --------------------------------------------------------------------------------------------


class EViTOneLayer(nn.Module):
    """EViT at one layer, written from the paper on timm's plain attention path.

    The CLS attention is read from timm's own attention probabilities (the input of attn_drop);
    selection and fusion are per-item Python loops. No size bias, as in the paper.
    """

    def __init__(self, blocks: nn.Sequential, layer: int, k: int, fuse: bool) -> None:
        super().__init__()
        self.blocks, self.layer, self.k, self.fuse = blocks, layer, k, fuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            probs: list[torch.Tensor] = []
            hook = block.attn.attn_drop.register_forward_hook(
                lambda m, a, out, probs=probs: probs.append(out)
            )
            x = x + block.ls1(block.attn(block.norm1(x)))
            hook.remove()
            if i == self.layer:
                x = self._select(x, probs[0][:, :, 0, :].mean(dim=1))
            x = x + block.ls2(block.mlp(block.norm2(x)))
        return x

    def _select(self, x: torch.Tensor, cls_attn: torch.Tensor) -> torch.Tensor:
        rows = []
        for b in range(x.shape[0]):
            ranked = sorted(range(1, x.shape[1]), key=lambda t, b=b: (-cls_attn[b, t].item(), t))
            kept, dropped = sorted(ranked[: self.k]), ranked[self.k :]
            row = [x[b, 0], *(x[b, t] for t in kept)]
            if self.fuse:
                row.append(sum(cls_attn[b, t] * x[b, t] for t in dropped))
            rows.append(torch.stack(row))
        return torch.stack(rows)


@pytest.mark.parametrize("fuse", [True, False])
def test_evit_equals_an_eager_reimplementation(fuse):
    model = deit_96(fused=False)
    layer, keep = 2, 0.5
    k = math.ceil(keep * 36)
    geometry = ModelGeometry(12, 37, 1)
    assert plan("evit", {"keep": keep, "layers": [layer]}, geometry).layers[layer]["k"] == k
    reference = copy.deepcopy(model)
    reference.blocks = EViTOneLayer(reference.blocks, layer, k, fuse)
    x = images()
    with torch.no_grad():
        got = reduce(model, "evit", keep=keep, layers=[layer], fuse=fuse)(x)
        want = reference(x)
        full = model(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    assert not torch.allclose(got, full, atol=1e-3)


def test_evit_fused_and_plain_attention_agree():
    x = images()
    fused_model = deit_96(fused=True)
    assert all(b.attn.fused_attn for b in fused_model.blocks)
    with torch.no_grad():
        fused = reduce(fused_model, "evit", keep=0.5)(x)
        plain = reduce(deit_96(fused=False), "evit", keep=0.5)(x)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), atol=1e-5)


def test_evit_keep_one_is_no_reduction_and_the_adapter_is_transparent():
    assert not plan("evit", {"keep": 1.0}).reduces
    model = deit_96(fused=True)
    x = images()
    with torch.no_grad():
        np.testing.assert_array_equal(reduce(model, "evit", keep=1.0)(x).numpy(), model(x).numpy())


def test_evit_proportional_attention_only_matters_with_a_fused_token():
    x = images()
    model = deit_96(fused=True)
    with torch.no_grad():
        outs = {
            (fuse, pa): reduce(model, "evit", keep=0.5, fuse=fuse, proportional_attention=pa)(x)
            for fuse in (True, False)
            for pa in (True, False)
        }
    assert not torch.allclose(outs[True, True], outs[True, False], atol=1e-4)
    np.testing.assert_array_equal(outs[False, True].numpy(), outs[False, False].numpy())
    assert not plan("evit", {"fuse": False}).reducer.proportional_attention


# --------------------------------------------------------------------------------------------
# EViT plans and configs
# --------------------------------------------------------------------------------------------


def test_evit_default_plan_on_deit():
    # keep 0.7 at zero-based layers 3, 6, 9 of 197 tokens (CLS + 196): 138, 98 and 70 kept, each
    # time plus CLS and a fused token (which later layers rank like any other token).
    p = plan("evit", {})
    assert p.tokens_per_layer == (197,) * 3 + (140,) * 3 + (100,) * 3 + (72,) * 3
    assert [layer.get("k") for layer in p.layers if layer] == [138, 98, 70]
    assert [i for i, layer in enumerate(p.layers) if layer] == [3, 6, 9]
    assert all(
        layer == {"op": "TopKSelect", "k": layer["k"], "protected": 1, "fuse": 1}
        for layer in p.layers
        if layer
    )
    # Without the fused token: 138 of 196, 97 of 138, 68 of 97.
    no_fuse = plan("evit", {"fuse": False})
    assert no_fuse.tokens_per_layer == (197,) * 3 + (139,) * 3 + (98,) * 3 + (69,) * 3


def test_evit_keep_is_exact_for_exact_products():
    # 0.7 * 10 is 7.000000000000001 in floating point; EViT keeps 7 tokens, not 8.
    p = plan("evit", {"keep": 0.7, "layers": [0]}, ModelGeometry(1, 11, 1))
    assert p.layers[0]["k"] == 7


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"keep": 0}, "'keep' must be in \\(0, 1\\]"),
        ({"keep": 1.5}, "'keep' must be in \\(0, 1\\]"),
        ({"keep": -0.1}, "'keep'"),
        ({"keep": "0.5"}, "key 'keep' must be float"),
        ({"keep": 0.5, "r": 4}, "unknown key\\(s\\) 'r'"),
        ({"layers": [12]}, "'layers' has \\[12\\] outside .* 0..11"),
        ({"layers": [-1, 3]}, "'layers' has \\[-1\\]"),
        ({"layers": []}, "'layers' must name at least one layer"),
        ({"layers": [3, 3]}, "'layers' repeats"),
        ({"layers": 3}, "key 'layers' must be"),
        ({"fuse": 1}, "key 'fuse' must be bool"),
    ],
)
def test_evit_invalid_config_names_the_key(params, message):
    with pytest.raises(ConfigError, match=message):
        plan("evit", params)


def test_evit_needs_a_cls_token():
    with pytest.raises(ConfigError, match="no CLS token"):
        plan("evit", {}, ModelGeometry(12, 196, 0))


def test_packaged_profiles_plan_on_deit():
    profiles = list_reduction_profiles()
    assert {"deit-small-evit-keep0.7", "evit-keep0.5", "deit-small-zero-tprune"} <= set(profiles)
    for name in profiles:
        config = load_reduction_config(name)
        assert config.description, name
        assert plan(config.method, config.params).reduces, name
    assert plan("evit", load_reduction_config("evit-keep0.5").params).tokens_per_layer[-1] == 28


# --------------------------------------------------------------------------------------------
# Zero-TPrune
# --------------------------------------------------------------------------------------------


class ZeroTPruneOneLayer(nn.Module):
    """Zero-TPrune at one layer, from the paper's description, on timm's plain attention path.

    Attention probabilities and keys are read from timm's attention (attn_drop's input, k_norm's
    output); PageRank, ranking and matching are done in float64 with per-item Python loops.
    """

    def __init__(self, blocks: nn.Sequential, layer: int, pruned: tuple[int, int]) -> None:
        super().__init__()
        self.blocks, self.layer, self.pruned = blocks, layer, pruned

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            seen: list[torch.Tensor] = []
            hooks = [
                m.register_forward_hook(lambda m, a, out, seen=seen: seen.append(out))
                for m in (block.attn.k_norm, block.attn.attn_drop)
            ]
            x = x + block.ls1(block.attn(block.norm1(x)))
            for hook in hooks:
                hook.remove()
            if i == self.layer:
                keys, probs = seen
                x = self._prune(x, probs.mean(dim=1).double().numpy(), keys.mean(dim=1).numpy())
            x = x + block.ls2(block.mlp(block.norm2(x)))
        return x

    def _prune(self, x: torch.Tensor, graph: np.ndarray, keys: np.ndarray) -> torch.Tensor:
        r_i, r_s = self.pruned
        n = x.shape[1]
        rows = []
        for b in range(x.shape[0]):
            s = np.full(n, 1.0 / n)
            for _ in range(10):
                s = np.array([sum(graph[b, j, t] * s[j] for j in range(n)) for t in range(n)])
            ranked = sorted(range(1, n), key=lambda t, s=s: (-s[t], t))
            survivors = ranked[: n - 1 - r_i]
            half = (len(survivors) + 1) // 2
            group_b, group_a = survivors[:half], survivors[half:]
            unit = keys[b] / np.linalg.norm(keys[b], axis=-1, keepdims=True)
            best = {t: max(float(unit[t] @ unit[u]) for u in group_b) for t in group_a}
            kept_a = sorted(group_a, key=lambda t, best=best: (best[t], t))[: len(group_a) - r_s]
            rows.append(x[b, [0, *sorted(group_b + kept_a)]])
        return torch.stack(rows)


@pytest.mark.parametrize("pruned", [(5, 6), (7, 0), (0, 9)])
def test_zero_tprune_equals_an_eager_reimplementation(pruned):
    model = deit_96(fused=False)
    layer = 1
    counts = {key: [0] * 12 for key in ("importance", "similarity")}
    counts["importance"][layer], counts["similarity"][layer] = pruned
    reference = copy.deepcopy(model)
    reference.blocks = ZeroTPruneOneLayer(reference.blocks, layer, pruned)
    x = images()
    with torch.no_grad():
        got = reduce(model, "zero_tprune", **counts)(x)
        want = reference(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_zero_tprune_fused_and_plain_attention_agree():
    x = images()
    with torch.no_grad():
        fused = reduce(deit_96(fused=True), "zero_tprune", importance=2, similarity=1)(x)
        plain = reduce(deit_96(fused=False), "zero_tprune", importance=2, similarity=1)(x)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), atol=1e-5)


def test_zero_tprune_plan_clamps_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="trimformer"):
        p = plan("zero_tprune", {"importance": 3, "similarity": 2}, ModelGeometry(4, 11, 1))
    # 10 unprotected: 3+2 -> 5 left; 5: 3+1 (1 survivor has no A half) -> 1 left; then nothing.
    assert p.params["pruned_per_layer"] == [[3, 2], [3, 1], [0, 0], [0, 0]]
    assert p.tokens_per_layer == (6, 2, 2, 2)
    assert [layer.get("k") for layer in p.layers] == [5, 1, None, None]
    warnings = [r for r in caplog.records if "cannot prune" in r.getMessage()]
    assert len(warnings) == 1 and "1: 3+2->3+1" in warnings[0].getMessage()


def test_zero_tprune_default_plan_on_deit():
    p = plan("zero_tprune", {})
    assert p.tokens_per_layer == tuple(197 - 12 * (i + 1) for i in range(12))
    assert all(
        layer == {"op": "TopKSelect", "k": layer["k"], "protected": 1, "fuse": 0}
        for layer in p.layers
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"importance": -1}, "'importance' must be >= 0"),
        ({"similarity": [1, 2]}, "'similarity' lists 2 values but the model has 12"),
        ({"iterations": 0}, "'iterations' must be in 1..100"),
        ({"keep": 0.5}, "unknown key\\(s\\) 'keep'"),
    ],
)
def test_zero_tprune_invalid_config_names_the_key(params, message):
    with pytest.raises(ConfigError, match=message):
        plan("zero_tprune", params)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def test_zero_tprune_graph_matches_eager_at_any_batch_with_registers():
    # Five protected tokens (CLS + 4 registers); EViT's bundle is checked likewise via the CLI.
    params = {"importance": [8, 4, 0], "similarity": [6, 0, 5]}
    model = reduce(tiny_vit("registers", fused=True), "zero_tprune", **params)
    adapter = adapter_for(model)
    with adapter.export_patches(model):
        graph, ops = export_onnx(model, GraphIO.image(images(2, 32)), 20)
    assert ops == {"TopKSelect": 1}
    onnx.checker.check_model(graph, full_check=True)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {"pixel_values": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=VERIFY_ATOL)


@pytest.fixture(scope="module")
def evit_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """DeiT-Ti at 224 px with the packaged DeiT-S EViT profile, exported and verified."""
    path = tmp_path_factory.mktemp("evit") / "deit-ti-evit"
    config = load_reduction_config("deit-small-evit-keep0.7")
    return path, export_bundle(ExportRequest(DEIT, path, config))


def test_evit_export_verifies_and_records_the_plan(evit_bundle):
    path, manifest = evit_bundle
    errors = manifest["verify"]["max_abs_error"]
    assert errors["model"] <= VERIFY_ATOL and errors["full"] <= VERIFY_ATOL
    reduction = manifest["reduction"]
    assert reduction["method"] == "evit"
    assert reduction["config"] == "deit-small-evit-keep0.7"
    assert reduction["tokens_per_layer"] == [197] * 3 + [140] * 3 + [100] * 3 + [72] * 3
    assert reduction["params"] == {
        "keep": 0.7,
        "layers": [3, 6, 9],
        "fuse": True,
        "proportional_attention": False,
    }
    assert manifest["ops"] == {"TopKSelect": 1}
    ratio = manifest["graphs"]["model"]["flops"] / manifest["graphs"]["full"]["flops"]
    assert 0.6 < ratio < 0.7
    graph = onnx.load(path / "model.onnx", load_external_data=False)
    calls = [n for n in graph.graph.node if n.domain == "trimformer"]
    assert [n.op_type for n in calls] == ["TopKSelect"] * 3
    assert [{a.name: a.i for a in n.attribute} for n in calls] == [
        {"k": k, "protected": 1, "fuse": 1} for k in (138, 98, 70)
    ]
    assert [f.name for f in graph.functions] == ["TopKSelect"]


def test_cli_exports_evit_with_overrides(tmp_path):
    # Known weights via --checkpoint, so the bundle can be compared with eager torch at any batch.
    model = deit_96(fused=True)
    checkpoint = tmp_path / "deit.pt"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "b"
    args = ["export", DEIT, "--checkpoint", str(checkpoint), "--image-size", "96"]
    overrides = ["--method", "evit", "--keep", "0.5", "--layers", "2,5"]
    result = CliRunner().invoke(cli, [*args, *overrides, "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reduction"]["params"]["keep"] == 0.5
    assert manifest["reduction"]["params"]["layers"] == [2, 5]
    # 37 tokens: keep 18 of 36 (+CLS +fused), then 10 of 19.
    assert manifest["reduction"]["tokens_per_layer"] == [37] * 2 + [20] * 3 + [12] * 7
    assert manifest["verify"]["max_abs_error"]["model"] <= VERIFY_ATOL
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    reduced = reduce(model, "evit", keep=0.5, layers=[2, 5])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 96, 96, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {"pixel_values": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, reduced(x).numpy(), atol=VERIFY_ATOL)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "tome", "--keep", "0.5"], "unknown key(s) 'keep'"),
        (["--method", "evit", "--layers", "3,x"], "--layers '3,x'"),
        (["--keep", "0.5"], "need a method"),
        (["--method", "evit", "--keep", "0"], "'keep' must be in (0, 1]"),
    ],
)
def test_cli_rejects_bad_overrides(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["export", DEIT, *args, "-o", str(tmp_path / "b")])
    assert isinstance(result.exception, UsageError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "b").exists()

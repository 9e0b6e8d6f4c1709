"""DivPrune, tail drop and keep-subset: eager reimplementations, plans, configs, export, CLI."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_vit
from test_graph_passes import check_passes_on_exported
from test_methods import DEIT, deit_96, images, plan, reduce
from test_op_faces import naive_diverse_select
from torch import nn

from trimformer.cli import cli
from trimformer.errors import UsageError
from trimformer.exporter import VERIFY_ATOL
from trimformer.exporter.onnx_export import export_onnx
from trimformer.graph_passes import PLUGIN_DOMAIN, run_passes
from trimformer.graph_passes.lint import PLUGIN
from trimformer.methods import ConfigError, ModelGeometry
from trimformer.models import GraphIO, adapter_for
from trimformer.profiles import load_reduction_config

Select = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SelectAtOneLayer(nn.Module):
    """timm blocks on the plain attention path with ``select(x, keys)`` at one block, between
    its attention residual and its MLP; keys (k_norm's output, mean over heads) via a hook."""

    def __init__(self, blocks: nn.Sequential, layer: int, select: Select) -> None:
        super().__init__()
        self.blocks, self.layer, self.select = blocks, layer, select

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            keys: list[torch.Tensor] = []
            hook = block.attn.k_norm.register_forward_hook(
                lambda m, a, out, keys=keys: keys.append(out)
            )
            x = x + block.ls1(block.attn(block.norm1(x)))
            hook.remove()
            if i == self.layer:
                x = self.select(x, keys[0].mean(dim=1))
            x = x + block.ls2(block.mlp(block.norm2(x)))
        return x


def assert_equals_reference(at: int, select: Select, method: str, **params) -> None:
    model = deit_96(fused=False)
    reference = copy.deepcopy(model)
    reference.blocks = SelectAtOneLayer(reference.blocks, at, select)
    x = images()
    with torch.no_grad():
        got = reduce(model, method, **params)(x)
        want = reference(x)
        full = model(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    assert not torch.allclose(got, full, atol=1e-3)


# --------------------------------------------------------------------------------------------
# Against eager reimplementations (DeiT-Ti at 96 px: CLS + 36 patches)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["hidden", "keys"])
def test_divprune_equals_an_eager_reimplementation(metric):
    # keep 0.5 of 36 patches: the 18 chosen by the naive greedy max-min loop (float64).
    def select(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        features = (x if metric == "hidden" else keys).numpy()
        ones = np.ones((*x.shape[:2], 1), dtype=np.float32)
        kept, _ = naive_diverse_select(x.numpy(), features, ones, 18, 1)
        return torch.from_numpy(kept.astype(np.float32))

    assert_equals_reference(2, select, "divprune", keep=0.5, layers=[2], metric=metric)


def test_tail_drop_equals_slicing():
    assert_equals_reference(1, lambda x, _: x[:, : 1 + 12], "tail_drop", k=12, layers=[1])


def test_keep_subset_equals_indexing():
    positions = [35, 0, 7, 14, 20]
    rows = [0, *(1 + p for p in sorted(positions))]  # CLS, then the positions in order
    assert_equals_reference(3, lambda x, _: x[:, rows], "keep_subset", positions=positions, layer=3)


def test_divprune_fused_and_plain_attention_agree():
    x = images()
    with torch.no_grad():
        fused = reduce(deit_96(fused=True), "divprune", keep=0.3, layers=[1, 5])(x)
        plain = reduce(deit_96(fused=False), "divprune", keep=0.3, layers=[1, 5])(x)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Plans and configs
# --------------------------------------------------------------------------------------------


def test_default_plans_on_deit():
    # DivPrune and tail drop: half of the 196 patches at the middle block (zero-based 6).
    for method, op in [("divprune", "DiverseSelect"), ("tail_drop", "TopKSelect")]:
        p = plan(method, {})
        assert p.tokens_per_layer == (197,) * 6 + (99,) * 6, method
        assert [i for i, layer in enumerate(p.layers) if layer] == [6]
        assert p.layers[6]["op"] == op and p.layers[6]["k"] == 98
    assert plan("divprune", {}).params == {
        "keep": 0.5,
        "k": None,
        "layers": [6],
        "metric": "hidden",
    }
    assert plan("tail_drop", {}).layers[6] == {
        "op": "TopKSelect",
        "k": 98,
        "protected": 1,
        "fuse": 0,
    }
    # The middle block of any depth.
    assert plan("divprune", {}, ModelGeometry(3, 17, 1)).tokens_per_layer == (17, 9, 9)


def test_k_is_a_count_per_layer_and_layers_that_keep_all_are_skipped():
    p = plan("tail_drop", {"k": 50, "layers": [2, 6]})
    assert p.tokens_per_layer == (197,) * 2 + (51,) * 10
    assert [i for i, layer in enumerate(p.layers) if layer] == [2]  # 50 of 50: nothing to drop
    p = plan("divprune", {"keep": 0.5, "layers": [3, 9]})
    assert [layer["k"] for layer in p.layers if layer] == [98, 49]
    assert not plan("divprune", {"keep": 1.0}).reduces
    assert not plan("tail_drop", {"k": 500}).reduces


def test_keep_subset_plan_and_profiles():
    p = plan("keep_subset", {"positions": [5, 1, 9]}, ModelGeometry(4, 17, 1))
    assert p.tokens_per_layer == (17, 17, 4, 4)
    assert p.params == {"positions": [1, 5, 9], "layer": 2}
    config = load_reduction_config("deit-small-keep-subset-center")
    assert plan(config.method, config.params).tokens_per_layer == (197,) * 6 + (101,) * 6
    for name in ("deit-small-divprune-keep0.5", "deit-small-tail-drop-keep0.5"):
        config = load_reduction_config(name)
        assert plan(config.method, config.params).tokens_per_layer[-1] == 99, name


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("divprune", {"keep": 0.5, "k": 10}, "give key 'keep' \\(a share\\) or 'k'"),
        ("divprune", {"keep": 0}, "'keep' must be in \\(0, 1\\]"),
        ("divprune", {"k": 0}, "'k' must be >= 1"),
        ("divprune", {"layers": [12]}, "'layers' has \\[12\\] outside .* 0..11"),
        ("divprune", {"layers": []}, "'layers' must name at least one layer"),
        ("divprune", {"layers": [4, 4]}, "'layers' repeats"),
        ("divprune", {"metric": "queries"}, "key 'metric' must be"),
        ("divprune", {"r": 3}, "unknown key\\(s\\) '?r"),
        ("tail_drop", {"keep": 1.5}, "tail_drop: key 'keep' must be in"),
        ("tail_drop", {"metric": "keys"}, "unknown key\\(s\\) '?metric"),
        ("keep_subset", {}, "'positions' must list"),
        ("keep_subset", {"positions": [1, 1]}, "'positions' repeats"),
        ("keep_subset", {"positions": [-1]}, "'positions' must be >= 0"),
        ("keep_subset", {"positions": [196]}, "has 196, but the model has 196 unprotected"),
        ("keep_subset", {"positions": [1], "layer": 12}, "'layer' has \\[12\\] outside"),
        ("keep_subset", {"positions": [1], "layers": [3]}, "unknown key\\(s\\) '?layers"),
    ],
)
def test_invalid_config_names_the_key(method, params, message):
    with pytest.raises(ConfigError, match=message):
        plan(method, params)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "op"),
    [
        ("divprune", {"keep": 0.4, "layers": [0, 2], "metric": "keys"}, "DiverseSelect"),
        ("tail_drop", {"k": 20, "layers": [1]}, "TopKSelect"),
        ("keep_subset", {"positions": [0, 9, 31, 63], "layer": 1}, "TopKSelect"),
    ],
)
def test_graph_matches_eager_at_any_batch_with_registers(method, params, op):
    # Five protected tokens (CLS + 4 registers) before 64 patches.
    model = reduce(tiny_vit("registers", fused=True), method, **params)
    adapter = adapter_for(model)
    with adapter.export_patches(model):
        graph, ops = export_onnx(model, GraphIO.image(images(2, 32)), 20)
    assert ops == {op: 1}
    onnx.checker.check_model(graph, full_check=True)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {"pixel_values": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=VERIFY_ATOL)
    if op == "DiverseSelect":  # its function body holds a Loop: every graph pass must cope
        check_passes_on_exported(graph)


def test_cli_exports_divprune_verified(tmp_path):
    # timm's test_vit (6 blocks, dim 64) at 64 px: CLS + 16 patches, exported and verified.
    out = tmp_path / "b"
    args = ["export", "test_vit", "--image-size", "64", "--method", "divprune", "--keep", "0.25"]
    result = CliRunner().invoke(cli, [*args, "--layers", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reduction"]["tokens_per_layer"] == [17, 5, 5, 5, 5, 5]
    assert manifest["reduction"]["layers"][1] == {"op": "DiverseSelect", "k": 4, "protected": 1}
    assert manifest["ops"] == {"DiverseSelect": 1}
    assert manifest["verify"]["max_abs_error"]["model"] <= VERIFY_ATOL
    graph = onnx.load(out / "model.onnx", load_external_data=False)
    assert [f.name for f in graph.functions] == ["DiverseSelect"]
    # The bundle's graph for TensorRT: the call becomes the DiverseSelect plugin, lint knows it.
    plugged, results = run_passes(onnx.load(out / "model.onnx"), ["to-plugins", "lint"])
    assert results[0].counts["plugins"] == 1 and results[1].report.totals()[PLUGIN] == 1
    assert [(n.domain, n.op_type) for n in plugged.graph.node if n.domain == PLUGIN_DOMAIN] == [
        (PLUGIN_DOMAIN, "DiverseSelect")
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "keep_subset"], "'positions' must list"),
        (["--method", "divprune", "--r", "3"], "unknown key(s)"),
        (["--config", "deit-small-divprune-keep0.5", "--keep", "2"], "'keep' must be in (0, 1]"),
    ],
)
def test_cli_rejects_bad_configs(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["export", DEIT, *args, "-o", str(tmp_path / "b")])
    assert isinstance(result.exception, UsageError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "b").exists()

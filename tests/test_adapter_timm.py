"""The timm ViT adapter: un-reduced equals the original, fused == plain, exported graph == eager."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import tiny_vit

from trimformer.exporter.onnx_export import export_onnx
from trimformer.methods import ModelGeometry, get_method, parse_params
from trimformer.models import AdapterError, GraphIO, adapter_for

KINDS = ["vit", "distilled", "registers"]


def reduce(model: torch.nn.Module, **params) -> torch.nn.Module:
    adapter = adapter_for(model)
    geometry = ModelGeometry(
        adapter.num_layers(model), adapter.num_tokens(model), adapter.protected_tokens(model)
    )
    method = get_method("tome")
    plan = method.plan(parse_params("tome", method.params_type, params), geometry)
    return adapter.insert(model, plan.reducer).eval()


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_unreduced_equals_original(kind, fused):
    model = tiny_vit(kind, fused)
    x = images()
    with torch.no_grad():
        np.testing.assert_array_equal(reduce(model, r=0)(x).numpy(), model(x).numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_protected_tokens(kind):
    model = tiny_vit(kind)
    assert (
        adapter_for(model).protected_tokens(model)
        == {"vit": 1, "distilled": 2, "registers": 5}[kind]
    )


@pytest.mark.parametrize("kind", KINDS)
def test_fused_and_plain_attention_agree_when_reduced(kind):
    x = images()
    with torch.no_grad():
        fused = reduce(tiny_vit(kind, fused=True), r=6)(x)
        plain = reduce(tiny_vit(kind, fused=False), r=6)(x)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), atol=1e-5)


def test_reduction_changes_the_output_and_the_original_is_untouched():
    model = tiny_vit()
    x = images()
    with torch.no_grad():
        before = model(x)
        reduced = reduce(model, r=6)(x)
        after = model(x)
    assert not torch.allclose(reduced, before, atol=1e-3)
    np.testing.assert_array_equal(before.numpy(), after.numpy())
    assert all(type(b.attn.k_norm).__name__ == "Identity" for b in model.blocks)


def test_proportional_attention_is_applied():
    x = images()
    with torch.no_grad():
        with_bias = reduce(tiny_vit(), r=6, proportional_attention=True)(x)
        without = reduce(tiny_vit(), r=6, proportional_attention=False)(x)
    assert not torch.allclose(with_bias, without, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_exported_graph_matches_eager_fused_model(kind):
    """Export from a model on timm's fused path; the graph must equal the eager fused model."""
    model = reduce(tiny_vit(kind, fused=True), r=[6, 4, 2])
    adapter = adapter_for(model)
    x = images()
    with adapter.export_patches(model):
        graph, ops = export_onnx(model, GraphIO.image(x), 20)
    assert all(b.attn.fused_attn for b in model.blocks), "export patches must be undone"
    assert ops == {"BipartiteMerge": 2}
    calls = [n for n in graph.graph.node if n.domain == "trimformer"]
    assert [a.i for n in calls for a in n.attribute if a.name == "r"] == [6, 4, 2]
    assert [f.name for f in graph.functions] == ["BipartiteMerge"]
    onnx.checker.check_model(graph, full_check=True)
    session = ort.InferenceSession(graph.SerializeToString())
    for batch in (1, 3):
        xb = images(batch)
        (got,) = session.run(None, {"pixel_values": xb.numpy()})
        with torch.no_grad():
            want = model(xb).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_average_pooling_models_are_refused():
    model = tiny_vit("gap")
    with pytest.raises(AdapterError, match="global_pool='avg'"):
        reduce(model, r=2)


def test_non_vit_model_names_supported_families():
    with pytest.raises(AdapterError, match="timm-vit"):
        adapter_for(torch.nn.Linear(2, 2))


def test_layers_that_cannot_merge_warn_once(caplog):
    model = tiny_vit(depth=3)  # 64 patches + CLS
    with caplog.at_level(logging.WARNING, logger="trimformer"):
        reduce(model, r=30)
    warnings = [r for r in caplog.records if "cannot remove" in r.getMessage()]
    assert len(warnings) == 1
    assert "1: 30->17, 2: 30->8" in warnings[0].getMessage()

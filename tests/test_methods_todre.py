"""ToDRE: diverse subset then query relevance, against a naive reference; the query input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_methods import DEIT, deit_96, images, plan
from test_op_faces import naive_diverse_select, naive_topk_select

from trimformer.errors import UsageError
from trimformer.exporter import VERIFY_ATOL, ExportRequest, export_bundle
from trimformer.methods import ConfigError, ModelGeometry, with_method_inputs
from trimformer.methods.todre import QUERY_INPUT
from trimformer.models import AttentionTaps, GraphIO, TokenState, adapter_for
from trimformer.profiles import ReductionConfig, load_reduction_config
from trimformer.runtime import load


def naive_relevance(x: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine of every token to its sample's query, one value at a time, in float64."""
    batch, n_tokens, _ = x.shape
    out = np.zeros((batch, n_tokens))
    for b in range(batch):
        q_norm = max(math.sqrt(sum(float(v) ** 2 for v in query[b])), 1e-12)
        for t in range(n_tokens):
            t_norm = max(math.sqrt(sum(float(v) ** 2 for v in x[b, t])), 1e-12)
            dot = sum(float(a) * float(c) for a, c in zip(x[b, t], query[b], strict=True))
            out[b, t] = dot / (t_norm * q_norm)
    return out


def naive_todre(x, size, query, k, kept, protected):
    """Stage 1 (greedy k-center on the tokens), then stage 2 (top relevance), naively."""
    x1, s1 = naive_diverse_select(x, x, size, k, protected)
    if query is None:
        return x1, s1
    return naive_topk_select(x1, naive_relevance(x1, query), s1, kept, protected, 0)


def taps_for(x: torch.Tensor) -> AttentionTaps:
    b, n, c = x.shape
    keys = torch.randn(b, 1, n, c)
    return AttentionTaps(keys, keys, 1.0)


GEOMETRY = ModelGeometry(num_layers=2, num_tokens=17, protected=1, dim=8)


@pytest.mark.parametrize(
    ("params", "expected_tokens"),
    [
        ({"k": 8, "layers": [0]}, 9),  # diversity only
        ({"k": 8, "layers": [0], "query": True}, 5),  # then half of them by relevance
        ({"k": 16, "layers": [0], "query": True, "relevant": 0.25}, 5),  # k = N: stage 2 only
        ({"k": 1, "layers": [0], "query": True}, 2),  # k = 1: relevance keeps everything left
    ],
)
def test_todre_equals_the_naive_reference(params, expected_tokens):
    p = plan("todre", params, GEOMETRY)
    assert p.tokens_per_layer == (expected_tokens, expected_tokens)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 17, 8, generator=generator)
    size = torch.ones(3, 17, 1)
    query = torch.randn(3, 8, generator=generator) if params.get("query") else None
    if query is not None:
        p.slot.values = {QUERY_INPUT: query}
    got, state = p.reducer(0, x, TokenState(), taps_for(x))
    k = min(params["k"], 16)
    kept = expected_tokens - 1
    want_x, want_s = naive_todre(
        x.numpy(), size.numpy(), None if query is None else query.numpy(), k, kept, 1
    )
    np.testing.assert_allclose(got.numpy(), want_x, atol=1e-6)
    np.testing.assert_allclose(state.sizes_or_ones(got).numpy(), want_s)


def test_the_token_equal_to_the_query_survives_relevance():
    p = plan("todre", {"k": 8, "layers": [0], "query": True, "relevant": 0.2}, GEOMETRY)
    x = torch.randn(2, 17, 8, generator=torch.Generator().manual_seed(5))
    diverse, _ = torch.ops.trimformer.diverse_select(x, x, torch.ones(2, 17, 1), 8, 1)
    target = diverse[:, 4]  # one of the diverse tokens, per sample
    p.slot.values = {QUERY_INPUT: target * 3.0}
    got, _ = p.reducer(0, x, TokenState(), taps_for(x))
    assert got.shape == (2, 3, 8)
    for b in range(2):
        assert any(torch.equal(row, target[b]) for row in got[b, 1:])


def test_all_equal_tokens_and_ties_are_deterministic():
    p = plan("todre", {"k": 4, "layers": [0], "query": True}, GEOMETRY)
    same = torch.ones(1, 17, 8)
    p.slot.values = {QUERY_INPUT: torch.ones(1, 8)}
    got, _ = p.reducer(0, same, TokenState(), taps_for(same))
    want, _ = naive_todre(same.numpy(), np.ones((1, 17, 1)), np.ones((1, 8)), 4, 2, 1)
    np.testing.assert_allclose(got.numpy(), want)


def test_query_input_is_required_and_configs_are_checked():
    p = plan("todre", {"k": 4, "layers": [0], "query": True}, GEOMETRY)
    x = torch.randn(1, 17, 8)
    with pytest.raises(RuntimeError, match="'query_embedding' not given"):
        p.reducer(0, x, TokenState(), taps_for(x))
    with pytest.raises(ConfigError, match="'relevant' must be in"):
        plan("todre", {"relevant": 0.0})
    with pytest.raises(ConfigError, match="unknown key"):
        plan("todre", {"r": 3})
    assert load_reduction_config("deit-small-todre-keep0.5").method == "todre"


def test_model_with_query_input_exports_and_matches_torch(tmp_path):
    manifest = export_bundle(
        ExportRequest(
            DEIT,
            tmp_path / "b",
            ReductionConfig("todre", {"keep": 0.5, "layers": [4], "query": True}),
            image_size=96,
        )
    )
    assert manifest["verify"]["max_abs_error"]["model"] <= VERIFY_ATOL
    inputs = manifest["graphs"]["model"]["inputs"]
    assert [(i["name"], i["shape"]) for i in inputs] == [
        ("pixel_values", ["batch", 3, 96, 96]),
        (QUERY_INPUT, ["batch", 192]),
    ]
    assert manifest["reduction"]["tokens_per_layer"][4] == 1 + 9
    session = load(tmp_path / "b")
    model = deit_96(fused=False)
    adapter = adapter_for(model)
    todre = plan(
        "todre", {"keep": 0.5, "layers": [4], "query": True}, ModelGeometry.of(adapter, model)
    )
    reduced, _ = with_method_inputs(
        adapter.insert(model, todre.reducer), todre, GraphIO.image(images(3))
    )
    for batch in (1, 3):
        x = images(batch)
        query = torch.randn(batch, 192, generator=torch.Generator().manual_seed(batch))
        got = session.run({"pixel_values": x.numpy(), QUERY_INPUT: query.numpy()})["logits"]
        with torch.no_grad():
            want = reduced(x, query).numpy()
        np.testing.assert_allclose(got, want, atol=VERIFY_ATOL)
    with pytest.raises(UsageError, match="missing input 'query_embedding'"):
        session.run({"pixel_values": images(1).numpy()})

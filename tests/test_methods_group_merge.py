"""Subtoken group merge: naive reference, identity groups == full model, group_ids exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_text_folder
from test_methods import DEIT, deit_96, images, plan

from trimformer.exporter import VERIFY_ATOL, ExportRequest, export_bundle
from trimformer.methods import ConfigError, ModelGeometry, with_method_inputs
from trimformer.methods.group_merge import GROUP_INPUT, merge_groups
from trimformer.models import GraphIO, adapter_for
from trimformer.models.loading import ModelOptions, load_model
from trimformer.profiles import ReductionConfig
from trimformer.runtime import load


def naive_merge_groups(x, sizes, ids, groups, protected):
    """Group means one token and one channel at a time, in float64."""
    batch, n_tokens, channels = x.shape
    out_x = np.zeros((batch, protected + groups, channels))
    out_s = np.zeros((batch, protected + groups, 1))
    for b in range(batch):
        for t in range(protected):
            out_x[b, t] = x[b, t]
            out_s[b, t] = sizes[b, t]
        for g in range(groups):
            members = [t for t in range(protected, n_tokens) if ids[b, t] == g]
            total = sum(float(sizes[b, t, 0]) for t in members)
            out_s[b, protected + g, 0] = total
            for c in range(channels):
                weighted = sum(float(x[b, t, c]) * float(sizes[b, t, 0]) for t in members)
                out_x[b, protected + g, c] = weighted / total if total else 0.0
    return out_x, out_s


@pytest.mark.parametrize(("groups", "protected"), [(1, 1), (4, 1), (6, 0), (11, 2)])
def test_merge_groups_equals_the_naive_reference(groups, protected):
    generator = torch.Generator().manual_seed(groups)
    x = torch.randn(3, 13, 5, generator=generator)
    sizes = torch.randint(1, 4, (3, 13, 1), generator=generator).float()
    ids = torch.randint(-1, groups, (3, 13), generator=generator)
    ids[0, protected:] = 0  # every token in one group
    ids[1, protected:] = -1  # every token dropped: all groups empty
    got_x, got_s = merge_groups(x, sizes, ids, groups, protected)
    want_x, want_s = naive_merge_groups(x.numpy(), sizes.numpy(), ids.numpy(), groups, protected)
    np.testing.assert_allclose(got_x.numpy(), want_x, atol=1e-6)
    np.testing.assert_allclose(got_s.numpy(), want_s)


def test_plan_counts_and_bad_configs():
    geometry = ModelGeometry(num_layers=3, num_tokens=17, protected=1)
    p = plan("group_merge", {"groups": 5, "layer": 1}, geometry)
    assert p.tokens_per_layer == (17, 6, 6)
    assert [i.name for i in p.inputs] == [GROUP_INPUT]
    assert plan("group_merge", {}, geometry).params["groups"] == 8
    with pytest.raises(ConfigError, match="more than the 16 unprotected tokens"):
        plan("group_merge", {"groups": 17}, geometry)
    with pytest.raises(ConfigError, match="'layer' has \\[3\\] outside"):
        plan("group_merge", {"layer": 3}, geometry)


SEQ = 12


def test_one_group_per_real_token_reproduces_the_full_text_model(tmp_path: Path):
    """Identity groups with padding dropped: the merged model is the full model, exactly."""
    folder = tiny_text_folder(tmp_path / "st")
    loaded = load_model(str(folder), ModelOptions(seq_len=SEQ))
    adapter = adapter_for(loaded.model)
    merge = plan("group_merge", {"groups": SEQ - 1}, ModelGeometry.of(adapter, loaded.model))
    reduced, graph_io = with_method_inputs(
        adapter.insert(loaded.model, merge.reducer), merge, loaded.io
    )
    assert list(graph_io.example) == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
        GROUP_INPUT,
    ]
    ids = torch.randint(5, 20, (2, SEQ))
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, 7:] = 0
    groups = torch.arange(-1, SEQ - 1).expand(2, -1).clone()
    groups[mask == 0] = -1
    with torch.no_grad():
        want = loaded.model(ids, mask, torch.zeros_like(ids))
        got = reduced(ids, mask, torch.zeros_like(ids), groups)
        assert torch.allclose(got, want, atol=1e-5)
        # Merging pairs of tokens changes the embedding: the test above can fail.
        pairs = groups.clamp_min(0) // 2
        assert not torch.allclose(reduced(ids, mask, torch.zeros_like(ids), pairs), want, atol=1e-3)


def test_text_export_with_group_ids_matches_torch(tmp_path: Path):
    folder = tiny_text_folder(tmp_path / "st")
    manifest = export_bundle(
        ExportRequest(
            str(folder),
            tmp_path / "b",
            ReductionConfig("group_merge", {"groups": 6}),
            seq_len=SEQ,
        )
    )
    assert manifest["verify"]["max_abs_error"]["model"] <= VERIFY_ATOL
    inputs = {i["name"]: i for i in manifest["graphs"]["model"]["inputs"]}
    assert inputs[GROUP_INPUT]["shape"] == ["batch", SEQ]
    assert inputs[GROUP_INPUT]["dtype"] == "int64"
    assert manifest["reduction"]["tokens_per_layer"] == [7, 7]


def test_vit_export_with_group_ids_matches_torch(tmp_path: Path):
    manifest = export_bundle(
        ExportRequest(
            DEIT,
            tmp_path / "b",
            ReductionConfig("group_merge", {"groups": 9, "layer": 2}),
            image_size=96,
        )
    )
    assert manifest["verify"]["max_abs_error"]["model"] <= VERIFY_ATOL
    session = load(tmp_path / "b")
    # 2x2 superpixels of the 6x6 patch grid: 9 groups of 4 patches.
    grid = torch.arange(36).reshape(6, 6)
    superpixel = ((grid // 6) // 2) * 3 + (grid % 6) // 2
    ids = torch.cat([torch.tensor([-1]), superpixel.flatten()]).expand(2, -1).contiguous()
    x = images(2)
    logits = session.run({"pixel_values": x.numpy(), GROUP_INPUT: ids.numpy()})["logits"]
    model = deit_96(fused=False)
    adapter = adapter_for(model)
    merge = plan("group_merge", {"groups": 9, "layer": 2}, ModelGeometry.of(adapter, model))
    reduced, _ = with_method_inputs(adapter.insert(model, merge.reducer), merge, GraphIO.image(x))
    with torch.no_grad():
        np.testing.assert_allclose(logits, reduced(x, ids).numpy(), atol=VERIFY_ATOL)

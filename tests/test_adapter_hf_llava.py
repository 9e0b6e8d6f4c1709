"""LLaVA's vision side as one graph: vision tower + projector + visual-token reduction. The
un-reduced export equals transformers' get_image_features; reduced exports equal the patched
torch model and hand the language model fewer visual tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_hf_vision import own_output, tiny_vision_folder

from trimformer.errors import UsageError
from trimformer.exporter import VERIFY_ATOL, ExportRequest, export_bundle
from trimformer.profiles import ReductionConfig
from trimformer.runtime import load

TEXT_HIDDEN = 48  # the tiny LLaVA's language model width


def _pixels() -> np.ndarray:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2)).numpy()


@pytest.mark.parametrize(("layer", "strategy", "tokens"), [(-2, "default", 16), (-1, "full", 17)])
def test_unreduced_export_equals_get_image_features(
    tmp_path: Path, layer: int, strategy: str, tokens: int
) -> None:
    folder = tiny_vision_folder(tmp_path / "llava", "llava", layer, strategy)
    bundle = tmp_path / "bundle"
    manifest = export_bundle(ExportRequest(str(folder), bundle))
    assert manifest["model"]["family"] == "hf-llava"
    outputs = manifest["graphs"]["model"]["outputs"]
    assert outputs == [
        {"name": "image_features", "shape": ["batch", tokens, TEXT_HIDDEN], "dtype": "float32"}
    ]
    pixels = _pixels()
    got = load(bundle).run({"pixel_values": pixels})["image_features"]
    want = own_output(folder, torch.from_numpy(pixels)).numpy()
    assert got.shape == want.shape == (3, tokens, TEXT_HIDDEN)
    assert np.abs(got - want).max() <= VERIFY_ATOL


# Feature layer -2 of a 3-layer tower: 2 layers run, the last (index 1) is the tower's output.
@pytest.mark.parametrize(
    ("method", "params", "visual_tokens"),
    [
        ("divprune", {"k": 4, "layers": [1]}, 4),
        ("hired", {"k": 4, "select_layer": 1}, 4),
        ("tome", {"r": 4}, 8),
        ("evit", {"keep": 0.25, "layers": [1], "fuse": False}, 4),  # top-k by CLS attention
    ],
)
def test_reduced_tower_hands_fewer_tokens_to_the_llm(
    tmp_path: Path, method: str, params: dict, visual_tokens: int
) -> None:
    folder = tiny_vision_folder(tmp_path / "llava", "llava")
    bundle = tmp_path / "bundle"
    manifest = export_bundle(ExportRequest(str(folder), bundle, ReductionConfig(method, params)))
    assert manifest["verify"]["max_abs_error"]["model"] <= VERIFY_ATOL
    assert manifest["reduction"]["tokens_per_layer"][-1] == visual_tokens + 1  # + CLS, dropped
    pixels = _pixels()
    reduced = load(bundle).run({"pixel_values": pixels})["image_features"]
    full = load(bundle, graph="full").run({"pixel_values": pixels})["image_features"]
    assert reduced.shape == (3, visual_tokens, TEXT_HIDDEN)
    assert full.shape == (3, 16, TEXT_HIDDEN)
    if method != "tome":  # a pruned tower keeps some of the full tower's visual tokens as they are
        kept = np.abs(reduced[:, :, None] - full[:, None]).max(axis=-1).min(axis=-1)
        assert kept.max() <= VERIFY_ATOL


def test_unsupported_llava_settings_name_the_fix(tmp_path: Path) -> None:
    folder = tiny_vision_folder(tmp_path / "llava", "llava")
    with pytest.raises(UsageError, match=r"hf-llava models support tome, .*not mrt5_gate"):
        export_bundle(ExportRequest(str(folder), tmp_path / "b", ReductionConfig("mrt5_gate")))
    folder = tiny_vision_folder(tmp_path / "multi", "llava", feature_layer=[-2, -1])
    with pytest.raises(UsageError, match=r"vision_feature_layer \[-2, -1\] concatenates"):
        export_bundle(ExportRequest(str(folder), tmp_path / "b"))
    assert not (tmp_path / "b").exists()

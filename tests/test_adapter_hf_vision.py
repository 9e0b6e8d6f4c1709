"""Hugging Face vision families (ViT, DeiT, CLIP, SigLIP, DINOv2): the un-reduced export equals the
transformers model's own output, reduced exports equal the patched torch model, pooling heads
weigh merged tokens by size, and preprocessing follows the model's image processor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tiny_hf_vision import FAMILY, KINDS, own_output, tiny_vision_folder

from trimformer.cli import cli
from trimformer.errors import UsageError
from trimformer.exporter import VERIFY_ATOL, ExportRequest, export_bundle
from trimformer.models.hf_vision import _attention_pool, _weighted_mean
from trimformer.profiles import ReductionConfig
from trimformer.runtime import load, load_image

OUTPUT = {
    "vit": "logits",
    "vit-model": "pooler_output",
    "deit": "logits",
    "deit-teacher": "logits",
    "clip": "image_embeds",
    "clip-vision": "pooler_output",
    "clip-projection": "image_embeds",
    "siglip": "pooler_output",
    "dinov2": "logits",
    "dinov2-model": "pooler_output",
    "dinov2-registers": "logits",
}


def _pixels(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", KINDS)
def test_unreduced_export_equals_transformers(tmp_path: Path, kind: str) -> None:
    folder = tiny_vision_folder(tmp_path / kind, kind)
    bundle = tmp_path / "bundle"
    manifest = export_bundle(ExportRequest(str(folder), bundle))
    assert manifest["model"]["family"] == FAMILY[kind.split("-")[0]]
    graph = manifest["graphs"]["model"]
    assert graph["inputs"] == [
        {"name": "pixel_values", "shape": ["batch", 3, 32, 32], "dtype": "float32"}
    ]
    assert [o["name"] for o in graph["outputs"]] == [OUTPUT[kind]]
    pixels = _pixels()  # batch 3: not the batch of the example the graph was traced with
    got = load(bundle).run({"pixel_values": pixels.numpy()})[OUTPUT[kind]]
    want = own_output(folder, pixels).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= VERIFY_ATOL


# (kind, method, params, tokens leaving each layer)
REDUCED = [
    ("vit", "tome", {"r": 4}, [13, 9]),
    ("deit-teacher", "zero_tprune", {"importance": 2, "similarity": 2}, [14, 10]),
    ("clip", "tome", {"r": 4}, [13, 9]),
    ("clip-vision", "hired", {"keep": 0.5, "select_layer": 0}, [9, 9]),
    ("siglip", "tome", {"r": 4}, [12, 8]),
    ("dinov2", "mrt5_gate", {"layer": 0}, [17, 17]),
    ("dinov2-registers", "divprune", {"keep": 0.5, "layers": [0]}, [11, 11]),
]


@pytest.mark.parametrize(("kind", "method", "params", "tokens"), REDUCED)
def test_reduced_export_matches_torch(
    tmp_path: Path, kind: str, method: str, params: dict, tokens: list[int]
) -> None:
    folder = tiny_vision_folder(tmp_path / kind, kind)
    bundle = tmp_path / "bundle"
    manifest = export_bundle(ExportRequest(str(folder), bundle, ReductionConfig(method, params)))
    assert manifest["verify"]["max_abs_error"]["model"] <= VERIFY_ATOL
    assert manifest["verify"]["max_abs_error"]["full"] <= VERIFY_ATOL
    assert manifest["reduction"]["tokens_per_layer"] == tokens
    pixels = _pixels()
    reduced = load(bundle).run({"pixel_values": pixels.numpy()})[OUTPUT[kind]]
    full = load(bundle, graph="full").run({"pixel_values": pixels.numpy()})[OUTPUT[kind]]
    assert reduced.shape == full.shape
    assert np.isfinite(reduced).all()
    assert np.abs(full - own_output(folder, pixels).numpy()).max() <= VERIFY_ATOL
    assert not np.allclose(reduced, full, atol=1e-4)  # the reduction changed something


def test_pooling_counts_a_merged_token_for_the_tokens_it_replaced() -> None:
    """Two equal tokens pool like one token of size 2: SigLIP's attention pooling (log-size
    bias on the probe's logits) and the size-weighted mean of mean-pooling heads."""
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    torch.manual_seed(0)
    head = SiglipMultiheadAttentionPoolingHead(
        SiglipVisionConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    ).eval()
    a, b = torch.randn(2, 1, 1, 32)
    separate, merged = torch.cat([a, b, b], 1), torch.cat([a, b], 1)
    sizes = torch.tensor([[[1.0], [2.0]]])
    with torch.no_grad():
        want = _attention_pool(head, separate, torch.ones(1, 3, 1))
        torch.testing.assert_close(_attention_pool(head, merged, sizes), want)
        assert not torch.allclose(_attention_pool(head, merged, torch.ones(1, 2, 1)), want)
        torch.testing.assert_close(head(separate), want)  # the model's own head, unweighted
    torch.testing.assert_close(
        _weighted_mean(merged, sizes), _weighted_mean(separate, torch.ones(1, 3, 1))
    )


def test_methods_a_family_cannot_run_name_the_fix(tmp_path: Path) -> None:
    folder = tiny_vision_folder(tmp_path / "siglip", "siglip")
    out = tmp_path / "b"
    with pytest.raises(UsageError, match="evit: ranks tokens by CLS attention, but the model"):
        export_bundle(ExportRequest(str(folder), out, ReductionConfig("evit", {"layers": [0]})))
    with pytest.raises(UsageError, match=r"hf-siglip models support tome, .*not mrt5_gate"):
        export_bundle(ExportRequest(str(folder), out, ReductionConfig("mrt5_gate")))
    with pytest.raises(UsageError, match="exported at its config's image size 32"):
        export_bundle(ExportRequest(str(folder), out, image_size=64))
    with pytest.raises(UsageError, match="--seq-len is for text models"):
        export_bundle(ExportRequest(str(folder), out, seq_len=8))
    assert not out.exists()


def test_unsupported_types_and_architectures_list_supported_ones(tmp_path: Path) -> None:
    from transformers import SwinConfig, SwinModel, ViTConfig, ViTForMaskedImageModeling

    SwinModel(SwinConfig(embed_dim=8, depths=[1], num_heads=[1])).save_pretrained(tmp_path / "s")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "s"), "-o", str(tmp_path / "b")])
    assert isinstance(result.exception, UsageError)
    message = str(result.exception)
    assert "model type 'swin' is not supported" in message
    assert (
        "bert, roberta, xlm-roberta, mpnet, clip_text_model, vit, deit, clip, clip_vision_model"
        in message
    )
    assert "dinov2, dinov2_with_registers, llava" in message
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16)
    ViTForMaskedImageModeling(config).save_pretrained(tmp_path / "m")
    with pytest.raises(UsageError, match="ViTForMaskedImageModeling is not supported; supported"):
        export_bundle(ExportRequest(str(tmp_path / "m"), tmp_path / "b"))


def _smooth_image(path: Path) -> Path:
    """A 48x64 image of smooth gradients, so that resize implementations agree closely."""
    rows, cols = np.mgrid[0:48, 0:64].astype(np.float32)
    channels = [np.sin(rows / 7), np.cos(cols / 9), np.sin((rows + cols) / 11)]
    pixels = (np.stack(channels, -1) * 100 + 128).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("kind", ["vit", "deit", "clip-vision", "siglip", "dinov2"])
def test_preprocess_follows_the_image_processor(tmp_path: Path, kind: str) -> None:
    """trimformer's preprocessing (PIL) matches the processor's (torchvision) within two levels
    of 8-bit rounding on a smooth image: same resize, crop and normalisation."""
    from transformers import AutoImageProcessor

    folder = tiny_vision_folder(tmp_path / kind, kind)
    bundle = tmp_path / "bundle"
    export_bundle(ExportRequest(str(folder), bundle, verify=False))
    image = _smooth_image(tmp_path / "image.png")
    ours = load_image(image, load(bundle).manifest["preprocess"])
    processor = AutoImageProcessor.from_pretrained(folder)
    theirs = processor(images=Image.open(image), return_tensors="np")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 32, 32)
    std = np.asarray(processor.image_std).reshape(3, 1, 1)
    assert (np.abs(ours - theirs) * std).max() <= 2.5 / 255


def test_cli_exports_a_fixed_batch_and_runs_an_image(tmp_path: Path) -> None:
    folder = tiny_vision_folder(tmp_path / "vit", "vit")
    out = tmp_path / "b"
    args = ["export", str(folder), "--method", "tome", "--r", "3", "--batch", "1", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    manifest = load(out).manifest
    assert manifest["graphs"]["model"]["inputs"][0]["shape"] == [1, 3, 32, 32]
    assert manifest["model"]["num_classes"] == 5
    image = _smooth_image(tmp_path / "image.png")
    ran = CliRunner().invoke(cli, ["run", str(out), str(image)])
    assert ran.exit_code == 0, ran.output


def test_pooling_weights_drop_tokens_a_gate_deleted(tmp_path: Path) -> None:
    """Mean-pooling heads weigh tokens by size times kept, read from the CLS row of the gate's
    attention bias."""
    from trimformer.methods.mrt5_gate import deletion_bias
    from trimformer.models import TokenState
    from trimformer.models.loading import ModelOptions, load_model

    encoder = load_model(str(tiny_vision_folder(tmp_path / "d", "dinov2")), ModelOptions()).model
    keep = torch.tensor([[True, False, True, True, False], [True, True, False, False, False]])
    sizes = torch.tensor([1.0, 2.0, 3.0, 1.0, 1.0]).expand(2, 5).unsqueeze(-1)
    state = TokenState(sizes=sizes, attn_bias=deletion_bias(keep))
    weights = encoder._weights(torch.zeros(2, 5, 32), state)
    torch.testing.assert_close(weights, sizes * keep.unsqueeze(-1))


def test_a_folder_without_image_processor_warns_and_uses_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from trimformer.models.hf_preprocess import image_preprocess

    folder = tiny_vision_folder(tmp_path / "vit", "vit")
    (folder / "preprocessor_config.json").unlink()
    with caplog.at_level("WARNING"):
        preprocess = image_preprocess(folder, 3, 32)
    assert "has no image processor config" in caplog.text
    assert preprocess["input_size"] == [3, 32, 32]
    assert preprocess["crop_mode"] == "squash"

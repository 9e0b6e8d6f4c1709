"""Hugging Face BERT-family text encoders: export equals transformers / sentence-transformers,
reduced export equals the patched torch model, and padding never mixes with real tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TEXT_WORDS, tiny_text_folder

from trimformer.cli import cli
from trimformer.errors import UsageError
from trimformer.exporter import VERIFY_ATOL, ExportRequest, export_bundle
from trimformer.methods import ModelGeometry, get_method, parse_params
from trimformer.models import adapter_for, registered_adapters
from trimformer.models.loading import ModelOptions, load_model
from trimformer.profiles import ReductionConfig
from trimformer.runtime import load

SEQ_LEN = 16
SENTENCES = ["the cat sat on the mat", "a dog ran", "big red house tree small blue cat dog ran"]


def _tokens(bundle: Path, sentences: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundle / "tokenizer")
    manifest = load(bundle).manifest["preprocess"]
    encoded = tokenizer(
        sentences, padding="max_length", truncation=True, max_length=manifest["max_length"]
    )
    session = load(bundle)
    return {spec.name: np.asarray(encoded[spec.name], np.int64) for spec in session.inputs}


@pytest.mark.parametrize(
    ("model_type", "pooling"),
    [("bert", "mean"), ("roberta", "cls"), ("bert", "cls"), ("mpnet", "mean")],
)
def test_unreduced_export_equals_sentence_transformers(
    tmp_path: Path, model_type: str, pooling: str
) -> None:
    from sentence_transformers import SentenceTransformer

    folder = tiny_text_folder(tmp_path / "st", model_type, pooling=pooling)
    bundle = tmp_path / "bundle"
    export_bundle(ExportRequest(str(folder), bundle, seq_len=SEQ_LEN))
    got = load(bundle).run(_tokens(bundle, SENTENCES))["sentence_embedding"]
    want = SentenceTransformer(str(folder), device="cpu").encode(SENTENCES)
    assert np.abs(got - want).max() <= VERIFY_ATOL


def test_plain_folder_is_mean_pooled_like_transformers(tmp_path: Path) -> None:
    from transformers import AutoModel

    folder = tiny_text_folder(tmp_path / "plain", sentence_transformers=False)
    bundle = tmp_path / "bundle"
    manifest = export_bundle(ExportRequest(str(folder), bundle, seq_len=SEQ_LEN))
    assert manifest["model"]["family"] == "hf-text"
    assert [i["name"] for i in manifest["graphs"]["model"]["inputs"]] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    feed = _tokens(bundle, SENTENCES)
    got = load(bundle).run(feed)["sentence_embedding"]
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state
    mask = torch.from_numpy(feed["attention_mask"]).unsqueeze(-1).float()
    want = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    assert np.abs(got - want).max() <= VERIFY_ATOL


@pytest.mark.parametrize(
    ("model_type", "metric"), [("bert", "hidden"), ("bert", "keys"), ("mpnet", "hidden")]
)
def test_reduced_export_matches_torch_with_padding(
    tmp_path: Path, model_type: str, metric: str
) -> None:
    folder = tiny_text_folder(tmp_path / "st", model_type)
    bundle = tmp_path / "bundle"
    manifest = export_bundle(
        ExportRequest(
            str(folder),
            bundle,
            ReductionConfig("tome", {"r": 3, "metric": metric}),
            seq_len=SEQ_LEN,
        )
    )
    # The example export verifies with is a batch of one full and one half-padded text.
    assert manifest["verify"]["max_abs_error"]["model"] <= VERIFY_ATOL
    assert manifest["reduction"]["tokens_per_layer"] == [13, 10]
    assert manifest["reduction"]["params"]["metric"] == metric
    reduced = load(bundle).run(_tokens(bundle, SENTENCES))["sentence_embedding"]
    full = load(bundle, graph="full").run(_tokens(bundle, SENTENCES))["sentence_embedding"]
    assert reduced.shape == full.shape == (3, 32)
    assert np.isfinite(reduced).all()


def _encoder_and_reduced(folder: Path, r: int):
    loaded = load_model(str(folder), ModelOptions(seq_len=SEQ_LEN))
    adapter = adapter_for(loaded.model)
    geometry = ModelGeometry.of(adapter, loaded.model)
    method = get_method("tome")
    params = parse_params("tome", method.params_type, {"r": r})
    plan = method.plan(params, geometry)
    return loaded.model, adapter.insert(loaded.model, plan.reducer)


def _ids(words: list[str], tokenizer_folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    encoded = tokenizer(
        [" ".join(words)],
        padding="max_length",
        truncation=True,
        max_length=SEQ_LEN,
        return_tensors="pt",
    )
    return encoded["input_ids"], encoded["attention_mask"]


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_padding_absorbs_merges_before_real_tokens(tmp_path: Path, model_type: str) -> None:
    """A short text with more padding than merges comes out exactly as from the full model:
    padding was merged with padding only, and no real token was touched (for MPNet: nor its
    position, though merging reorders the tokens)."""
    folder = tiny_text_folder(tmp_path / "st", model_type)
    full, reduced = _encoder_and_reduced(folder, r=2)
    ids, mask = _ids(TEXT_WORDS[:3], folder)  # 5 real tokens, 11 padding
    with torch.no_grad():
        want, got = full(ids, mask), reduced(ids, mask)
    assert torch.allclose(got, want, atol=1e-5)
    # A text without padding does lose information to the merges: the test can fail.
    ids, mask = _ids(TEXT_WORDS * 2, folder)
    assert mask.all()
    with torch.no_grad():
        assert not torch.allclose(reduced(ids, mask), full(ids, mask), atol=1e-3)


def test_padding_is_never_merged_into_real_tokens(tmp_path: Path) -> None:
    """With more merges than padding pairs, the padding flag carried through the merges stays
    0 or 1 exactly: no token mixes real and padding."""
    folder = tiny_text_folder(tmp_path / "st")
    _, reduced = _encoder_and_reduced(folder, r=5)
    ids, mask = _ids(TEXT_WORDS[:9], folder)  # 11 real tokens, 5 padding
    carried: list[torch.Tensor] = []
    reducer = reduced.reducer

    def spy(layer, x, state, taps):
        out, new_state = reducer(layer, x, state, taps)
        carried.append(out[..., -1])
        return out, new_state

    spy.proportional_attention = reducer.proportional_attention
    reduced.reducer = spy
    with torch.no_grad():
        reduced(ids, mask)
    for flags in carried:
        assert torch.all((flags == 0) | (flags == 1)), flags
    assert int(carried[-1].sum()) < 11  # real tokens were merged too, with each other


def _carried_positions(reduced, ids, mask) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(positions, sizes) each reducing layer hands on, spied from the reducer's output."""
    carried = []
    reducer = reduced.reducer

    def spy(layer, x, state, taps):
        out, new_state = reducer(layer, x, state, taps)
        carried.append((out[..., -2], new_state.sizes_or_ones(out).squeeze(-1)))
        return out, new_state

    spy.proportional_attention = reducer.proportional_attention
    reduced.reducer = spy
    with torch.no_grad():
        reduced(ids, mask)
    reduced.reducer = reducer
    return carried


def test_mpnet_positions_are_size_weighted_means_and_drive_the_bias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merged MPNet tokens sit at the mean position of what they stand for, and the relative
    position bias is recomputed from those positions: the bias of the tokens' new indices (what
    transformers would compute for the shorter sequence) gives a different embedding."""
    import trimformer.models.hf_text as hf_text

    folder = tiny_text_folder(tmp_path / "st", "mpnet")
    _, reduced = _encoder_and_reduced(folder, r=4)
    ids, mask = _ids(TEXT_WORDS * 2, folder)
    assert mask.all()
    carried = _carried_positions(reduced, ids, mask)
    for positions, sizes in carried:
        # Size-weighted means keep the total of the original positions 0..15.
        assert torch.allclose((positions * sizes).sum(), torch.tensor(SEQ_LEN * (SEQ_LEN - 1) / 2))
    assert (carried[-1][0] != carried[-1][0].round()).any()  # some tokens were merged
    with torch.no_grad():
        got = reduced(ids, mask)
        shortened = hf_text._position_bias
        monkeypatch.setattr(
            hf_text,
            "_position_bias",
            lambda encoder, p: shortened(encoder, torch.arange(p.shape[1]).view(1, -1, 1).float()),
        )
        stale = reduced(ids, mask)
    assert not torch.allclose(got, stale, atol=1e-3)


def test_unsupported_method_and_bad_options_name_the_fix(tmp_path: Path) -> None:
    folder = tiny_text_folder(tmp_path / "st")
    with pytest.raises(UsageError, match="hf-text models support tome, group_merge, not evit"):
        export_bundle(ExportRequest(str(folder), tmp_path / "b", ReductionConfig("evit")))
    with pytest.raises(UsageError, match=r"--seq-len 500 is out of range; use 2\.\.64"):
        export_bundle(ExportRequest(str(folder), tmp_path / "b", seq_len=500))
    with pytest.raises(UsageError, match="--image-size is for image models"):
        export_bundle(ExportRequest(str(folder), tmp_path / "b", image_size=32))
    with pytest.raises(UsageError, match="--seq-len is for text models"):
        export_bundle(ExportRequest("deit_tiny_patch16_224", tmp_path / "b", seq_len=8))
    assert not (tmp_path / "b").exists()


def test_unsupported_architecture_lists_supported_ones(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModel

    folder = tmp_path / "gpt2"
    config = AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=50)
    AutoModel.from_config(config).save_pretrained(folder)
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(tmp_path / "b")])
    assert isinstance(result.exception, UsageError)
    assert "model type 'gpt2' is not supported" in str(result.exception)
    assert "bert, roberta, xlm-roberta, mpnet, clip_text_model" in str(result.exception)


def test_export_cli_with_seq_len_and_set(tmp_path: Path) -> None:
    folder = tiny_text_folder(tmp_path / "st")
    out = tmp_path / "b"
    args = ["export", str(folder), "--seq-len", "12", "--method", "tome", "--r", "2"]
    result = CliRunner().invoke(cli, [*args, "--set", "metric=keys", "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = load(out).manifest
    assert manifest["reduction"]["params"]["metric"] == "keys"
    assert manifest["graphs"]["model"]["inputs"][0]["shape"] == ["batch", 12]
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    bad = CliRunner().invoke(cli, [*args, "--set", "metric", "-o", str(tmp_path / "c")])
    assert isinstance(bad.exception, UsageError) and "give KEY=VALUE" in str(bad.exception)


def test_every_registered_adapter_has_an_export_test() -> None:
    """A new adapter must come with a test of its un-reduced and reduced exports."""
    tested = {
        "timm-vit": "test_adapter_timm.py",
        "hf-text": "test_adapter_hf_text.py",
        "hf-clip-text": "test_adapter_hf_clip_text.py",
        "hf-vit": "test_adapter_hf_vision.py",
        "hf-deit": "test_adapter_hf_vision.py",
        "hf-clip": "test_adapter_hf_vision.py",
        "hf-siglip": "test_adapter_hf_vision.py",
        "hf-dinov2": "test_adapter_hf_vision.py",
        "hf-llava": "test_adapter_hf_llava.py",
    }
    for adapter in registered_adapters():
        assert adapter.family in tested, f"adapter {adapter.family} has no export test"
        assert (Path(__file__).parent / tested[adapter.family]).is_file()

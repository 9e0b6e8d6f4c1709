"""Hugging Face CLIP text towers: export equals transformers, reduced export equals the patched
torch model, the pooled end-of-text token survives every reduction, and causality holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEXT_WORDS, tiny_clip_text_folder

from trimformer.errors import UsageError
from trimformer.exporter import VERIFY_ATOL, ExportRequest, export_bundle
from trimformer.methods import ModelGeometry, get_method, parse_params
from trimformer.models import adapter_for
from trimformer.models.loading import ModelOptions, load_model
from trimformer.profiles import ReductionConfig
from trimformer.runtime import load

SEQ_LEN = 16
SENTENCES = ["the cat sat on the mat", "a dog ran", "big red house tree small blue cat dog ran"]


def _feed(folder: Path, sentences: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=SEQ_LEN)
    return {k: np.asarray(encoded[k], np.int64) for k in ("input_ids", "attention_mask")}


@pytest.mark.parametrize(
    ("legacy_eos", "architecture"),
    [(True, "CLIPTextModel"), (False, "CLIPTextModelWithProjection"), (False, "CLIPModel")],
)
def test_unreduced_export_equals_transformers(
    tmp_path: Path, legacy_eos: bool, architecture: str
) -> None:
    import transformers

    folder = tiny_clip_text_folder(tmp_path / "clip", legacy_eos, architecture)
    bundle = tmp_path / "bundle"
    # --seq-len selects a whole CLIPModel's text side (without it, its image side exports).
    manifest = export_bundle(ExportRequest(str(folder), bundle, seq_len=SEQ_LEN))
    assert manifest["model"]["family"] == "hf-clip-text"
    feed = _feed(folder, SENTENCES)
    got = load(bundle).run(feed)["sentence_embedding"]
    tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
    model = getattr(transformers, architecture).from_pretrained(folder).eval()
    with torch.no_grad():
        if architecture == "CLIPModel":
            want = model.text_projection(model.text_model(**tensors).pooler_output)
        elif architecture == "CLIPTextModel":
            want = model(**tensors).pooler_output
        else:
            want = model(**tensors).text_embeds
    assert got.shape == (3, 32 if architecture == "CLIPTextModel" else 24)
    assert np.abs(got - want.numpy()).max() <= VERIFY_ATOL


def test_reduced_export_matches_torch(tmp_path: Path) -> None:
    folder = tiny_clip_text_folder(tmp_path / "clip")
    bundle = tmp_path / "bundle"
    manifest = export_bundle(
        ExportRequest(str(folder), bundle, ReductionConfig("tome", {"r": 3}), seq_len=SEQ_LEN)
    )
    assert manifest["verify"]["max_abs_error"]["model"] <= VERIFY_ATOL
    assert manifest["reduction"]["tokens_per_layer"][-1] < SEQ_LEN
    reduced = load(bundle).run(_feed(folder, SENTENCES))["sentence_embedding"]
    assert reduced.shape == (3, 24) and np.isfinite(reduced).all()


def _full_and_reduced(folder: Path, r: int):
    loaded = load_model(str(folder), ModelOptions(seq_len=SEQ_LEN))
    adapter = adapter_for(loaded.model)
    method = get_method("tome")
    params = parse_params("tome", method.params_type, {"r": r})
    plan = method.plan(params, ModelGeometry.of(adapter, loaded.model))
    return loaded.model, adapter.insert(loaded.model, plan.reducer)


def _ids(folder: Path, words: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    feed = _feed(folder, [" ".join(words)])
    return torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])


def test_end_of_text_token_survives_every_reduction(tmp_path: Path) -> None:
    """With merges among real tokens, the token at index 0 after every reduction is still the
    end-of-text token alone (size 1, its own last position), wherever the text ends."""
    folder = tiny_clip_text_folder(tmp_path / "clip", legacy_eos=True)
    _, reduced = _full_and_reduced(folder, r=5)
    reducer, seen = reduced.reducer, []

    def spy(layer, x, state, taps):
        out, new_state = reducer(layer, x, state, taps)
        seen.append((out[0, 0, -2], new_state.sizes_or_ones(out)[0, :, 0]))
        return out, new_state

    spy.proportional_attention = reducer.proportional_attention
    for words in (TEXT_WORDS[:9], TEXT_WORDS[:4]):
        ids, mask = _ids(folder, words)
        eos = int(ids[0].argmax())
        assert eos == len(words) + 1
        seen.clear()
        reduced.reducer = spy
        with torch.no_grad():
            reduced(ids, mask)
        reduced.reducer = reducer
        for power, sizes in seen:
            assert sizes[0] == 1 and power == 4.0 ** (eos - (SEQ_LEN - 1) / 2)
            assert sizes.max() > 1  # tokens did merge


def test_tokens_after_end_of_text_cannot_reach_the_pooled_token(tmp_path: Path) -> None:
    """Causality: what follows the end-of-text token (even unmasked) changes nothing, with or
    without reduction; and what precedes it does change the reduced output."""
    folder = tiny_clip_text_folder(tmp_path / "clip")
    full, reduced = _full_and_reduced(folder, r=4)
    ids, _ = _ids(folder, TEXT_WORDS[:6])  # 8 tokens with [CLS] and [SEP]
    mask = torch.ones_like(ids)
    other = ids.clone()
    other[0, 8:] = torch.arange(5, 13)  # real words after the end of the text
    prefix = ids.clone()
    prefix[0, 3] = 10
    with torch.no_grad():
        for model in (full, reduced):
            assert torch.allclose(model(ids, mask), model(other, mask), atol=1e-6)
        assert not torch.allclose(reduced(ids, mask), reduced(prefix, mask), atol=1e-3)


def test_unsupported_method_and_long_sequences_name_the_fix(tmp_path: Path) -> None:
    folder = tiny_clip_text_folder(tmp_path / "clip")
    for method in ("evit", "group_merge"):
        with pytest.raises(UsageError, match=f"hf-clip-text models support tome, not {method}"):
            export_bundle(ExportRequest(str(folder), tmp_path / "b", ReductionConfig(method)))
    with pytest.raises(UsageError, match=r"--seq-len 100 is out of range; use 2\.\.64"):
        export_bundle(ExportRequest(str(folder), tmp_path / "b", seq_len=100))
    assert not (tmp_path / "b").exists()


def test_no_token_depends_on_positions_after_its_last(tmp_path: Path) -> None:
    """Causality under merging: at the last layer, nudging the embedding of an original
    position leaves every token whose latest member is earlier exactly unchanged (the rule a
    merged key obeys: visible only to queries whose last is not earlier than its own)."""
    folder = tiny_clip_text_folder(tmp_path / "clip")
    _, reduced = _full_and_reduced(folder, r=4)
    ids, mask = _ids(folder, TEXT_WORDS[:12])
    reducer, nudge = reduced.reducer, {}

    def spy(layer, x, state, taps):
        nudge["seen"] = (x[0], state.sizes_or_ones(x)[0, :, 0])  # the last layer's wins
        return reducer(layer, x, state, taps)

    def nudged(module, inputs, output):
        if "at" in nudge:
            output = output.clone()
            output[:, nudge["at"]] += 1e-3
        return output

    spy.proportional_attention = reducer.proportional_attention
    reduced.reducer = spy
    reduced.backbone.embeddings.register_forward_hook(nudged)
    with torch.no_grad():
        reduced(ids, mask)
        base, sizes = nudge["seen"]
        last = torch.round(torch.log2(base[:, -2] * sizes) / 2 + (SEQ_LEN - 1) / 2)
        assert sizes.max() > 1
        for at in range(1, int(last.max()) + 1):
            nudge["at"] = at
            reduced(ids, mask)
            x, new_sizes = nudge["seen"]
            assert torch.equal(new_sizes, sizes) and torch.equal(x[:, -2:], base[:, -2:])
            before = last < at
            assert torch.equal(x[before], base[before]), at  # not one bit changed
            assert not torch.equal(x[~before], base[~before])  # but later tokens did

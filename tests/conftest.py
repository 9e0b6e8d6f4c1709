"""Shared fixtures: tiny timm ViTs built in-process, and one real exported bundle per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trimformer.exporter import ExportRequest, export_bundle
from trimformer.profiles import ReductionConfig

TINY_BUNDLE_MODEL = "deit_tiny_patch16_224"
TINY_BUNDLE_SIZE = 96  # 36 patches + CLS: a real DeiT-Ti, small enough to export quickly


def tiny_vit(kind: str = "vit", fused: bool = True, depth: int = 3) -> torch.nn.Module:
    """A small random timm ViT of the given kind: vit, distilled, registers, or gap."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    common = dict(img_size=32, patch_size=4, embed_dim=48, depth=depth, num_heads=3, num_classes=10)
    if kind == "distilled":
        model = VisionTransformerDistilled(**common)
    elif kind == "registers":
        model = VisionTransformer(reg_tokens=4, **common)
    elif kind == "gap":
        model = VisionTransformer(global_pool="avg", class_token=False, **common)
    else:
        model = VisionTransformer(**common)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    return model.eval()


@pytest.fixture(scope="session")
def tome_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeiT-Ti at 96 px with ToMe r=4, exported once for the whole session."""
    path = tmp_path_factory.mktemp("bundles") / "deit-ti-tome"
    export_bundle(
        ExportRequest(
            TINY_BUNDLE_MODEL,
            path,
            ReductionConfig("tome", {"r": 4}),
            image_size=TINY_BUNDLE_SIZE,
        )
    )
    return path


BANK_SIZE = 48  # 9 patches + CLS: tome r=1 and r=2 reduce at every layer's start
BANK_CONFIGS = ("tome-r2", "none", "tome-r1")


def export_tiny_bank(path: Path) -> Path:
    """DeiT-Ti at 48 px as a bank of three configs (tome-r2, the default; none; tome-r1)."""
    configs = tuple(
        (
            name,
            ReductionConfig("tome", {"r": int(name[-1])})
            if name != "none"
            else ReductionConfig("none"),
        )
        for name in BANK_CONFIGS
    )
    export_bundle(ExportRequest(TINY_BUNDLE_MODEL, path, image_size=BANK_SIZE, bank=configs))
    return path


TEXT_WORDS = [
    *("the", "a", "cat", "dog", "sat", "on", "mat", "ran"),
    *("fast", "slow", "red", "blue", "big", "small", "house", "tree"),
]


def tiny_text_folder(
    path: Path, model_type: str = "bert", sentence_transformers: bool = True, pooling: str = "mean"
) -> Path:
    """A random 2-layer BERT-family encoder saved as a (sentence-transformers) folder.

    MPNet pads with id 1 (its position ids skip that id), so its specials are ordered as
    MPNet's own vocabulary orders them."""
    import json

    from transformers import AutoConfig, AutoModel, BertTokenizerFast

    torch.manual_seed(0)
    path.mkdir(parents=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if model_type == "mpnet":
        specials = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
    words = [*specials, *TEXT_WORDS]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, model_max_length=64)
    assert tokenizer("the cat")["input_ids"][1:] == [5, 7, words.index("[SEP]")]
    config = AutoConfig.for_model(
        model_type,
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=70,
        type_vocab_size=2 if model_type == "bert" else 1,
        pad_token_id=words.index("[PAD]"),
    )
    model = AutoModel.from_config(config)
    if model_type == "mpnet":  # a bias as large as trained ones, so that positions matter
        torch.nn.init.normal_(model.encoder.relative_attention_bias.weight, std=2.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if sentence_transformers:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            },
        ]
        (path / "modules.json").write_text(json.dumps(modules))
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": 32,
                    "pooling_mode_cls_token": pooling == "cls",
                    "pooling_mode_mean_tokens": pooling == "mean",
                }
            )
        )
        (path / "2_Normalize").mkdir()
    return path


def tiny_clip_text_folder(
    path: Path, legacy_eos: bool = False, architecture: str = "CLIPTextModelWithProjection"
) -> Path:
    """A random 2-layer CLIP text tower (alone, with projection, or in a whole ``CLIPModel``
    with a tiny image side) saved with its tokenizer. [SEP] ends each text and has the largest
    id, so both of transformers' pooling rules find it: the legacy one (config eos_token_id 2:
    the largest id) and the newer one (the first eos_token_id)."""
    import transformers
    from transformers import BertTokenizerFast, CLIPConfig, CLIPTextConfig

    torch.manual_seed(0)
    path.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[MASK]", *TEXT_WORDS, "[SEP]"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, model_max_length=64)
    config = CLIPTextConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        projection_dim=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=2 if legacy_eos else len(words) - 1,
    )
    if architecture == "CLIPModel":
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
        vision |= {"num_attention_heads": 2, "image_size": 32, "patch_size": 16}
        config = CLIPConfig(text_config=config.to_dict(), vision_config=vision, projection_dim=24)
    getattr(transformers, architecture)(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

"""Load Hugging Face models from ``hf:ORG/NAME`` or a local folder: text encoders (BERT family,
MPNet, CLIP text towers) here, vision models in hf_vision_loading (routed by ``model_type``).

A sentence-transformers folder (``modules.json``) declares its pooling (``1_Pooling/config.json``),
whether it L2-normalises, and its maximum sequence length; a plain ``save_pretrained`` folder is
pooled by mean over real tokens. Models load with transformers' eager attention, whose additive
mask the reducing layers extend, and offline unless a hub id is not cached yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from trimformer.errors import UsageError
from trimformer.models.base import GraphIO
from trimformer.models.hf_clip_text import CLIP_TEXT_TYPES, ClipTextEncoder
from trimformer.models.hf_text import SUPPORTED_TEXT_TYPES, TextEncoder
from trimformer.models.loading import LoadedModel, ModelOptions

__all__ = ["load_hf_model"]

_DEFAULT_SEQ_LEN = 128
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
_ST_POOLING = "sentence_transformers.models.Pooling"
_TEXT_TYPES = (*SUPPORTED_TEXT_TYPES, *CLIP_TEXT_TYPES)
_CLIP = "clip"  # a whole CLIPModel: its image side, or with --seq-len its text side


def _resolve(name: str) -> Path:
    """A local folder for ``name``: the folder itself, or the hub snapshot of ``hf:ORG/NAME``."""
    if not name.startswith("hf:"):
        return Path(name)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo = name.removeprefix("hf:")
    try:
        return Path(snapshot_download(repo))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise UsageError(
            f"cannot fetch {repo} from the Hugging Face hub ({type(exc).__name__}); connect to "
            "the network, or pass a local folder saved with save_pretrained"
        ) from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} cannot be read as JSON ({exc}); re-save the model") from None


def _sentence_transformers(folder: Path) -> tuple[Path, str, bool, int | None]:
    """(transformer folder, pooling, normalize, max_seq_length) of a sentence-transformers dir."""
    modules = _read_json(folder / "modules.json")
    types = {m.get("type"): m.get("path", "") for m in modules if isinstance(m, dict)}
    transformer = folder / next(
        (m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Transformer")),
        "",
    )
    pooling = "cls"
    if _ST_POOLING in types:
        config = _read_json(folder / types[_ST_POOLING] / "config.json")
        modes = [k for k, v in config.items() if k.startswith("pooling_mode") and v is True]
        if modes == ["pooling_mode_mean_tokens"]:
            pooling = "mean"
        elif modes != ["pooling_mode_cls_token"]:
            raise UsageError(
                f"{folder}: pooling {modes} is not supported; trimformer exports mean or CLS "
                "pooling (size-weighted where tokens merge)"
            )
    st_config = transformer / "sentence_bert_config.json"
    if not st_config.is_file():
        st_config = folder / "sentence_bert_config.json"
    max_len = _read_json(st_config).get("max_seq_length") if st_config.is_file() else None
    return transformer, pooling, _ST_NORMALIZE in types, max_len


def _example(
    encoder: TextEncoder | ClipTextEncoder, options: ModelOptions, config: Any
) -> dict[str, torch.Tensor]:
    """Token ids with mixed lengths (full, then about half padded), so padding is exercised;
    each text ends with the model's end-of-text id."""
    batch, seq = options.example_batch, encoder.seq_len
    lengths = torch.tensor([seq if i % 2 == 0 else seq // 2 + 1 for i in range(batch)])
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    ids = torch.randint(0, config.vocab_size, (batch, seq)) * mask
    if isinstance(getattr(config, "eos_token_id", None), int):
        ids[torch.arange(batch), lengths - 1] = config.eos_token_id
    example = {"input_ids": ids, "attention_mask": mask}
    if encoder.uses_token_types:
        example["token_type_ids"] = torch.zeros_like(ids)
    return example


def load_hf_model(name: str, options: ModelOptions) -> LoadedModel:
    """The transformers model ``name`` names: a text encoder with its tokenizer, or a vision
    model (hf_vision_loading)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from trimformer.models.hf_vision_loading import SUPPORTED_VISION_TYPES, load_vision_model

    hf_logging.disable_progress_bar()
    if options.checkpoint is not None or options.pretrained:
        raise UsageError("Hugging Face models carry their weights; drop --checkpoint/--pretrained")
    folder = _resolve(name)
    if not (folder / "modules.json").is_file():
        config = AutoConfig.from_pretrained(folder)
        text_side = config.model_type == _CLIP and options.seq_len is not None
        if config.model_type in SUPPORTED_VISION_TYPES and not text_side:
            return load_vision_model(name, folder, config, options)
        if config.model_type not in _TEXT_TYPES and not text_side:
            supported = ", ".join((*_TEXT_TYPES, *SUPPORTED_VISION_TYPES))
            raise UsageError(
                f"{name}: model type {config.model_type!r} is not supported; supported Hugging "
                f"Face model types: {supported}"
            )
    return _load_text(name, folder, options)


def _clip_text(folder: Path, config: Any, seq_len: int) -> ClipTextEncoder:
    """The CLIP text tower in ``folder``, with its projection when it was saved with one."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

    if config.model_type == _CLIP:
        model = CLIPModel.from_pretrained(folder, attn_implementation="eager")
        backbone, projection = model.text_model, model.text_projection
    elif "CLIPTextModelWithProjection" in (config.architectures or ()):
        model = CLIPTextModelWithProjection.from_pretrained(folder, attn_implementation="eager")
        backbone, projection = model.text_model, model.text_projection
    else:
        backbone = CLIPTextModel.from_pretrained(folder, attn_implementation="eager")
        projection = None
    return ClipTextEncoder(backbone.eval(), projection, seq_len).eval()


def _load_text(name: str, folder: Path, options: ModelOptions) -> LoadedModel:
    """A ``TextEncoder`` over the transformers text model in ``folder``, with its tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if options.image_size is not None:
        raise UsageError("--image-size is for image models; text models take --seq-len")
    pooling, normalize, max_len = "mean", False, None
    if (folder / "modules.json").is_file():
        folder, pooling, normalize, max_len = _sentence_transformers(folder)
    config = AutoConfig.from_pretrained(folder)
    text_config = config.text_config if config.model_type == _CLIP else config
    if config.model_type not in (*_TEXT_TYPES, _CLIP):
        raise UsageError(
            f"{name}: model type {config.model_type!r} is not supported; supported Hugging Face "
            f"text model types: {', '.join(_TEXT_TYPES)}"
        )
    limit = min(v for v in (max_len, text_config.max_position_embeddings) if v is not None)
    seq_len = options.seq_len or min(_DEFAULT_SEQ_LEN, limit)
    if not 2 <= seq_len <= limit:
        raise UsageError(f"--seq-len {seq_len} is out of range; use 2..{limit} for {name}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if config.model_type in (*CLIP_TEXT_TYPES, _CLIP):
        encoder, pooling = _clip_text(folder, config, seq_len), "eos"
    else:
        backbone = AutoModel.from_pretrained(folder, attn_implementation="eager")
        encoder = TextEncoder(backbone.eval(), pooling, normalize, seq_len).eval()
    example = _example(encoder, options, text_config)
    dynamic = {name: {0: "batch"} for name in example} if options.batch is None else {}
    preprocess = {
        "tokenizer": "tokenizer",
        "max_length": seq_len,
        "padding": "max_length",
        "truncation": True,
        "pooling": pooling,
        "normalize": normalize,
    }
    return LoadedModel(
        model=encoder,
        model_id=name.removeprefix("hf:") if name.startswith("hf:") else Path(name).name,
        source="hf",
        weights=f"folder:{Path(name).name}" if not name.startswith("hf:") else "pretrained",
        preprocess=preprocess,
        io=GraphIO(example, dynamic, ("sentence_embedding",)),
        assets={"tokenizer": lambda dest: tokenizer.save_pretrained(str(dest))},
    )

"""Tiny random Hugging Face vision models saved with save_pretrained, and their own outputs."""

from __future__ import annotations

from pathlib import Path

import torch

# Shared by every tiny model: 32 px images of 8 px patches (16 patches), 2 layers of width 32.
COMMON = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)
KINDS = (
    "vit",
    "vit-model",
    "deit",
    "deit-teacher",
    "clip",
    "clip-vision",
    "clip-projection",
    "siglip",
    "dinov2",
    "dinov2-model",
    "dinov2-registers",
)
FAMILY = {
    "vit": "hf-vit",
    "deit": "hf-deit",
    "clip": "hf-clip",
    "siglip": "hf-siglip",
    "dinov2": "hf-dinov2",
    "llava": "hf-llava",
}


def _model(kind: str) -> tuple[torch.nn.Module, object]:
    import transformers as T

    if kind in ("vit", "vit-model"):
        config = T.ViTConfig(**COMMON, num_labels=5)
        cls = T.ViTForImageClassification if kind == "vit" else T.ViTModel
        return cls(config), T.ViTImageProcessor(size={"height": 32, "width": 32})
    if kind in ("deit", "deit-teacher"):
        config = T.DeiTConfig(**COMMON, num_labels=5)
        cls = (
            T.DeiTForImageClassification
            if kind == "deit"
            else T.DeiTForImageClassificationWithTeacher
        )
        processor = T.DeiTImageProcessor(
            size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}
        )
        return cls(config), processor
    clip_processor = T.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    if kind == "clip":
        text = T.CLIPTextConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
        vision = T.CLIPVisionConfig(**COMMON)
        config = T.CLIPConfig(
            text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16
        )
        return T.CLIPModel(config), clip_processor
    if kind in ("clip-vision", "clip-projection"):
        config = T.CLIPVisionConfig(**COMMON, projection_dim=16)
        cls = T.CLIPVisionModel if kind == "clip-vision" else T.CLIPVisionModelWithProjection
        return cls(config), clip_processor
    if kind == "siglip":
        config = T.SiglipVisionConfig(**COMMON)
        return T.SiglipVisionModel(config), T.SiglipImageProcessor(size={"height": 32, "width": 32})
    dino = {k: v for k, v in COMMON.items() if k != "intermediate_size"}
    bit = T.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    if kind == "dinov2":
        return T.Dinov2ForImageClassification(T.Dinov2Config(**dino, num_labels=5)), bit
    if kind == "dinov2-model":
        return T.Dinov2Model(T.Dinov2Config(**dino)), bit
    if kind == "dinov2-registers":
        config = T.Dinov2WithRegistersConfig(**dino, num_register_tokens=2, num_labels=5)
        return T.Dinov2WithRegistersForImageClassification(config), bit
    raise ValueError(kind)


def _llava(feature_layer: int, strategy: str) -> tuple[torch.nn.Module, object]:
    import transformers as T

    vision = T.CLIPVisionConfig(**{**COMMON, "num_hidden_layers": 3})
    text = T.LlamaConfig(
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
    )
    config = T.LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=63,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
    )
    processor = T.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return T.LlavaForConditionalGeneration(config), processor


def tiny_vision_folder(
    path: Path, kind: str, feature_layer: int = -2, strategy: str = "default"
) -> Path:
    """A random tiny model of ``kind`` (KINDS, or "llava") and its image processor, saved."""
    torch.manual_seed(0)
    model, processor = _llava(feature_layer, strategy) if kind == "llava" else _model(kind)
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path


def own_output(folder: Path, pixels: torch.Tensor) -> torch.Tensor:
    """What the transformers model in ``folder`` itself returns for the exported output."""
    import transformers as T

    config = T.AutoConfig.from_pretrained(folder)
    cls = getattr(T, config.architectures[0])
    model = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        if config.model_type == "llava":
            return torch.stack(list(model.get_image_features(pixel_values=pixels).pooler_output))
        if hasattr(model, "get_image_features"):
            return model.get_image_features(pixel_values=pixels).pooler_output
        out = model(pixel_values=pixels)
        for name in ("logits", "image_embeds", "pooler_output"):
            if getattr(out, name, None) is not None:
                return getattr(out, name)
    raise AssertionError(f"no output of {type(model).__name__}")

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

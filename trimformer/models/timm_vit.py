"""Adapter for timm's VisionTransformer family: ViT, DeiT, DeiT-distilled, register-token ViTs.

The model keeps its own patch embedding, position embedding, final norm and head. Only
``model.blocks`` is replaced, by a Sequential over the *same* block modules (parameter names are
unchanged) whose forward carries token sizes from block to block and calls the reducer between
each block's attention residual and its MLP. Queries and keys are read by wrapping each
attention's ``q_norm`` and ``k_norm`` (Identities unless the model has qk-norm), so timm's own
attention code runs, fused (scaled_dot_product_attention) or plain; the attention probabilities a
method needs are recomputed from them. Proportional attention and a method's attention bias
(TokenState.attn_bias) are timm's additive ``attn_mask``.
For export the fused path is switched to the plain one: torch's ONNX exporter mis-tracks the
strides of scaled_dot_product_attention with a mask on timm's permuted q/k/v (torch 2.14), and
both paths lower to the same MatMul/Softmax graph.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from trimformer.models.base import (
    AdapterError,
    AttentionTaps,
    Reducer,
    Tap,
    TokenState,
    register_adapter,
)

__all__ = ["TimmViTAdapter"]


class ReducingBlocks(nn.Sequential):
    """timm ViT blocks with a reduction between each attention residual and MLP."""

    def __init__(self, blocks: nn.Sequential, reducer: Reducer) -> None:
        super().__init__(*blocks)
        self.reducer = reducer
        for block in self:
            block.attn.q_norm = Tap(block.attn.q_norm)
            block.attn.k_norm = Tap(block.attn.k_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = TokenState()
        for layer, block in enumerate(self):
            x, state = self._block(layer, block, x, state)
        return x

    def _block(
        self, layer: int, block: nn.Module, x: torch.Tensor, state: TokenState
    ) -> tuple[torch.Tensor, TokenState]:
        # The two residual lines of timm's Block.forward, with the reduction between them.
        bias = state.attn_bias
        if self.reducer.proportional_attention and state.sizes is not None:
            log_sizes = state.sizes.log().transpose(1, 2).unsqueeze(1)  # [B,1,1,N] on logits
            bias = log_sizes if bias is None else bias + log_sizes
        attn = block.attn
        x = x + block.drop_path1(block.ls1(attn(block.norm1(x), attn_mask=bias)))
        taps = AttentionTaps(attn.q_norm.take(), attn.k_norm.take(), attn.scale, bias, x)
        x, state = self.reducer(layer, x, state, taps)
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x, state


def _check_supported(model: nn.Module) -> None:
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    for i, block in enumerate(model.blocks):
        if type(block).forward is not Block.forward or type(block.attn) is not Attention:
            raise AdapterError(
                f"block {i} is {type(block).__name__} with {type(block.attn).__name__}; the timm "
                "ViT adapter supports timm's standard Block/Attention (ViT, DeiT, register ViTs)"
            )
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in ("token", ""):
        raise AdapterError(
            f"the model pools with global_pool={model.global_pool!r}; merged tokens would be "
            "averaged without their sizes. Supported: class-token pooling (ViT, DeiT)"
        )


@register_adapter
class TimmViTAdapter:
    """timm ``VisionTransformer`` models with standard blocks and class-token pooling."""

    family = "timm-vit"
    default_metric = "keys"  # ToMe's choice for ViTs
    methods = None

    def matches(self, model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def num_layers(self, model: nn.Module) -> int:
        return len(model.blocks)

    def num_tokens(self, model: nn.Module) -> int:
        return int(model.patch_embed.num_patches) + self.protected_tokens(model)

    def protected_tokens(self, model: nn.Module) -> int:
        return int(model.num_prefix_tokens)

    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        rows, cols = model.patch_embed.grid_size
        return int(rows), int(cols)

    def embed_dim(self, model: nn.Module) -> int:
        return int(model.embed_dim)

    def insert(self, model: nn.Module, reducer: Reducer) -> nn.Module:
        """A copy of ``model`` whose blocks call ``reducer``; the original is left untouched."""
        _check_supported(model)
        reduced = copy.deepcopy(model)
        reduced.blocks = ReducingBlocks(reduced.blocks, reducer)
        return reduced

    @contextlib.contextmanager
    def export_patches(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run timm attention on its plain path while exporting, restoring the flags after."""
        attns = [m for m in model.modules() if hasattr(m, "fused_attn")]
        saved = [m.fused_attn for m in attns]
        try:
            for m in attns:
                m.fused_attn = False
            yield model
        finally:
            for m, flag in zip(attns, saved, strict=True):
                m.fused_attn = flag

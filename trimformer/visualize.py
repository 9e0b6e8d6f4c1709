"""Show which image patches a reduction kept, pruned or merged, block by block.

Source tracking, without a copy of any method's logic: the reduced torch model runs with a
``SourceTracker`` around the method's reducer. Every trimformer op the reducer calls is replayed,
with the same arguments, on a source matrix S [B,N,P] carried beside the tokens, in place of the
tokens (every op takes the tokens first and returns them first). Row t of S says which of the P
image patches token t stands for: it starts as the identity (protected tokens: zero rows), a
selection gathers rows, a size-weighted merge averages them, so a merged token's row is its
patches' indicator divided by its size; EViT's fused token is a CLS-attention-weighted sum of
rows instead. Per block, each patch is then *kept* (its token stands for it alone), *merged*
(its token is the average of several patches), *fused* (its token is a weighted sum, not an
average: EViT's extra token) or *pruned* (no token holds it). A deletion gate keeps every token
but masks some out of attention (``TokenState.attn_bias``): the tokens the first (CLS) token
cannot attend to count as pruned.

The figure, as in ToMe's: merged patches are filled with their group's mean colour and outlined
in a colour of their own, so patches sharing both were merged together; kept patches show the
image; pruned patches are dimmed to dark grey, fused ones to dark blue. Rendering needs
matplotlib (the ``viz`` extra).
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from trimformer.errors import UsageError
from trimformer.methods import ConfigError, MethodPlan, ModelGeometry, get_method, parse_params
from trimformer.models import (
    AdapterError,
    AttentionTaps,
    ModelAdapter,
    Reducer,
    TokenState,
    adapter_for,
)
from trimformer.ops import OpSpec, OpValidationError, registered_ops
from trimformer.profiles import ReductionConfig

__all__ = [
    "FUSED",
    "KEPT",
    "MERGED",
    "PRUNED",
    "LayerSources",
    "LayerView",
    "SourceTracker",
    "VisualizeRequest",
    "VisualizeResult",
    "compose_panel",
    "figure_size",
    "group_colour",
    "layer_view",
    "track_sources",
    "visualize",
]

KEPT, MERGED, FUSED, PRUNED = range(4)
_AVERAGE_TOLERANCE = 1e-3
_PANEL_PX, _GAP_PX, _TOP_PX, _CAPTION_PX, _LEGEND_PX, _DPI = 320, 16, 40, 44, 36, 100
_MAX_DEFAULT_LAYERS = 4
_PRUNED_RGB = np.array([0.10, 0.10, 0.10])
_FUSED_RGB = np.array([0.08, 0.14, 0.40])


class _OpCalls(TorchDispatchMode):
    """Records each trimformer op called inside it, with its arguments."""

    def __init__(self) -> None:
        super().__init__()
        self._ops = {spec.torch_op: spec for spec in registered_ops().values()}
        self.calls: list[tuple[OpSpec, tuple[Any, ...]]] = []

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in self._ops:
            self.calls.append((self._ops[func], args))
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class LayerSources:
    """After one block: the source matrix [B,N,P] and the token sizes [B,N,1]."""

    layer: int
    sources: torch.Tensor
    sizes: torch.Tensor


class SourceTracker:
    """A reducer that runs another one and replays each op it calls on the source matrix.

    One tracker records one forward; ``layers`` holds what left every block.
    """

    def __init__(self, reducer: Reducer, protected: int) -> None:
        self.reducer = reducer
        self.protected = protected
        self.proportional_attention = reducer.proportional_attention
        self.layers: list[LayerSources] = []
        self._sources: torch.Tensor | None = None

    def __call__(
        self, layer: int, x: torch.Tensor, state: TokenState, taps: AttentionTaps
    ) -> tuple[torch.Tensor, TokenState]:
        if layer == 0:
            eye = torch.eye(x.shape[1] - self.protected, dtype=x.dtype, device=x.device)
            top = eye.new_zeros(self.protected, eye.shape[1])
            self._sources = torch.cat([top, eye]).expand(x.shape[0], -1, -1).contiguous()
            self.layers = []
        if self._sources is None:
            raise RuntimeError("SourceTracker must see block 0 first")
        with _OpCalls() as recorder:
            x, state = self.reducer(layer, x, state, taps)
        for spec, args in recorder.calls:
            self._sources = spec.torch_op(self._sources, *args[1:])[0]
        if state.attn_bias is not None:  # a deletion mask: what the first token cannot see is gone
            seen = state.attn_bias[:, 0, 0, :].isfinite().to(self._sources.dtype)
            self._sources = self._sources * seen.unsqueeze(-1)
        self.layers.append(LayerSources(layer, self._sources, state.sizes_or_ones(x)))
        return x, state


def track_sources(
    model: nn.Module, adapter: ModelAdapter, plan: MethodPlan, pixels: torch.Tensor, protected: int
) -> list[LayerSources]:
    """Run ``model`` reduced by ``plan`` on ``pixels`` and return the sources after each block."""
    tracker = SourceTracker(plan.reducer, protected)
    reduced = adapter.insert(model, tracker).eval()
    with torch.no_grad():
        reduced(pixels)
    return tracker.layers


@dataclass(frozen=True)
class LayerView:
    """One image's patches after one block: the token holding each (-1: none) and its kind."""

    layer: int
    tokens: int
    owner: np.ndarray  # [P] int
    kind: np.ndarray  # [P] KEPT / MERGED / FUSED / PRUNED

    def caption(self) -> str:
        counts = np.bincount(self.kind, minlength=4)
        parts = [f"{counts[KEPT]} kept"]
        if counts[MERGED]:
            groups = len(np.unique(self.owner[self.kind == MERGED]))
            parts.append(f"{counts[MERGED]} merged in {groups} group{'s' * (groups != 1)}")
        if counts[FUSED]:
            parts.append(f"{counts[FUSED]} fused")
        if counts[PRUNED]:
            parts.append(f"{counts[PRUNED]} pruned")
        return f"after block {self.layer}: {self.tokens} tokens\n" + ", ".join(parts)


def layer_view(sources: LayerSources, item: int = 0) -> LayerView:
    """Classify every patch of batch item ``item`` (see the module docstring)."""
    s = sources.sources[item].double().cpu().numpy()  # [N,P]
    sizes = sources.sizes[item, :, 0].double().cpu().numpy()
    present = s > 0
    members = present.sum(axis=1)
    weights = s * sizes[:, None]  # an averaged token: 1 on each of its patches
    averaged = np.asarray(np.where(present, np.abs(weights - 1) <= _AVERAGE_TOLERANCE, True).all(1))
    held = present.any(axis=0)
    owner = np.where(held, s.argmax(axis=0), -1)
    token = owner.clip(min=0)
    kind = np.where(~averaged[token], FUSED, np.where(members[token] == 1, KEPT, MERGED))
    kind = np.where(held, kind, PRUNED)
    return LayerView(sources.layer, s.shape[0], owner, kind)


def group_colour(token: int) -> np.ndarray:
    """A saturated RGB colour per token index; distinct indices get distinct hues."""
    return np.array(colorsys.hsv_to_rgb((token * 0.6180339887) % 1.0, 0.85, 1.0))


def _grid(patches: int, height: int, width: int) -> tuple[int, int]:
    """(rows, columns) of square patches tiling a height x width image into ``patches``."""
    side = math.isqrt(height * width // patches) if patches else 0
    if not side or height % side or width % side or (height // side) * (width // side) != patches:
        raise UsageError(
            f"cannot lay {patches} tokens out as square patches of a {height}x{width} image"
        )
    return height // side, width // side


def compose_panel(image: np.ndarray, view: LayerView, border: int = 2) -> np.ndarray:
    """The image [H,W,3] in [0, 1] drawn with ``view``'s kept, merged, fused and pruned patches."""
    height, width, _ = image.shape
    rows, cols = _grid(view.owner.size, height, width)
    ph, pw = height // rows, width // cols
    pixel_owner = np.repeat(np.repeat(view.owner.reshape(rows, cols), ph, 0), pw, 1)
    pixel_kind = np.repeat(np.repeat(view.kind.reshape(rows, cols), ph, 0), pw, 1)
    gray = image.mean(axis=-1, keepdims=True)
    out = image.copy()
    out[pixel_kind == PRUNED] = (0.25 * gray + 0.75 * _PRUNED_RGB)[pixel_kind == PRUNED]
    out[pixel_kind == FUSED] = (0.25 * gray + 0.75 * _FUSED_RGB)[pixel_kind == FUSED]
    merged = pixel_kind == MERGED
    if merged.any():
        labels = np.where(merged, pixel_owner, -1) + 1  # 0: not merged
        count = np.bincount(labels.ravel(), minlength=view.tokens + 1)
        means = (
            np.stack(
                [
                    np.bincount(labels.ravel(), image[..., c].ravel(), view.tokens + 1)
                    for c in range(3)
                ],
                axis=-1,
            )
            / np.maximum(count, 1)[:, None]
        )
        out[merged] = means[labels[merged]]
        edge = np.zeros_like(merged)
        padded = np.pad(pixel_owner, border, mode="constant", constant_values=-2)
        for dy in range(-border, border + 1):
            for dx in range(-border, border + 1):
                shifted = padded[
                    border + dy : border + dy + height, border + dx : border + dx + width
                ]
                edge |= shifted != pixel_owner
        edge &= merged
        colours = np.stack([group_colour(t) for t in range(view.tokens)])
        out[edge] = colours[pixel_owner[edge]]
    return out.clip(0.0, 1.0)


def figure_size(panels: int) -> tuple[int, int]:
    """The PNG's (width, height) in pixels for ``panels`` image panels (input included)."""
    return (
        panels * _PANEL_PX + (panels + 1) * _GAP_PX,
        _TOP_PX + _PANEL_PX + _CAPTION_PX + _LEGEND_PX,
    )


def _render(
    image: np.ndarray, views: Sequence[LayerView], title: str, output: Path
) -> tuple[int, int]:
    from PIL import Image

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise UsageError(
            "visualize needs matplotlib, trimformer's viz extra: pip install matplotlib"
        ) from None
    scale = max(1, math.ceil(_PANEL_PX / max(image.shape[:2])))
    big = Image.fromarray((image * 255).round().astype(np.uint8))
    big = big.resize((image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.BICUBIC)
    shown = np.asarray(big, dtype=np.float64) / 255.0
    panels = [("input", shown)] + [(v.caption(), compose_panel(shown, v, 2 * scale)) for v in views]
    width, height = figure_size(len(panels))
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    for i, (caption, pixels) in enumerate(panels):
        left = _GAP_PX + i * (_PANEL_PX + _GAP_PX)
        axes = figure.add_axes(
            (
                left / width,
                (_LEGEND_PX + _CAPTION_PX) / height,
                _PANEL_PX / width,
                _PANEL_PX / height,
            )
        )
        axes.imshow(pixels, interpolation="nearest")
        axes.set_axis_off()
        axes.text(0.5, -0.02, caption, transform=axes.transAxes, ha="center", va="top", fontsize=9)
    figure.suptitle(title, y=1 - 8 / height, va="top", fontsize=10)
    legend = {
        KEPT: Patch(facecolor="white", edgecolor="black", label="kept"),
        MERGED: Patch(
            facecolor="#b08060",
            edgecolor=tuple(group_colour(1)),
            linewidth=2,
            label="merged (one outline colour per group)",
        ),
        FUSED: Patch(facecolor=tuple(_FUSED_RGB), label="fused into one token"),
        PRUNED: Patch(facecolor=tuple(_PRUNED_RGB), label="pruned"),
    }
    drawn = set(np.unique(np.concatenate([v.kind for v in views]))) | {KEPT}
    handles = [patch for kind, patch in legend.items() if kind in drawn]
    figure.legend(handles=handles, loc="lower center", ncol=4, frameon=False, fontsize=9)
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(tmp, format="png", dpi=_DPI)
        tmp.replace(output)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}; choose a writable -o") from None
    finally:
        tmp.unlink(missing_ok=True)
    return width, height


@dataclass(frozen=True)
class VisualizeRequest:
    """What ``trimformer visualize`` needs, as one typed value.

    ``source`` is a bundle folder or a model name. ``reduction`` None takes the bundle's;
    ``overrides`` (e.g. r, keep) are merged into the reduction's params either way.
    """

    source: str
    image: Path
    output: Path
    reduction: ReductionConfig | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    layers: tuple[int, ...] | None = None
    checkpoint: Path | None = None
    pretrained: bool = False
    image_size: int | None = None


@dataclass(frozen=True)
class VisualizeResult:
    """What was drawn: the model, the reduction, the blocks shown, the weights, the PNG size."""

    model: str
    method: str
    params: dict[str, Any]
    layers: tuple[int, ...]
    weights: str
    size: tuple[int, int]


def _from_bundle(request: VisualizeRequest) -> tuple[str, int | None, ReductionConfig]:
    """The model id, input size and reduction a bundle was exported with."""
    from trimformer.bundle import read_manifest

    manifest = read_manifest(Path(request.source), check_hashes=False)
    try:
        model_id = manifest["model"]["id"]
        image_size = int(manifest["preprocess"]["input_size"][-1])
        recorded = manifest["reduction"]
    except (KeyError, TypeError, IndexError, ValueError):
        raise UsageError(
            f"{request.source}: the manifest lacks model or reduction; re-export"
        ) from None
    if request.reduction is not None:
        return model_id, request.image_size or image_size, request.reduction
    method = recorded.get("method", "none")
    if method == "none":
        return model_id, request.image_size or image_size, ReductionConfig(method)
    try:
        keys = {f.name for f in dataclasses.fields(get_method(method).params_type)}
    except ConfigError as exc:
        raise UsageError(f"{request.source}: {exc}") from None
    # The manifest records the plan's params: the method's own keys plus derived ones.
    params = {k: v for k, v in recorded.get("params", {}).items() if k in keys and v is not None}
    config = ReductionConfig(method, params, f"bundle {request.source}")
    return model_id, request.image_size or image_size, config


def _plan(model: nn.Module, reduction: ReductionConfig) -> tuple[ModelAdapter, MethodPlan, int]:
    try:
        adapter = adapter_for(model)
        method = get_method(reduction.method)
        params = parse_params(method.name, method.params_type, reduction.params)
        protected = adapter.protected_tokens(model)
        return adapter, method.plan(params, ModelGeometry.of(adapter, model)), protected
    except (ConfigError, AdapterError, OpValidationError) as exc:
        raise UsageError(str(exc)) from None


def _shown_layers(plan: MethodPlan, requested: tuple[int, ...] | None) -> tuple[int, ...]:
    depth = len(plan.layers)
    if requested is not None:
        bad = [i for i in requested if not 0 <= i < depth]
        if bad or not requested:
            raise UsageError(
                f"--layers {bad or '(none)'}: give zero-based blocks in 0..{depth - 1}"
            )
        return tuple(sorted(set(requested)))
    reducing = [i for i, layer in enumerate(plan.layers) if layer]
    if len(reducing) <= _MAX_DEFAULT_LAYERS:
        return tuple(reducing)
    picks = np.linspace(0, len(reducing) - 1, _MAX_DEFAULT_LAYERS).round().astype(int)
    return tuple(reducing[i] for i in sorted(set(picks)))


def visualize(request: VisualizeRequest) -> VisualizeResult:
    """Draw the request's reduction on its image and write the PNG; raises UsageError."""
    from trimformer.models.loading import ModelOptions, load_model
    from trimformer.runtime.preprocess import load_image

    if not request.image.is_file():
        raise UsageError(f"image {request.image} is not a file; pass an image file")
    if Path(request.source).is_dir():
        model_id, image_size, reduction = _from_bundle(request)
    elif request.reduction is None:
        raise UsageError("name a reduction for a model: --method NAME or --config PROFILE")
    else:
        model_id, image_size, reduction = request.source, request.image_size, request.reduction
    if reduction.method == "none":
        raise UsageError("method none reduces nothing to show; choose a method")
    reduction = dataclasses.replace(reduction, params={**reduction.params, **request.overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights: the same figure on every run
        loaded = load_model(
            model_id, ModelOptions(request.checkpoint, request.pretrained, image_size)
        )
    adapter, plan, protected = _plan(loaded.model, reduction)
    layers = _shown_layers(plan, request.layers)
    if not layers:
        raise UsageError(f"{reduction.method} with these params reduces no block; nothing to show")
    pixels = torch.from_numpy(load_image(request.image, loaded.preprocess))[None]
    sources = track_sources(loaded.model, adapter, plan, pixels, protected)
    mean = np.asarray(loaded.preprocess["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(loaded.preprocess["std"], dtype=np.float32).reshape(-1, 1, 1)
    image = (pixels[0].numpy() * std + mean).clip(0, 1).transpose(1, 2, 0)
    if image.shape[-1] == 1:
        image = image.repeat(3, axis=-1)
    views = [layer_view(sources[i]) for i in layers]
    weights = loaded.weights if loaded.weights != "random" else "random weights"
    title = f"{model_id} · {reduction.method} ({reduction.source}) · {weights}"
    size = _render(image.astype(np.float64), views, title, request.output)
    return VisualizeResult(model_id, plan.method, plan.params, layers, loaded.weights, size)

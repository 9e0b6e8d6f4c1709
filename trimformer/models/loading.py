"""Build a model by name, with random weights, a local checkpoint, or the hub's pretrained weights.

Checkpoints load safely: safetensors, or a torch file through ``torch.load(weights_only=True)``,
which refuses pickled code. Nothing here needs a network unless ``pretrained`` is asked for.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trimformer.errors import UsageError

__all__ = ["LoadedModel", "load_checkpoint", "load_model"]

log = logging.getLogger(__name__)

_TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to adapt, where it came from, and how to preprocess its inputs."""

    model: nn.Module
    model_id: str
    source: str  # "timm" or "local-dir"
    weights: str  # "random", "pretrained", "checkpoint:<file name>" or "local-dir"
    preprocess: dict


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a weights-only torch file; never run pickled code."""
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist; pass an existing --checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UsageError(f"checkpoint {path} is not a valid safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"checkpoint {path} cannot be loaded safely as weights ({first[:160]}); "
            "use a .safetensors file or a torch state dict of tensors"
        ) from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"checkpoint {path} is not a state dict of tensors")
    return state


def _num_classes(state: dict[str, torch.Tensor]) -> int | None:
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


def load_model(
    name: str,
    checkpoint: Path | None = None,
    pretrained: bool = False,
    image_size: int | None = None,
) -> LoadedModel:
    """Create a timm model by name (``NAME`` or ``timm:NAME``) or from a folder, in eval mode.

    A folder holding config.json and weights (timm's local-dir format, as ``save_for_hf``
    writes it) carries its own architecture and weights, so it takes no other source of weights.
    """
    import timm

    if Path(name).is_dir():
        return _load_folder(Path(name), checkpoint, pretrained, image_size)
    model_id = name.removeprefix(_TIMM_PREFIX)
    if not timm.is_model(model_id):
        close = difflib.get_close_matches(model_id, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see `timm.list_models()`"
        raise UsageError(f"unknown model {name!r}; {hint}")
    if checkpoint is not None and pretrained:
        raise UsageError("--checkpoint and --pretrained both set; choose one source of weights")
    kwargs: dict = {}
    if image_size is not None:
        if image_size <= 0:
            raise UsageError(f"--image-size must be positive, got {image_size}")
        kwargs["img_size"] = image_size
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if state is not None and (classes := _num_classes(state)) is not None:
        kwargs["num_classes"] = classes
    try:
        model = timm.create_model(model_id, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as exc:  # hub unreachable, no cached weights
        if not pretrained:
            raise
        raise UsageError(
            f"--pretrained could not fetch weights for {model_id} ({type(exc).__name__}); "
            "connect to the network or pass --checkpoint FILE"
        ) from None
    if state is not None:
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise UsageError(
                f"checkpoint {checkpoint} does not fit {model_id}: "
                f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:2]}), "
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
            )
        weights = f"checkpoint:{checkpoint.name}"
    elif pretrained:
        weights = "pretrained"
    else:
        weights = "random"
        log.warning("%s: no weights given, using random weights (pass --checkpoint FILE)", model_id)
    return LoadedModel(model.eval(), model_id, "timm", weights, _preprocess(model, image_size))


def _preprocess(model: nn.Module, image_size: int | None) -> dict:
    """timm's eval data config of ``model`` as JSON-ready values."""
    import timm.data

    config = timm.data.resolve_data_config({}, model=model)
    if image_size is not None:  # the pretrained config still names the default resolution
        config["input_size"] = (config["input_size"][0], image_size, image_size)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _load_folder(
    folder: Path, checkpoint: Path | None, pretrained: bool, image_size: int | None
) -> LoadedModel:
    """Rebuild a model saved in timm's local-dir format (config.json + model.safetensors)."""
    import timm

    if not (folder / "config.json").is_file():
        raise UsageError(
            f"{folder} is a folder without config.json; pass a timm model name or a folder "
            "saved in timm's local-dir format (config.json + model.safetensors)"
        )
    if checkpoint is not None or pretrained:
        raise UsageError(
            f"{folder} holds its own weights; drop --checkpoint/--pretrained to use them"
        )
    if image_size is not None:
        raise UsageError(f"{folder} fixes its input size; drop --image-size")
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:  # bad config, missing weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"{folder} cannot be loaded as a timm local-dir model ({first[:160]}); it needs "
            "config.json and model.safetensors as timm's save_for_hf writes them"
        ) from None
    return LoadedModel(
        model.eval(), str(folder), "local-dir", "local-dir", _preprocess(model, None)
    )

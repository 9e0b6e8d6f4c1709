"""Build a model by name, with random weights, a local checkpoint, or the hub's pretrained weights.

Sources: a timm name (``NAME`` or ``timm:NAME``), a timm folder (``config.json`` naming an
``architecture`` + ``model.safetensors``), or a Hugging Face model (``hf:ORG/NAME`` or a
``save_pretrained`` / sentence-transformers folder; see hf_loading). Checkpoints load safely:
safetensors, or a torch file through ``torch.load(weights_only=True)``, which refuses pickled
code. Nothing here needs a network unless ``pretrained`` or a hub id is asked for.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from trimformer.errors import UsageError, first_line
from trimformer.models.base import GraphIO

__all__ = ["LoadedModel", "ModelOptions", "load_checkpoint", "load_model"]

log = logging.getLogger(__name__)

_TIMM_PREFIX = "timm:"
_HF_PREFIX = "hf:"


@dataclass(frozen=True)
class ModelOptions:
    """How to build the model and the shapes of its exported inputs."""

    checkpoint: Path | None = None
    pretrained: bool = False
    image_size: int | None = None
    seq_len: int | None = None
    batch: int | None = None  # None: dynamic batch dimension

    @property
    def example_batch(self) -> int:
        """Batch of the example inputs: >= 2 when dynamic, so torch does not specialise it."""
        return 2 if self.batch is None else self.batch


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to adapt, where it came from, its graph inputs, and how to preprocess them."""

    model: nn.Module
    model_id: str
    source: str  # "timm" or "hf"
    weights: str  # "random", "pretrained", "checkpoint:<file name>" or "folder:<name>"
    preprocess: dict
    io: GraphIO
    num_classes: int | None = None
    assets: dict[str, Callable[[Path], None]] = field(default_factory=dict)


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
        raise UsageError(
            f"checkpoint {path} cannot be loaded safely as weights ({first_line(exc)[:160]}); "
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


def _folder_kind(path: Path) -> str | None:
    """ "timm" or "hf" for a model folder, None when ``path`` is not one."""
    config = path / "config.json"
    if (path / "modules.json").is_file():
        return "hf"
    if not config.is_file():
        return None
    try:
        keys = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{config} is not valid JSON ({exc}); fix or re-save the model") from None
    if "architecture" in keys:
        return "timm"
    return "hf" if "model_type" in keys else None


def load_model(name: str, options: ModelOptions | None = None) -> LoadedModel:
    """Build the model ``name`` names (see the module docstring), in eval mode."""
    options = options or ModelOptions()
    if options.checkpoint is not None and options.pretrained:
        raise UsageError("--checkpoint and --pretrained both set; choose one source of weights")
    path = Path(name)
    kind = _folder_kind(path) if path.is_dir() else None
    if path.is_dir() and kind is None:
        raise UsageError(
            f"{name} is a folder but holds no model: expected a timm folder (config.json with "
            "'architecture' + model.safetensors) or a Hugging Face / sentence-transformers folder"
        )
    if kind == "hf" or name.startswith(_HF_PREFIX):
        from trimformer.models.hf_loading import load_hf_model

        return load_hf_model(name, options)
    return _load_timm(name, options, folder=path if kind == "timm" else None)


def _load_timm(name: str, options: ModelOptions, folder: Path | None) -> LoadedModel:
    """A timm model by name (``NAME`` or ``timm:NAME``) or from a timm folder."""
    import timm
    import timm.data

    checkpoint, pretrained, image_size = options.checkpoint, options.pretrained, options.image_size
    if options.seq_len is not None:
        raise UsageError("--seq-len is for text models; image models take --image-size")
    model_id = folder.name if folder is not None else name.removeprefix(_TIMM_PREFIX)
    if folder is None and not timm.is_model(model_id):
        close = difflib.get_close_matches(model_id, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see `timm.list_models()`"
        raise UsageError(f"unknown model {name!r}; {hint}")
    if folder is not None and (pretrained or checkpoint is not None):
        raise UsageError(f"{folder} holds its own weights; drop --checkpoint/--pretrained")
    kwargs: dict = {}
    if image_size is not None:
        if image_size <= 0:
            raise UsageError(f"--image-size must be positive, got {image_size}")
        kwargs["img_size"] = image_size
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if state is not None and (classes := _num_classes(state)) is not None:
        kwargs["num_classes"] = classes
    try:
        if folder is not None:  # timm reads config.json and the weights next to it
            model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True, **kwargs)
        else:
            model = timm.create_model(model_id, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:  # no hub, bad folder
        if folder is not None:
            raise UsageError(
                f"{folder} cannot be loaded as a timm local-dir model ({first_line(exc)[:160]}); "
                "it needs "
                "config.json and model.safetensors as timm's save_for_hf writes them"
            ) from None
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
    elif folder is not None:
        weights = f"folder:{folder.name}"
    elif pretrained:
        weights = "pretrained"
    else:
        weights = "random"
        log.warning("%s: no weights given, using random weights (pass --checkpoint FILE)", model_id)
    config = timm.data.resolve_data_config({}, model=model)
    if image_size is not None:  # the pretrained config still names the default resolution
        config["input_size"] = (config["input_size"][0], image_size, image_size)
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    example = torch.randn(options.example_batch, *config["input_size"])
    io = GraphIO.image(example, dynamic_batch=options.batch is None)
    return LoadedModel(
        model.eval(), model_id, "timm", weights, preprocess, io, int(model.num_classes)
    )

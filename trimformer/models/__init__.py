"""Model-family adapters and model loading."""

from __future__ import annotations

from trimformer.models import hf_clip_text as _hf_clip_text  # noqa: F401  (registers the adapter)
from trimformer.models import hf_llava as _hf_llava  # noqa: F401  (registers the adapter)
from trimformer.models import hf_text as _hf_text  # noqa: F401  (registers the adapter)
from trimformer.models import hf_vision as _hf_vision  # noqa: F401  (registers the adapters)
from trimformer.models import timm_vit as _timm_vit  # noqa: F401  (registers the adapter)
from trimformer.models.base import (
    AdapterError,
    AttentionTaps,
    GraphIO,
    ModelAdapter,
    Reducer,
    TokenState,
    adapter_for,
    registered_adapters,
)

__all__ = [
    "AdapterError",
    "AttentionTaps",
    "GraphIO",
    "ModelAdapter",
    "Reducer",
    "TokenState",
    "adapter_for",
    "registered_adapters",
]

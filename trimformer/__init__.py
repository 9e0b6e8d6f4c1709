"""trimformer: zero-shot token merging and pruning for transformers, exported to any device."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]

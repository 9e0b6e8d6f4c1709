"""Zero-shot token-reduction methods, configured by data."""

from __future__ import annotations

from trimformer.methods import divprune as _divprune  # noqa: F401  (registers the method)
from trimformer.methods import evit as _evit  # noqa: F401  (registers the method)
from trimformer.methods import group_merge as _group_merge  # noqa: F401  (registers the method)
from trimformer.methods import hired as _hired  # noqa: F401  (registers the method)
from trimformer.methods import mrt5_gate as _mrt5_gate  # noqa: F401  (registers the method)
from trimformer.methods import positions as _positions  # noqa: F401  (registers the methods)
from trimformer.methods import todre as _todre  # noqa: F401  (registers the method)
from trimformer.methods import tome as _tome  # noqa: F401  (registers the method)
from trimformer.methods import zero_tprune as _zero_tprune  # noqa: F401  (registers the method)
from trimformer.methods.base import (
    ConfigError,
    Method,
    MethodPlan,
    ModelGeometry,
    get_method,
    parse_params,
    registered_methods,
    with_method_inputs,
)

__all__ = [
    "ConfigError",
    "Method",
    "MethodPlan",
    "ModelGeometry",
    "get_method",
    "parse_params",
    "registered_methods",
    "with_method_inputs",
]

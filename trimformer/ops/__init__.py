"""Token-reduction ops: each declared once with its spec, torch, ONNX-function and plugin faces."""

from __future__ import annotations

from trimformer.ops import bipartite_merge as _bipartite_merge  # noqa: F401  (registers the op)
from trimformer.ops import diverse_select as _diverse_select  # noqa: F401  (registers the op)
from trimformer.ops import topk_select as _topk_select  # noqa: F401  (registers the op)
from trimformer.ops.registry import (
    DOMAIN,
    MAX_OPSET,
    MIN_OPSET,
    AttributeSpec,
    OpSpec,
    OpValidationError,
    domain_version,
    get_op,
    registered_ops,
)

__all__ = [
    "DOMAIN",
    "MAX_OPSET",
    "MIN_OPSET",
    "AttributeSpec",
    "OpSpec",
    "OpValidationError",
    "domain_version",
    "get_op",
    "registered_ops",
]

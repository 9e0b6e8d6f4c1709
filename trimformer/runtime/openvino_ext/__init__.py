"""trimformer's ops in OpenVINO: a bundle's ONNX graph read as it is, its reductions fused.

OpenVINO's ONNX frontend has no rule for ONNX model-local functions, so a bundle's
``trimformer``-domain nodes need one of two things:

- **fused**: the C++ library in ``csrc/`` (``trimformer openvino build``, or built on first use
  into the user cache, ~5 s) registers each op it implements as an OpenVINO op with its kernel,
  and as the ONNX frontend's conversion of the node of that name in domain ``trimformer``;
- **decomposed**: the op's ONNX function (which the bundle carries) is inlined into standard
  ONNX ops before OpenVINO reads the graph.

``read_model`` fuses what the library implements at the model's op version and decomposes the
rest (an op without a C++ face yet, or a bundle of an older op version). The nodes that come
from an inlined function are named ``trimformer.<Op>/...``, which is how ``float_scopes`` keeps
them out of int8 quantization (the matching and ranking decide which tokens survive).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from trimformer.ops.registry import DOMAIN
from trimformer.runtime.openvino_ext.library import (
    FUSED_OPS,
    build_library,
    built_library,
    library_status,
)

__all__ = [
    "FUSED_OPS",
    "MODES",
    "ExtensionInfo",
    "add_extensions",
    "build_library",
    "built_library",
    "float_scopes",
    "library_status",
    "read_model",
]

MODES = ("auto", "fused", "decomposed")
_log = logging.getLogger("trimformer")
_INLINED_PREFIX = f"{DOMAIN}."


@dataclass(frozen=True)
class ExtensionInfo:
    """How a core runs trimformer's ops: ``mode`` "fused" (``fused_ops`` from ``library``) or
    "decomposed" (none fused)."""

    mode: str
    library: Path | None = None
    fused_ops: Mapping[str, int] | None = None


def add_extensions(core: Any, mode: str = "auto") -> ExtensionInfo:
    """Give ``core`` trimformer's fused ops (``mode`` "fused": build the library if needed, a
    UsageError where it cannot be; "auto": the same, falling back to decomposed ops with one
    warning; "decomposed": nothing)."""
    from trimformer.errors import RuntimeFailure, UsageError

    if mode not in MODES:
        raise UsageError(f"unknown extensions mode {mode!r}; choose from {', '.join(MODES)}")
    if mode == "decomposed":
        return ExtensionInfo("decomposed")
    try:
        library = built_library() or build_library()
    except (UsageError, RuntimeFailure) as exc:
        if mode == "fused":
            raise
        _log.warning("OpenVINO runs trimformer's ops decomposed (slower): %s", exc)
        return ExtensionInfo("decomposed")
    core.add_extension(str(library))
    return ExtensionInfo("fused", library, dict(FUSED_OPS))


def read_model(core: Any, path: Path, extension: ExtensionInfo) -> Any:
    """An OpenVINO model of ``path``: OpenVINO IR (.xml), or a bundle's ONNX graph with every
    trimformer op fused (where ``extension`` has it at the model's op version) or inlined."""
    path = Path(path)
    if path.suffix == ".xml":
        return core.read_model(str(path))
    proto = onnx.load(str(path), load_external_data=False)
    inline = _decomposed_ops(proto, extension)
    if not inline:
        return core.read_model(str(path))
    import numpy as np
    import openvino
    from onnx import inliner

    onnx.load_external_data_for_model(proto, str(path.parent))
    for function in proto.functions:
        if function.domain == DOMAIN and function.name in inline:
            for index, node in enumerate(function.node):
                node.name = f"{_INLINED_PREFIX}{function.name}/{node.name or index}"
    selected = [(DOMAIN, name) for name in sorted(inline)]
    flat = inliner.inline_selected_functions(proto, selected, exclude=False)
    return core.read_model(flat.SerializeToString(), openvino.Tensor(np.zeros(0, np.uint8)))


def _decomposed_ops(proto: onnx.ModelProto, extension: ExtensionInfo) -> set[str]:
    """The trimformer ops of ``proto`` that must be inlined: not in the library, or the model
    imports the domain at a version older than the one the library's op implements."""
    version = next((o.version for o in proto.opset_import if o.domain == DOMAIN), 0)
    fused = extension.fused_ops or {}
    used = {node.op_type for node in proto.graph.node if node.domain == DOMAIN}
    return {op for op in used if op not in fused or version < fused[op]}


def float_scopes(model: Any) -> list[str]:
    """Regular expressions of the node names of ``model`` (read by ``read_model``) that belong
    to trimformer's ops: the fused op nodes and the nodes of inlined functions, which int8
    quantization must leave in float."""
    fused = {
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_info().version_id.startswith(f"{DOMAIN}_")
    }
    patterns = [f"^{re.escape(name)}$" for name in sorted(fused)]
    if any(op.get_friendly_name().startswith(_INLINED_PREFIX) for op in model.get_ordered_ops()):
        patterns.append(f"^{re.escape(_INLINED_PREFIX)}")
    return patterns

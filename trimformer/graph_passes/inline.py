"""inline: replace every trimformer function call by the function's body.

For runtimes and tools that reject model-local functions. onnx's own inliner does the work,
restricted to our domain, so other model-local functions are left as they are.

requires  every trimformer call has its function definition in the model
ensures   no trimformer node and no trimformer function remains; the domain's import is gone;
          metadata ``trimformer.inlined`` names the inlined ops (so fp16 can refuse to turn
          their bodies, no longer recognisable, into FP16)
"""

from __future__ import annotations

from collections import Counter

import onnx
import onnx.inliner

from trimformer.graph_passes.base import (
    GraphPass,
    PassError,
    PassResult,
    PostconditionError,
    drop_opset_if_unused,
    iter_node_scopes,
    register_pass,
)
from trimformer.graph_passes.model_io import is_large
from trimformer.ops import DOMAIN

__all__ = ["INLINE", "INLINED_KEY", "inline_functions"]

_NAME = "inline"
INLINED_KEY = "trimformer.inlined"
"""Model metadata key: comma-separated names of the trimformer ops whose bodies were inlined."""


def _calls(model: onnx.ModelProto) -> Counter[str]:
    return Counter(
        node.op_type
        for nodes, _ in iter_node_scopes(model)
        for node in nodes
        if node.domain == DOMAIN
    )


def inline_functions(model: onnx.ModelProto) -> PassResult:
    """Inline every trimformer function call; drop the then-unused definitions and import."""
    calls = _calls(model)
    defined = {f.name for f in model.functions if f.domain == DOMAIN}
    missing = sorted(set(calls) - defined)
    if missing:
        raise PassError(
            f"{_NAME}: the model calls {', '.join(missing)} but has no function definition for "
            "it; re-export the model (the exporter attaches every op's function)"
        )
    if is_large(model):
        raise PassError(
            f"{_NAME}: the model is over protobuf's 2 GiB, which onnx's inliner cannot take; "
            "keep the function calls (TensorRT's parser expands them) or run to-plugins"
        )
    out = onnx.inliner.inline_selected_functions(
        model, [(DOMAIN, name) for name in sorted(defined)]
    )
    # The inliner drops the definitions it inlined; one never called is dead weight, too.
    kept = [f for f in out.functions if f.domain != DOMAIN]
    del out.functions[:]
    out.functions.extend(kept)
    drop_opset_if_unused(out, DOMAIN)
    if calls:
        _record_inlined(out, set(calls))
    return PassResult(
        _NAME,
        out,
        modified=bool(calls or defined),
        counts={"calls_inlined": sum(calls.values()), "functions_removed": len(defined)},
    )


def _record_inlined(model: onnx.ModelProto, names: set[str]) -> None:
    for prop in model.metadata_props:
        if prop.key == INLINED_KEY:
            prop.value = ",".join(sorted(names | set(prop.value.split(","))))
            return
    model.metadata_props.add(key=INLINED_KEY, value=",".join(sorted(names)))


def _ensure(model: onnx.ModelProto) -> None:
    if _calls(model) or any(f.domain == DOMAIN for f in model.functions):
        raise PostconditionError(f"{_NAME}: trimformer calls or functions remain after inlining")


INLINE = register_pass(
    GraphPass(
        _NAME,
        inline_functions,
        requires="every trimformer call has its function definition in the model",
        ensures="no trimformer node or function remains; only standard (and foreign) ops",
        ensure=_ensure,
    )
)

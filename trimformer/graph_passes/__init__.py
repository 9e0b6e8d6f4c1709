"""Graph passes: small pure rewrites of an exported ONNX model, composed into a pipeline.

``run_passes(model, ["cleanup", "fp16", "to-plugins", "lint"])`` runs passes by name; each
returns a ``PassResult`` (new model, modified, counts). One pass per module:

- ``inline``      trimformer function calls -> their bodies, for runtimes that reject functions
- ``to-plugins``  trimformer function calls -> TensorRT plugin nodes (domain ``trt.plugins``)
- ``cleanup``     (alias ``fold``) constant folding, dead-node removal, sort, shape inference
- ``fp16``        FP16 with LayerNormalization, Softmax and our ops kept in FP32
- ``lint``        our nodes match registered ops; a report of what runs where

``reference`` runs plugin graphs on CPU through each op's reference implementation;
``model_io`` checks and shape-infers models past protobuf's 2 GiB limit (through files).
"""

from __future__ import annotations

from trimformer.graph_passes.base import (
    PLUGIN_DOMAIN,
    PLUGIN_NAMESPACE,
    GraphPass,
    PassError,
    PassResult,
    PostconditionError,
    get_pass,
    register_pass,
    registered_passes,
    run_passes,
)
from trimformer.graph_passes.cleanup import cleanup
from trimformer.graph_passes.fp16 import convert_fp16
from trimformer.graph_passes.inline import inline_functions
from trimformer.graph_passes.lint import LintReport, OpCount, lint, lint_model
from trimformer.graph_passes.to_plugins import to_plugins

__all__ = [
    "PLUGIN_DOMAIN",
    "PLUGIN_NAMESPACE",
    "GraphPass",
    "LintReport",
    "OpCount",
    "PassError",
    "PassResult",
    "PostconditionError",
    "cleanup",
    "convert_fp16",
    "get_pass",
    "inline_functions",
    "lint",
    "lint_model",
    "register_pass",
    "registered_passes",
    "run_passes",
    "to_plugins",
]

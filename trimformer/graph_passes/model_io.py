"""ONNX checks and shape inference that also work past protobuf's 2 GiB message limit.

``onnx.checker.check_model`` and ``onnx.shape_inference.infer_shapes`` serialise the model they
are given, which protobuf refuses over 2 GiB (a ViT-H, an LLM-backed VLM). onnx's documented way
around it is a model file with its weights beside it: ``saved_onnx`` writes one (leaving the
model as it was), and ``check_model`` / ``infer_shapes`` take that route for large models.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

__all__ = ["PROTOBUF_LIMIT", "check_model", "infer_shapes", "is_large", "saved_onnx"]

PROTOBUF_LIMIT = 2**31 - 2**20  # protobuf's 2 GiB, less headroom for the model's other fields


@contextlib.contextmanager
def saved_onnx(model: onnx.ModelProto) -> Iterator[Path]:
    """``model`` saved in a temporary directory with its weights in ``weights.bin`` beside it.

    onnx's save moves the weights out of ``model`` into the file; they are read back into it
    before the directory goes, so the caller's model is unchanged afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="trimformer-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            onnx.save_model(model, path, save_as_external_data=True, location="weights.bin")
            yield path
        finally:
            _restore_weights(model.graph, tmp)


def _restore_weights(graph: onnx.GraphProto, folder: str) -> None:
    """Undo onnx's save on ``graph`` (and its subgraphs): read back the tensors it moved out; a
    tensor it had not yet moved (a save cut short, e.g. by a full disk) keeps its own data."""
    for tensor in graph.initializer:
        if uses_external_data(tensor):
            if not tensor.HasField("raw_data"):
                load_external_data_for_tensor(tensor, folder)
            tensor.ClearField("data_location")
            del tensor.external_data[:]
    for node in graph.node:
        for attribute in node.attribute:
            single = [attribute.g] if attribute.HasField("g") else []
            for subgraph in [*single, *attribute.graphs]:
                _restore_weights(subgraph, folder)


def is_large(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is past what protobuf serialises in memory."""
    return model.ByteSize() > PROTOBUF_LIMIT


def check_model(model: onnx.ModelProto) -> None:
    """``onnx.checker.check_model``, through a file when ``model`` is over the limit."""
    if not is_large(model):
        onnx.checker.check_model(model)
        return
    with saved_onnx(model) as path:
        onnx.checker.check_model(str(path))


def infer_shapes(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """``model`` with inferred shapes (non-strict), through files when it is over the limit."""
    if not is_large(model):
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=data_prop)
    with saved_onnx(model) as path:
        inferred = path.with_name("inferred.onnx")
        onnx.shape_inference.infer_shapes_path(
            str(path), str(inferred), strict_mode=False, data_prop=data_prop
        )
        return onnx.load(inferred)  # its weights are read from weights.bin, beside it

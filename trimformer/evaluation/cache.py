"""Work a sweep or a tune does once instead of at every point: reading the data, and running the
full model on it.

Every point of a sweep exports the same model with another reduction, so its full graph and the
inputs made from the data are the same each time. ``EvalCache`` keeps the prepared inputs in
memory (keyed by the data and by how the bundle preprocesses it) and the full graph's outputs on
disk (keyed by the graph's own content, its weights' bytes, the runtime and the data's
fingerprint): a graph that differs in any weight or node, or data that changed, misses.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trimformer.errors import UsageError
from trimformer.evaluation.sources import Prepared
from trimformer.runtime.options import RuntimeOptions

__all__ = ["EvalCache", "graph_fingerprint", "outputs_key"]


class EvalCache:
    """Prepared data in memory and full-graph outputs under ``folder`` (memory only: None)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._prepared: dict[tuple[Any, ...], Prepared] = {}
        self.hits = 0
        self.misses = 0

    def prepared(self, key: tuple[Any, ...], make: Callable[[], Prepared]) -> Prepared:
        """The data prepared under ``key``, made on first use."""
        if key not in self._prepared:
            self._prepared[key] = make()
        return self._prepared[key]

    def outputs(self, key: str, make: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """(the outputs stored under ``key``, or made now and stored; whether they were stored)."""
        path = self.folder / f"{key}.npy" if self.folder is not None else None
        if path is not None and path.is_file():
            try:
                outputs = np.load(path, allow_pickle=False)
                self.hits += 1
                return outputs, True
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a damaged entry is made again
        self.misses += 1
        outputs = make()
        if path is not None:
            _save(path, outputs)
        return outputs, False


def _save(path: Path, outputs: np.ndarray) -> None:
    """Write ``outputs`` to a temporary file beside ``path``, then rename it into place."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
        with os.fdopen(handle, "wb") as out:
            np.save(out, outputs, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(
            f"cannot write the full-output cache in {path.parent} ({exc.strerror}); "
            "make it writable or choose another -o"
        ) from None


def outputs_key(graph: str, runtime: RuntimeOptions, prepared: Prepared, batch: int) -> str:
    """The cache key of one graph's outputs on ``prepared``'s data at ``runtime``."""
    text = repr((graph, runtime, prepared.fingerprint, prepared.output, batch))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def graph_fingerprint(
    bundle: Path, manifest: Mapping[str, Any], graph: str, runtime: RuntimeOptions
) -> str:
    """A hash of what ``graph`` computes at ``runtime``: for int8, the quantized files' sha256;
    otherwise its ONNX nodes and attributes (without where in weights.bin its tensors lie) and
    the bytes of each of its tensors."""
    import onnx

    if runtime.precision == "int8":
        from trimformer.runtime.precision import quantized_entry

        config = next(
            (name for name, c in (manifest.get("configs") or {}).items() if c["graph"] == graph),
            graph,
        )
        entry = quantized_entry(bundle, manifest, config, runtime.backend)
        return repr(sorted((k, f.get("sha256")) for k, f in entry["files"].items()))
    digest = hashlib.sha256()
    model = onnx.load(bundle / f"{graph}.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            del tensor.external_data[:]
    digest.update(model.SerializeToString(deterministic=True))
    shared = manifest.get("shared_weights") or {}
    uses = (shared.get("graphs") or {}).get(graph, {})
    tensors = shared.get("tensors") or []
    with (bundle / str(shared.get("file", "weights.bin"))).open("rb") as weights:
        for name in sorted(uses):
            record = tensors[uses[name]]
            weights.seek(record["offset"])
            digest.update(name.encode() + b"\0" + weights.read(record["bytes"]))
    return digest.hexdigest()

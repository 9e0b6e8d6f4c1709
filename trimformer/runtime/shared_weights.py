"""A bundle's weights read once from weights.bin, as ONNX Runtime values every graph can share.

The manifest's ``shared_weights`` says where each graph's initializers lie in weights.bin. Each
stored tensor is read once into a numpy array, wrapped without a copy in an ``OrtValue`` and
handed to the session of every graph that uses it (``SessionOptions.add_initializer``). ONNX
Runtime then uses that buffer instead of loading its own copy, so N graphs of one model hold
their weights once. The arrays must outlive every session given them: ``initializers`` returns
the values, and the caller keeps them beside the session.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from trimformer.bundle import WEIGHTS
from trimformer.errors import UsageError

__all__ = ["SharedWeights"]


class SharedWeights:
    """The tensors of one bundle's weights.bin, each read on first use and then shared."""

    def __init__(self, bundle: Path, table: Mapping[str, Any]) -> None:
        self._bundle = bundle
        self._path = bundle / WEIGHTS
        self._tensors: list[tuple[int, np.dtype, tuple[int, ...]]] = []
        self._graphs: dict[str, dict[str, int]] = {}
        self._values: dict[int, ort.OrtValue] = {}
        self._lock = threading.Lock()
        try:
            self._parse(table)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"{bundle}: manifest entry shared_weights is malformed ({exc}); re-export the "
                "bundle"
            ) from None

    @classmethod
    def of(cls, bundle: Path, manifest: Mapping[str, Any]) -> SharedWeights | None:
        """The bundle's shared weights, or None for a bundle written without the table."""
        table = manifest.get("shared_weights")
        return None if table is None else cls(bundle, table)

    def _parse(self, table: Mapping[str, Any]) -> None:
        if table["file"] != WEIGHTS:
            raise ValueError(f"file is {table['file']!r}, not {WEIGHTS}")
        size = self._path.stat().st_size if self._path.is_file() else 0
        for entry in table["tensors"]:
            offset, length, shape = entry["offset"], entry["bytes"], tuple(entry["shape"])
            if not all(isinstance(v, int) and v >= 0 for v in (offset, length, *shape)):
                raise ValueError(f"tensor entry {entry!r} has a non-integer field")
            if offset + length > size:
                raise ValueError(f"a tensor at {offset} + {length} bytes lies past {WEIGHTS}")
            try:
                dtype = np.dtype(entry["dtype"])
            except TypeError:  # a dtype numpy lacks (bfloat16): ONNX Runtime loads it itself
                dtype = None
            if dtype is not None and math.prod(shape) * dtype.itemsize != length:
                raise ValueError(f"tensor entry {entry!r}: shape and dtype do not make its bytes")
            self._tensors.append((offset, dtype, shape))
        for graph, uses in table["graphs"].items():
            if not all(isinstance(i, int) and 0 <= i < len(self._tensors) for i in uses.values()):
                raise ValueError(f"graph {graph!r} names a tensor that is not listed")
            self._graphs[graph] = dict(uses)

    def initializers(self, graph: str) -> dict[str, ort.OrtValue]:
        """Initializer name -> shared value for ``graph`` (empty when the table lacks it)."""
        out = {}
        with self._lock:
            for name, index in self._graphs.get(graph, {}).items():
                offset, dtype, shape = self._tensors[index]
                if dtype is None:
                    continue
                if index not in self._values:
                    count = math.prod(shape)
                    array = np.fromfile(self._path, dtype=dtype, count=count, offset=offset)
                    # the OrtValue keeps a reference to the array, whose buffer it uses
                    self._values[index] = ort.OrtValue.ortvalue_from_numpy(array.reshape(shape))
                out[name] = self._values[index]
        return out

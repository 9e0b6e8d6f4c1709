"""The inputs a quantizer calibrates on, fed in the batches a graph takes.

Static int8 needs activation ranges, measured by running the float graph on representative
inputs. A ``CalibrationSet`` holds those inputs (name -> array, one row per example), says
where they came from, and hashes them, so the manifest can record exactly what calibrated a
graph.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trimformer.errors import UsageError

__all__ = ["CalibrationSet"]


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration inputs (name -> array, rows = examples) and the data set they came from."""

    data: str
    inputs: Mapping[str, np.ndarray]

    @property
    def items(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def sha256(self) -> str:
        """A hash of the arrays (names, dtypes, shapes, bytes), in name order."""
        digest = hashlib.sha256()
        for name in sorted(self.inputs):
            array = np.ascontiguousarray(self.inputs[name])
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def record(self) -> dict[str, Any]:
        """What the manifest says of it."""
        return {"data": self.data, "items": self.items, "sha256": self.sha256}

    def batches(
        self, names: Sequence[str], batch: int, fixed: bool = False
    ) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of the inputs ``names`` in batches of ``batch`` rows; with ``fixed`` (a graph
        of a static batch size) a short last batch is filled up with its own last row."""
        missing = [name for name in names if name not in self.inputs]
        if missing:
            raise UsageError(
                f"the calibration data ({self.data}) has no input {', '.join(map(repr, missing))}"
                f" that the graph takes; calibrate with data of this model's inputs"
            )
        for start in range(0, self.items, batch):
            feed = {}
            for name in names:
                rows = self.inputs[name][start : start + batch]
                if fixed and len(rows) < batch:
                    rows = np.concatenate([rows, np.repeat(rows[-1:], batch - len(rows), 0)])
                feed[name] = rows
            yield feed

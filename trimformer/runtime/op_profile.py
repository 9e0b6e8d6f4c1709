"""Where a bundle's time goes: the share of runtime spent in trimformer's reduction ops.

ONNX Runtime inlines model-local functions and names the inlined nodes ``_inlfunc_<Op>_...``,
so its profiler attributes every kernel either to a reduction op or to the model itself.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from trimformer.runtime.bench import random_inputs
from trimformer.runtime.session import Session

__all__ = ["OpProfile", "profile_ops"]

_INLINED = re.compile(r"_inlfunc_([A-Za-z0-9]+)_")


@dataclass(frozen=True)
class OpProfile:
    """Kernel time per run (ms): in total, in each reduction op, and the reductions' share."""

    total_ms: float
    reduction_ms: dict[str, float]
    runs: int

    @property
    def reduction_share(self) -> float:
        return sum(self.reduction_ms.values()) / self.total_ms if self.total_ms else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "total_ms": self.total_ms,
            "reduction_ms": self.reduction_ms,
            "reduction_share": self.reduction_share,
            "runs": self.runs,
        }


def profile_ops(
    bundle: str | Path, batch: int = 1, threads: int | None = None, runs: int = 10, warmup: int = 3
) -> OpProfile:
    """Profile ``runs`` runs of the bundle's reduced graph on random inputs (after warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "ort")
        # as ``benchmark`` times it: its own prepacked weights
        session = Session(bundle, threads=threads, profile_prefix=prefix, share_weights=False)
        feed = random_inputs(session.inputs, batch)
        for _ in range(warmup + runs):
            session.run(feed)
        events = json.loads(session.end_profiling().read_text())
        session.close()
    # The profiler records every run; keep the last ``runs`` of each node's kernel events.
    per_node: dict[str, list[int]] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node.setdefault(event["name"], []).append(int(event["dur"]))
    total, reductions = 0, Counter()
    for name, durations in per_node.items():
        spent = sum(durations[-runs:])
        total += spent
        if match := _INLINED.search(name):
            reductions[match.group(1)] += spent
    return OpProfile(
        total_ms=total / runs / 1000,
        reduction_ms={op: us / runs / 1000 for op, us in sorted(reductions.items())},
        runs=runs,
    )

"""Measure one reduction config of a model: export it, time it against the full model, score it.

One point = one bundle: FLOPs from the manifest, latency of the reduced and the full graph timed
interleaved in one process (``bench --vs-full``), and the task metric of both graphs with their
agreement (``eval``). A config that reduces nothing is the full model: speed-up 1 by definition.
On an int8 runtime each bundle is quantized first, calibrated on the first examples of the data
set it is scored on; off ONNX Runtime fp32, agreement is with the full model on ONNX Runtime
fp32, so it is the cost of reduction and precision together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trimformer.exporter import ExportRequest, export_bundle
from trimformer.profiles import ReductionConfig
from trimformer.runtime.bench import benchmark
from trimformer.runtime.options import FP32_ORT, RuntimeOptions
from trimformer.runtime.session import Provider

if TYPE_CHECKING:
    from trimformer.evaluation.cache import EvalCache

__all__ = ["CALIBRATION_EXAMPLES", "BenchSettings", "ModelSpec", "Point", "measure_point"]

CALIBRATION_EXAMPLES = 300
"""Examples of the data set an int8 point's static quantization calibrates on."""


@dataclass(frozen=True)
class ModelSpec:
    """The model every point exports (as ``trimformer export`` takes it)."""

    name: str
    checkpoint: Path | None = None
    image_size: int | None = None
    seq_len: int | None = None


@dataclass(frozen=True)
class BenchSettings:
    """How points are timed and scored. ``cache`` keeps the prepared data and the full model's
    outputs from one point to the next (every point's full graph is the same model)."""

    data: str
    limit: int | None = None
    batch: int = 1
    runs: int = 30
    threads: int | None = None
    providers: Sequence[Provider] | None = None
    runtime: RuntimeOptions = FP32_ORT
    strict: bool = False
    cache: EvalCache | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Point:
    """One config's figures: FLOPs, latency (ms, p50) and speed-up, metric and agreement.

    ``method`` and ``params`` are the config as given (valid in a profile again).
    """

    label: str
    method: str
    params: dict[str, Any]
    flops: int
    full_flops: int
    latency_ms: float
    full_latency_ms: float
    speedup: float
    metric: str
    value: float
    full_value: float
    agreement: float
    runtime: str = FP32_ORT.describe()

    @property
    def flops_ratio(self) -> float:
        return self.full_flops / self.flops

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "flops_ratio": round(self.flops_ratio, 4)}


def measure_point(
    model: ModelSpec,
    reduction: ReductionConfig,
    settings: BenchSettings,
    bundle: Path,
    score: bool = True,
) -> Point:
    """Export ``reduction`` of ``model`` to ``bundle`` and measure it (see the module docstring).

    ``score=False`` skips the data set (value, full_value and agreement are NaN): a search
    times many configs and scores only the ones it keeps.
    """
    from trimformer.evaluation.runner import evaluate

    manifest = export_bundle(
        ExportRequest(
            model.name,
            bundle,
            reduction,
            checkpoint=model.checkpoint,
            image_size=model.image_size,
            seq_len=model.seq_len,
            force=True,
        )
    )
    graphs = manifest["graphs"]
    reduces = "full" in graphs
    if settings.runtime.precision == "int8":
        _quantize(bundle, settings)
    timing = benchmark(
        bundle,
        batch=settings.batch,
        threads=settings.threads,
        runs=settings.runs,
        vs_full=reduces,
        progress=False,
        providers=settings.providers,
        runtime=settings.runtime,
    )
    full = graphs["full" if reduces else "model"]
    value = full_value = agreement = math.nan
    metric = ""
    if score:
        scores = evaluate(
            bundle,
            settings.data,
            limit=settings.limit,
            threads=settings.threads,
            runtime=settings.runtime,
            strict=settings.strict,
            cache=settings.cache,
        )
        metric, value = scores.metric, scores.value
        full_value = scores.full_value if scores.full_value is not None else scores.value
        if scores.reference_agreement is not None:
            agreement = scores.reference_agreement
        else:
            agreement = scores.agreement if reduces and scores.agreement is not None else 1.0
    return Point(
        label=reduction.source,
        method=reduction.method,
        params=dict(reduction.params),
        flops=graphs["model"]["flops"],
        full_flops=full["flops"],
        latency_ms=timing.latency_ms_p50,
        full_latency_ms=timing.full_latency_ms_p50 if reduces else timing.latency_ms_p50,
        speedup=float(timing.speedup) if reduces and timing.speedup else 1.0,
        metric=metric,
        value=value,
        full_value=full_value,
        agreement=agreement,
        runtime=settings.runtime.describe(),
    )


def _quantize(bundle: Path, settings: BenchSettings) -> None:
    """Add int8 graphs of every config of ``bundle`` for the settings' backend, calibrated on
    the data set the point is scored on."""
    from trimformer.bundle import read_manifest
    from trimformer.evaluation.runner import prepare_data
    from trimformer.quantization import CalibrationSet, QuantizeRequest, quantize_bundle

    limit = min(settings.limit or CALIBRATION_EXAMPLES, CALIBRATION_EXAMPLES)
    prepared = prepare_data(
        bundle, read_manifest(bundle), settings.data, limit, settings.strict, cache=settings.cache
    )
    calibration = CalibrationSet(settings.data, prepared.inputs)
    backend = settings.runtime.backend
    extensions = settings.runtime.extensions
    quantize_bundle(QuantizeRequest(bundle, backend, calibration, extensions=extensions))

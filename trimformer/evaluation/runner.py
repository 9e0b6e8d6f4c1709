"""Evaluate a bundle on a data set: its reduced graph, its full graph, and how far they agree.

The data is any source ``--data`` names (``sources``): read once for the bundle, with its own
preprocessing. Each graph runs through ``trimformer.runtime.load`` on one runtime (a backend and
a precision, ONNX Runtime fp32 by default), in batches; ``scoring`` turns the outputs into
figures. On any other runtime (OpenVINO, bf16, int8) the full graph also runs on ONNX Runtime
fp32, the reference: the reduced graph's agreement with it is the combined cost of reduction and
precision, and the full graph's is the precision's alone. A bundle exported with
``--method none`` has only its model graph, which is the full model. With an ``EvalCache`` the
prepared data and the full graph's outputs are reused across the points of a sweep.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trimformer.bundle import read_manifest
from trimformer.errors import UsageError
from trimformer.evaluation.cache import EvalCache, graph_fingerprint, outputs_key
from trimformer.evaluation.scoring import EvalResult, Outputs, score
from trimformer.evaluation.sources import Prepared, Progress, Source, parse_source
from trimformer.evaluation.sources.builtin import BUILT_IN
from trimformer.evaluation.sources.images import IMAGE_INPUT
from trimformer.evaluation.tokenize import TEXT_INPUT
from trimformer.runtime import load
from trimformer.runtime.options import FP32_ORT, RuntimeOptions
from trimformer.runtime.session import Session

__all__ = ["EvalResult", "Progress", "data_inputs", "evaluate", "prepare_data"]


def evaluate(
    bundle: str | Path,
    data: str,
    limit: int | None = None,
    batch: int = 64,
    threads: int | None = None,
    progress: Progress | None = None,
    runtime: RuntimeOptions = FP32_ORT,
    strict: bool = False,
    cache: EvalCache | None = None,
) -> EvalResult:
    """Run ``bundle``'s graphs on ``data`` (a ``--data`` value) on ``runtime`` and score them
    (and, off the reference runtime, compare them with the reference)."""
    bundle = Path(bundle)
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    cache = cache if cache is not None else EvalCache()
    manifest = read_manifest(bundle)
    prepared = prepare_data(bundle, manifest, data, limit, strict, progress, cache)
    has_full = "full" in manifest["graphs"]
    cached: list[str] = []

    def run(graph: str, on: RuntimeOptions, label: str) -> np.ndarray:
        if label == "model":  # the reduced graph differs at every point: never cached
            return _run(bundle, graph, prepared, batch, threads, progress, on, label)
        key = outputs_key(graph_fingerprint(bundle, manifest, graph, on), on, prepared, batch)
        outputs, hit = cache.outputs(
            key, lambda: _run(bundle, graph, prepared, batch, threads, progress, on, label)
        )
        if hit:
            cached.append(label)
        return outputs

    outputs = Outputs(
        reduced=run("model", runtime, "model"),
        full=run("full", runtime, "full") if has_full else None,
        reference=run("full" if has_full else "model", FP32_ORT, "reference")
        if runtime != FP32_ORT
        else None,
    )
    note = None
    if not has_full and runtime == FP32_ORT:
        note = (
            f"{bundle} has no full graph (exported with --method none: its model graph is the "
            "full model), so agreement is not measured"
        )
    return EvalResult(
        **score(str(bundle), data, prepared, outputs),
        note=note,
        runtime=runtime.describe(),
        cached=tuple(cached),
    )


def data_inputs(bundle: str | Path, data: str, limit: int | None = None) -> dict[str, np.ndarray]:
    """The inputs ``bundle``'s graphs take for ``data`` (name -> array, a row per example), as
    ``evaluate`` feeds them: what a quantizer calibrates on."""
    bundle = Path(bundle)
    return prepare_data(bundle, read_manifest(bundle), data, limit).inputs


def prepare_data(
    bundle: Path,
    manifest: Mapping[str, Any],
    data: str,
    limit: int | None,
    strict: bool = False,
    progress: Progress | None = None,
    cache: EvalCache | None = None,
) -> Prepared:
    """``data`` read for ``bundle`` (from ``cache`` when it was read for the same
    preprocessing before)."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    source = parse_source(data)
    _check_modality(bundle, manifest, source)

    def make() -> Prepared:
        return source.prepare(bundle, manifest, limit, strict, progress)

    if cache is None:
        return make()
    from trimformer.evaluation.sources.base import preprocessing_identity
    from trimformer.evaluation.tokenize import tokenizer_folder

    identity = preprocessing_identity(manifest, tokenizer_folder(manifest))
    return cache.prepared((data, limit, strict, identity), make)


def _check_modality(bundle: Path, manifest: Mapping[str, Any], source: Source) -> None:
    modality = _modality(bundle, manifest)
    if modality != source.modality:
        fits = [name for name, s in BUILT_IN.items() if s.modality == modality]
        fits.append("images:DIR" if modality == "image" else "texts:FILE, pairs:FILE")
        raise UsageError(
            f"{bundle} takes {modality} input, but --data {source.spec} needs "
            f"{source.modality} input; use --data {', '.join(fits)} or a {source.modality} bundle"
        )


def _modality(bundle: Path, manifest: Mapping[str, Any]) -> str:
    """image or text, from the names of the model graph's inputs."""
    try:
        names = [spec["name"] for spec in manifest["graphs"]["model"]["inputs"]]
    except (KeyError, TypeError):
        raise UsageError(f"{bundle}: manifest lists no model graph inputs; re-export it") from None
    if IMAGE_INPUT in names:
        return "image"
    if TEXT_INPUT in names:
        return "text"
    raise UsageError(
        f"{bundle} takes inputs {names}, neither {IMAGE_INPUT} (images) nor {TEXT_INPUT} (text); "
        "evaluate an image or text bundle"
    )


def _run(
    bundle: Path,
    graph: str,
    prepared: Prepared,
    batch: int,
    threads: int | None,
    progress: Progress | None,
    runtime: RuntimeOptions,
    label: str,
) -> np.ndarray:
    """Outputs of one graph on ``runtime`` for all inputs, in batches (of the graph's size when
    it is fixed); progress is reported under ``label``."""
    opts = runtime.load_options()
    with load(bundle, graph=graph, threads=threads, **opts) as session:
        if prepared.output not in {spec.name for spec in session.outputs}:
            names = [spec.name for spec in session.outputs]
            raise UsageError(
                f"{bundle}: graph {graph!r} outputs {names}, not {prepared.output!r}; "
                "re-export the bundle"
            )
        fixed = session.inputs[0].shape[0]
        size = fixed if isinstance(fixed, int) else batch
        total = len(next(iter(prepared.inputs.values())))
        chunks = []
        for start in range(0, total, size):
            chunks.append(_run_batch(session, prepared, start, size, total))
            if progress is not None:
                progress(label, min(start + size, total), total)
    return np.concatenate(chunks)


def _run_batch(
    session: Session, prepared: Prepared, start: int, size: int, total: int
) -> np.ndarray:
    """One batch; a short last batch of a fixed-batch graph is padded and the padding dropped."""
    stop = min(start + size, total)
    feed = {}
    for name, array in prepared.inputs.items():
        rows = np.asarray(array[start:stop])
        if len(rows) < size and isinstance(session.inputs[0].shape[0], int):
            rows = np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)])
        feed[name] = rows
    return session.run(feed)[prepared.output][: stop - start]

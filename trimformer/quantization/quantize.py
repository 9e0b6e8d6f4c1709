"""Add int8 graphs of a bundle's configs to the bundle, for ONNX Runtime or OpenVINO.

Each config's float graph is quantized into ``int8/<config>.<backend>.<run>.*`` and recorded in
the manifest's ``quantized`` entry (``trimformer.runtime.precision``): backend, scheme,
calibration set (name, size, hash), tool versions, and every file's sha256. Writing is atomic
per bundle: the graphs are made in a hidden temporary folder inside the bundle, moved into
``int8/`` under names no earlier run used, and only then named in the manifest (one atomic
rewrite); the files of replaced graphs are removed after that. A failure removes what it moved,
so a bundle never lists, or holds, a half-written graph, and a replaced graph stays usable until
its successor is recorded.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from trimformer.bundle import WEIGHTS, bank_configs, file_record, read_manifest, update_manifest
from trimformer.errors import RuntimeFailure, UsageError
from trimformer.quantization.calibration import CalibrationSet
from trimformer.runtime.precision import quantized_key

__all__ = ["QuantizeRequest", "Quantized", "quantize_bundle"]

FOLDER = "int8"
_LARGE_BYTES = 1_800_000_000  # past this, protobuf's 2 GiB limit needs external data


@dataclass(frozen=True)
class QuantizeRequest:
    """What to quantize: which configs (empty: all) for which backend, calibrated on
    ``calibration`` (None: ONNX Runtime's dynamic quantization), replacing existing graphs
    only with ``force``."""

    bundle: Path
    backend: str
    calibration: CalibrationSet | None
    configs: tuple[str, ...] = ()
    force: bool = False
    extensions: str = "auto"


@dataclass(frozen=True)
class Quantized:
    """One config's int8 graph as recorded."""

    config: str
    key: str
    scheme: str
    files: dict[str, dict[str, Any]]
    seconds: float


Progress = Callable[[str], None]
"""Called with a config's name as its quantization starts."""


def quantize_bundle(request: QuantizeRequest, progress: Progress | None = None) -> list[Quantized]:
    """Quantize the requested configs of a bundle and record them; returns what was added."""
    bundle = Path(request.bundle)
    manifest = read_manifest(bundle)
    configs, _ = bank_configs(manifest)
    names = _chosen(bundle, configs, request)
    _check_request(request)
    existing = manifest.get("quantized") or {}
    clash = [n for n in names if quantized_key(n, request.backend) in existing]
    if clash and not request.force:
        raise UsageError(
            f"{bundle} already has {request.backend} int8 graphs of {', '.join(clash)}; pass "
            "--force to quantize them again"
        )
    quantizer = _Quantizer(bundle, manifest, request, uuid.uuid4().hex[:8])
    tmp = Path(tempfile.mkdtemp(prefix=".quantize-", dir=bundle))
    moved: list[Path] = []
    try:
        made = []
        for name in names:
            if progress is not None:
                progress(name)
            made.append(quantizer.quantize(name, configs[name]["graph"], tmp))
        (bundle / FOLDER).mkdir(exist_ok=True)
        for produced in sorted(tmp.iterdir()):
            target = bundle / FOLDER / produced.name
            produced.replace(target)
            moved.append(target)
        records = [_record(bundle, q, request) for q in made]

        def add(manifest: dict[str, Any]) -> None:
            entries = manifest.setdefault("quantized", {})
            for q, record in zip(made, records, strict=True):
                entries[q.key] = record

        update_manifest(bundle, add)
    except OSError as exc:
        _remove(moved)
        raise RuntimeFailure(f"writing int8 graphs into {bundle} failed: {exc}") from None
    except BaseException:
        _remove(moved)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    replaced = [existing[q.key] for q in made if q.key in existing]
    _remove([bundle / f["path"] for entry in replaced for f in entry.get("files", {}).values()])
    return [
        Quantized(q.config, q.key, q.scheme, r["files"], q.seconds)
        for q, r in zip(made, records, strict=True)
    ]


def _chosen(bundle: Path, configs: dict[str, Any], request: QuantizeRequest) -> list[str]:
    unknown = [n for n in request.configs if n not in configs]
    if unknown:
        raise UsageError(
            f"{bundle} has no config {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(configs)} (or all)"
        )
    return list(request.configs) or list(configs)


def _check_request(request: QuantizeRequest) -> None:
    if request.backend not in ("ort", "openvino"):
        raise UsageError(f"unknown backend {request.backend!r}; choose from ort, openvino")
    if request.calibration is None and request.backend == "openvino":
        raise UsageError(
            "calibration data missing: OpenVINO's int8 (NNCF) calibrates on data; give --data D"
        )
    if request.calibration is not None and request.calibration.items < 1:
        raise UsageError(f"the calibration data ({request.calibration.data}) holds no examples")


@dataclass(frozen=True)
class _Made:
    config: str
    key: str
    scheme: str
    produced: tuple[str, ...]
    seconds: float
    extensions: str | None  # OpenVINO: how trimformer's ops ran (fused ones need the library)


class _Quantizer:
    """Quantizes one config's graph at a time into a temporary folder."""

    def __init__(
        self, bundle: Path, manifest: dict[str, Any], request: QuantizeRequest, run: str
    ) -> None:
        self._run = run  # in every file name: a new run never overwrites a recorded file
        self._bundle = bundle
        self._manifest = manifest
        self._request = request
        self._core: Any = None
        self._extension: Any = None  # OpenVINO's ExtensionInfo, once the core is made
        weights = bundle / WEIGHTS
        self._large = weights.is_file() and weights.stat().st_size > _LARGE_BYTES

    def quantize(self, config: str, graph: str, tmp: Path) -> _Made:
        entry = self._manifest["graphs"][graph]
        source = self._bundle / entry["file"]
        inputs = [spec["name"] for spec in entry["inputs"]]
        first = entry["inputs"][0]["shape"][0]
        fixed = first if isinstance(first, int) else None
        start = time.perf_counter()
        before = set(tmp.iterdir())
        calibration = self._request.calibration
        if self._request.backend == "ort":
            from trimformer.quantization.ort_int8 import quantize_ort

            dest = tmp / f"{config}.ort.{self._run}.onnx"
            scheme = quantize_ort(source, dest, calibration, inputs, fixed, self._large)
        else:
            assert calibration is not None  # _check_request refused it
            dest = tmp / f"{config}.openvino.{self._run}.xml"
            scheme = self._quantize_openvino(source, dest, calibration, inputs, fixed)
        produced = tuple(sorted(p.name for p in set(tmp.iterdir()) - before))
        if dest.name not in produced:
            raise RuntimeFailure(f"quantizing config {config!r} wrote no {dest.name}")
        return _Made(
            config,
            quantized_key(config, self._request.backend),
            scheme,
            produced,
            time.perf_counter() - start,
            self._extension.mode if self._extension is not None else None,
        )

    def _quantize_openvino(
        self,
        source: Path,
        dest: Path,
        calibration: CalibrationSet,
        inputs: list[str],
        fixed: int | None,
    ) -> str:
        from trimformer.quantization.openvino_int8 import quantize_openvino
        from trimformer.runtime.openvino_backend import import_openvino
        from trimformer.runtime.openvino_ext import add_extensions, float_scopes, read_model

        if self._core is None:
            self._core = import_openvino().Core()
            self._extension = add_extensions(self._core, self._request.extensions)
        model = read_model(self._core, source, self._extension)
        keep_float = float_scopes(model)
        return quantize_openvino(self._core, model, dest, calibration, inputs, fixed, keep_float)


def _record(bundle: Path, made: _Made, request: QuantizeRequest) -> dict[str, Any]:
    files = {}
    for name in made.produced:
        kind = "graph" if name.endswith((".onnx", ".xml")) else "weights"
        files[kind if kind not in files else name] = file_record(bundle, f"{FOLDER}/{name}")
    tools = ("onnxruntime",) if request.backend == "ort" else ("openvino", "nncf")
    return {
        "config": made.config,
        "backend": request.backend,
        "precision": "int8",
        "scheme": made.scheme,
        **({"extensions": made.extensions} if made.extensions else {}),
        "calibration": request.calibration.record() if request.calibration else None,
        "files": files,
        "tools": {tool: _version(tool) for tool in tools},
        "seconds": round(made.seconds, 2),
    }


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)

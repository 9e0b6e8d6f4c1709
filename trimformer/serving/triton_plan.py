"""What a Triton model repository of a bundle holds, decided as plain values (no Triton needed).

One Triton model per config of the bundle's bank, named after the config:

- ``onnxruntime`` backend: the config's graph as ``1/model.onnx`` with the bundle's weights.bin
  beside it (external data is read relative to the model file, and Triton's ONNX Runtime backend
  opens ``<model>/<version>/model.onnx`` by path). Instances on the CPU, or on the GPU for a
  TensorRT device profile.
- ``tensorrt`` backend: where ``trimformer build`` made an engine for the config and the device
  profile, and Triton's TensorRT backend can run it as it is: weights embedded in the plan (a
  bank's weight-stripped engines are refitted by trimformer's runtime when loaded; Triton
  deserialises plans as they are and does not refit), and plugins from the plugin library
  (loaded with ``--backend-config=tensorrt,plugins=...``) or AOT kernels inside the engine.
  Engines of the Python plugins' JIT form need Python at run time, which Triton's TensorRT
  backend does not have: those configs run on onnxruntime, and the plan says why.

Batching: a graph whose inputs and outputs all have a dynamic first dim gets ``max_batch_size``
(the engine's batch max, or the device profile's for ONNX) and dynamic batching from the
profile's ``serving`` settings; a graph exported with a fixed batch gets ``max_batch_size`` 0
and its full shape. With ``preprocess``, a Python-backend model decodes encoded images with the
manifest's preprocessing and one ensemble per config chains it to the config's model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimformer.bundle import bank_configs
from trimformer.errors import UsageError
from trimformer.profiles.device_profiles import DeviceProfile

__all__ = [
    "IMAGE_INPUT",
    "PREPROCESS_MODEL",
    "EnsemblePlan",
    "ModelPlan",
    "PreprocessPlan",
    "RepositoryPlan",
    "TensorPlan",
    "ensemble_name",
    "plan_repository",
    "triton_dtype",
]

PREPROCESS_MODEL = "preprocess"
IMAGE_INPUT = "IMAGE"

_TRITON_DTYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
}
_SERVABLE_PLUGINS = ("library", "qdp-aot")


def triton_dtype(dtype: str) -> str:
    """The Triton ``DataType`` name of a manifest dtype (a numpy name)."""
    try:
        return _TRITON_DTYPES[dtype]
    except KeyError:
        raise UsageError(f"dtype {dtype!r} has no Triton data type; re-export the bundle") from None


def ensemble_name(config: str) -> str:
    """The ensemble that takes encoded images for ``config``."""
    return f"{config}-image"


@dataclass(frozen=True)
class TensorPlan:
    """An input or output as Triton sees it: dims without the batch dim when batching, -1 for a
    dynamic dim."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelPlan:
    """One config's Triton model: its backend, the bundle file it serves, batching, instances."""

    name: str
    config: str
    backend: str  # "onnxruntime" or "tensorrt"
    source: str  # bundle-relative: the graph (onnxruntime) or the plan (tensorrt)
    max_batch_size: int
    inputs: tuple[TensorPlan, ...]
    outputs: tuple[TensorPlan, ...]
    instance_kind: str  # "KIND_CPU" or "KIND_GPU"
    instances: int
    preferred_batch: tuple[int, ...]
    max_queue_delay_us: int
    threads: int | None = None  # ONNX Runtime's intra-op threads on CPU (None: its default)
    plugins: str | None = None  # tensorrt: "library" or "qdp-aot"
    dla_core: int | None = None
    tensorrt: str | None = None  # the TensorRT version the engine needs
    note: str = ""  # why this backend, when another was asked for


@dataclass(frozen=True)
class PreprocessPlan:
    """The Python-backend model decoding images: the manifest's preprocessing and its output."""

    preprocess: Mapping[str, Any]
    output: TensorPlan
    max_batch_size: int
    instances: int
    preferred_batch: tuple[int, ...]
    max_queue_delay_us: int


@dataclass(frozen=True)
class EnsemblePlan:
    """Encoded images -> ``preprocess`` -> the config's model."""

    name: str
    model: str
    pixels: str  # the model's input the preprocess model fills
    max_batch_size: int
    outputs: tuple[TensorPlan, ...]


@dataclass(frozen=True)
class RepositoryPlan:
    """Every model of the repository, the profile they follow, and the bundle's default config."""

    profile: str
    default_config: str
    models: tuple[ModelPlan, ...]
    preprocess: PreprocessPlan | None = None
    ensembles: tuple[EnsemblePlan, ...] = ()

    @property
    def needs_plugin_library(self) -> bool:
        return any(model.plugins == "library" for model in self.models)


def _tensors(entries: Sequence[Mapping[str, Any]], batched: bool) -> tuple[TensorPlan, ...]:
    tensors = []
    for entry in entries:
        shape = list(entry["shape"])[1:] if batched else list(entry["shape"])
        dims = tuple(d if isinstance(d, int) else -1 for d in shape)
        tensors.append(TensorPlan(entry["name"], triton_dtype(entry["dtype"]), dims))
    return tuple(tensors)


def _batched(graph: Mapping[str, Any]) -> bool:
    """Whether every input and output has a dynamic first dim (what Triton's batching needs)."""
    entries = [*graph["inputs"], *graph["outputs"]]
    return all(entry["shape"] and isinstance(entry["shape"][0], str) for entry in entries)


def _engines(
    bundle: Path, manifest: Mapping[str, Any], profile: str
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Config -> (plan, record) of the engines built for ``profile`` (none: empty)."""
    from trimformer.runtime.trt_session import engine_records

    keys = (manifest.get("engines") or {}).keys()
    if not any(key == profile or key.startswith(f"{profile}/") for key in keys):
        return {}
    return engine_records(bundle, manifest, profile)


def _trt_blocker(record: Mapping[str, Any]) -> str | None:
    """Why Triton's TensorRT backend cannot run this engine as it is, or None."""
    if record.get("weights") == "stripped":
        return (
            "its engine is weight-stripped (refitted by trimformer's runtime at load; Triton "
            "does not refit): build a full engine with trimformer build --device PROFILE"
        )
    if record.get("plugins") not in _SERVABLE_PLUGINS:
        return (
            "its engine uses the Python plugins' JIT form, which needs Python at run time: "
            "build the plugin library (trimformer plugins build) and rebuild the engine"
        )
    return None


def plan_repository(
    bundle: Path, manifest: Mapping[str, Any], profile: DeviceProfile, preprocess: bool = False
) -> RepositoryPlan:
    """Decide every model of the repository (see the module docstring)."""
    configs, default = bank_configs(manifest)
    graphs = manifest.get("graphs") or {}
    serving = profile.serving
    gpu = profile.backend == "tensorrt"
    engines = _engines(bundle, manifest, profile.name) if gpu else {}
    models = []
    for config, entry in configs.items():
        graph_name = entry.get("graph")
        graph = graphs.get(graph_name) if isinstance(graph_name, str) else None
        if not isinstance(graph, Mapping) or "file" not in graph:
            raise UsageError(
                f"{bundle}: config {config!r} names graph {graph_name!r}, which the manifest "
                "lacks; re-export the bundle"
            )
        engine = engines.get(config)
        blocked = _trt_blocker(engine[1]) if engine is not None else None
        note = f"onnxruntime: {blocked}" if blocked else ""
        if gpu and engine is None:
            note = (
                f"onnxruntime: no {profile.name} engine for this config (trimformer build "
                f"--device {profile.name} --config {config} makes one)"
            )
        if engine is not None and blocked is None:
            plan_path, record = engine
            batch = record["settings"]["batch"]
            batched = _batched(record)
            models.append(
                ModelPlan(
                    name=config,
                    config=config,
                    backend="tensorrt",
                    source=plan_path.relative_to(bundle).as_posix(),
                    max_batch_size=int(batch["max"]) if batched else 0,
                    inputs=_tensors(record["inputs"], batched),
                    outputs=_tensors(record["outputs"], batched),
                    instance_kind="KIND_GPU",
                    instances=serving.instances,
                    preferred_batch=_within(serving.preferred_batch, int(batch["max"])),
                    max_queue_delay_us=serving.max_queue_delay_us,
                    plugins=str(record["plugins"]),
                    dla_core=record["settings"].get("dla_core"),
                    tensorrt=str(record["tensorrt"]),
                )
            )
            continue
        batched = _batched(graph)
        models.append(
            ModelPlan(
                name=config,
                config=config,
                backend="onnxruntime",
                source=str(graph["file"]),
                max_batch_size=profile.batch.max if batched else 0,
                inputs=_tensors(graph["inputs"], batched),
                outputs=_tensors(graph["outputs"], batched),
                instance_kind="KIND_GPU" if gpu else "KIND_CPU",
                instances=serving.instances,
                preferred_batch=_within(serving.preferred_batch, profile.batch.max),
                max_queue_delay_us=serving.max_queue_delay_us,
                threads=None if gpu else profile.threads,
                note=note,
            )
        )
    plan = RepositoryPlan(profile.name, default, tuple(models))
    return _with_preprocess(bundle, manifest, plan) if preprocess else plan


def _within(sizes: Sequence[int], maximum: int) -> tuple[int, ...]:
    return tuple(size for size in sizes if size <= maximum)


def _with_preprocess(
    bundle: Path, manifest: Mapping[str, Any], plan: RepositoryPlan
) -> RepositoryPlan:
    """Add the Python-backend preprocessing model and one ensemble per config."""
    spec = manifest.get("preprocess")
    if not isinstance(spec, Mapping) or "input_size" not in spec:
        raise UsageError(
            f"{bundle} declares no image preprocessing (a text or custom model); --preprocess "
            "applies to image bundles: send tensors to the models instead"
        )
    names = {model.name for model in plan.models}
    taken = sorted(names & {PREPROCESS_MODEL, *map(ensemble_name, names)})
    if taken:
        raise UsageError(
            f"config name {taken[0]!r} is also the name of the preprocessing model or an "
            "ensemble; re-export the bank with another config name, or leave out --preprocess"
        )
    channels, height, width = (int(v) for v in spec["input_size"])
    pixels = (channels, height, width)
    ensembles = []
    for model in plan.models:
        if len(model.inputs) != 1 or model.max_batch_size == 0:
            raise UsageError(
                f"config {model.config!r} takes {len(model.inputs)} inputs"
                f"{'' if model.max_batch_size else ' at a fixed batch'}; --preprocess needs one "
                "image input with a dynamic batch (export without --batch)"
            )
        if model.inputs[0].data_type != "TYPE_FP32" or model.inputs[0].dims != pixels:
            raise UsageError(
                f"config {model.config!r} takes {model.inputs[0]}, not the float32 {pixels} "
                "images the manifest's preprocessing makes; re-export the bundle"
            )
        ensembles.append(
            EnsemblePlan(
                ensemble_name(model.name),
                model.name,
                model.inputs[0].name,
                model.max_batch_size,
                model.outputs,
            )
        )
    first = plan.models[0]
    preprocess = PreprocessPlan(
        preprocess=dict(spec),
        output=TensorPlan(first.inputs[0].name, "TYPE_FP32", pixels),
        max_batch_size=max(model.max_batch_size for model in plan.models),
        instances=first.instances,
        preferred_batch=first.preferred_batch,
        max_queue_delay_us=first.max_queue_delay_us,
    )
    return RepositoryPlan(
        plan.profile, plan.default_config, plan.models, preprocess, tuple(ensembles)
    )

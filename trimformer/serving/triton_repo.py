"""Write a bundle's Triton model repository: ``config.pbtxt`` files, model files, a README.

```
REPOSITORY/
  README.md                  what each model runs and how to start tritonserver on it
  CONFIG/config.pbtxt        one model per config of the bank (see triton_plan)
  CONFIG/labels.txt          class names, where the manifest has them (Triton's classification)
  CONFIG/1/model.onnx        the config's graph ...
  CONFIG/1/weights.bin       ... and its weights (hard links of one file)
  CONFIG/1/model.plan        or a TensorRT engine
  preprocess/                --preprocess: Python-backend image decoding (model.py + the
                             trimformer files it imports)
  CONFIG-image/              --preprocess: the ensemble preprocess -> CONFIG (empty version 1/)
  libtrimformer_plugins.so   where a TensorRT engine loads the plugin library
```
Each ``config.pbtxt`` is built as Triton's own ``inference.ModelConfig`` protobuf message (the
schema ``tritonclient`` ships) and printed in protobuf text format, so it parses as Triton parses
it. Weights are held once on disk: every model's ``weights.bin`` is a hard link of the bundle's
(where the file system allows; else the first model gets a copy and the others hard-link it).
Symbolic links would not do: ONNX Runtime (1.32, as tested) resolves an external data path and
refuses one that leads outside the model's folder ("External data path escapes model
directory"), which a link to another model's folder does. ``weights="copy"`` gives every model a
plain copy, for stores that keep no links (object stores). Engines are hard-linked (or copied)
from the bundle the same way. Before the repository is renamed into
place, every ONNX model is opened with ONNX Runtime by its path, as Triton's backend opens it,
and its inputs and outputs are checked against its config.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trimformer.bundle import WEIGHTS, read_manifest, staged_directory
from trimformer.errors import UsageError, first_line
from trimformer.profiles.device_profiles import DeviceProfile
from trimformer.serving.triton_plan import (
    IMAGE_INPUT,
    PREPROCESS_MODEL,
    EnsemblePlan,
    ModelPlan,
    PreprocessPlan,
    RepositoryPlan,
    TensorPlan,
    plan_repository,
)

if TYPE_CHECKING:
    from google.protobuf.message import Message

__all__ = [
    "LABELS",
    "PLUGIN_FILE",
    "VERSION",
    "check_onnx_models",
    "ensemble_config",
    "model_config",
    "model_config_schema",
    "preprocess_config",
    "write_repository",
]

VERSION = "1"
LABELS = "labels.txt"
PLUGIN_FILE = "libtrimformer_plugins.so"
_WEIGHT_MODES = ("link", "copy")
# the trimformer files the Python-backend model imports (package-relative), copied beside it
_PREPROCESS_FILES = ("__init__.py", "errors.py", "runtime/preprocess.py")
_RUNTIME_INIT = '"""The part of trimformer.runtime a Triton Python model needs."""\n'


def model_config_schema() -> Any:
    """tritonclient's ``model_config_pb2`` (Triton's ModelConfig protobuf), or a UsageError."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):
        raise UsageError(
            "trimformer triton needs Triton's ModelConfig schema from tritonclient: "
            "pip install 'trimformer[triton]'"
        ) from None
    return model_config_pb2


def _tensor(message: Any, tensor: TensorPlan, label_file: str | None = None) -> None:
    message.name = tensor.name
    message.data_type = model_config_schema().DataType.Value(tensor.data_type)
    message.dims.extend(tensor.dims)
    if label_file is not None:
        message.label_filename = label_file


def _batching(config: Any, sizes: tuple[int, ...], delay_us: int) -> None:
    config.dynamic_batching.preferred_batch_size.extend(sizes)
    config.dynamic_batching.max_queue_delay_microseconds = delay_us


def model_config(model: ModelPlan, labels: int | None = None) -> Message:
    """A config's ModelConfig: backend, batching, inputs/outputs, instances, backend settings.

    ``labels`` (the number of class names) names ``labels.txt`` on an output of that many values.
    """
    schema = model_config_schema()
    config = schema.ModelConfig(name=model.name, backend=model.backend)
    config.max_batch_size = model.max_batch_size
    for tensor in model.inputs:
        _tensor(config.input.add(), tensor)
    for tensor in model.outputs:
        labelled = labels is not None and tensor.dims[-1:] == (labels,) and len(tensor.dims) == 1
        _tensor(config.output.add(), tensor, LABELS if labelled else None)
    if model.max_batch_size > 0:
        _batching(config, model.preferred_batch, model.max_queue_delay_us)
    group = config.instance_group.add()
    group.kind = schema.ModelInstanceGroup.Kind.Value(model.instance_kind)
    group.count = model.instances
    if model.dla_core is not None:
        device = group.secondary_devices.add()
        device.kind = schema.ModelInstanceGroup.SecondaryDevice.SecondaryDeviceKind.Value(
            "KIND_NVDLA"
        )
        device.device_id = model.dla_core
    if model.threads is not None:
        config.parameters["intra_op_thread_count"].string_value = str(model.threads)
    return config


def preprocess_config(plan: PreprocessPlan) -> Message:
    """The Python-backend model: BYTES images in, the model's float32 input out."""
    schema = model_config_schema()
    config = schema.ModelConfig(name=PREPROCESS_MODEL, backend="python")
    config.max_batch_size = plan.max_batch_size
    _tensor(config.input.add(), TensorPlan(IMAGE_INPUT, "TYPE_STRING", (1,)))
    _tensor(config.output.add(), plan.output)
    _batching(config, plan.preferred_batch, plan.max_queue_delay_us)
    group = config.instance_group.add()
    group.kind = schema.ModelInstanceGroup.Kind.Value("KIND_CPU")
    group.count = plan.instances
    config.parameters["preprocess"].string_value = json.dumps(dict(plan.preprocess))
    return config


def ensemble_config(plan: EnsemblePlan) -> Message:
    """Encoded images -> preprocess -> the config's model, as one Triton model."""
    schema = model_config_schema()
    config = schema.ModelConfig(name=plan.name, platform="ensemble")
    config.max_batch_size = plan.max_batch_size
    _tensor(config.input.add(), TensorPlan(IMAGE_INPUT, "TYPE_STRING", (1,)))
    for tensor in plan.outputs:
        _tensor(config.output.add(), tensor)
    decode = config.ensemble_scheduling.step.add(model_name=PREPROCESS_MODEL, model_version=-1)
    decode.input_map[IMAGE_INPUT] = IMAGE_INPUT
    decode.output_map[plan.pixels] = "pixels"
    run = config.ensemble_scheduling.step.add(model_name=plan.model, model_version=-1)
    run.input_map[plan.pixels] = "pixels"
    for tensor in plan.outputs:
        run.output_map[tensor.name] = tensor.name
    return config


def _write_config(folder: Path, config: Message) -> None:
    from google.protobuf import text_format

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))


def _link_or_copy(source: Path, dest: Path) -> str:
    """Hard-link ``source`` to ``dest`` (no second copy on disk), or copy it where the file
    system refuses (another device, no hard links); returns which."""
    try:
        os.link(source, dest)
        return "hard link"
    except OSError:
        shutil.copyfile(source, dest)
        return "copy"


def write_repository(
    bundle: Path,
    output: Path,
    profile: DeviceProfile,
    preprocess: bool = False,
    weights: str = "link",
    plugin_library: Path | None = None,
    force: bool = False,
) -> RepositoryPlan:
    """Write ``bundle``'s Triton model repository to ``output`` atomically; return its plan."""
    if weights not in _WEIGHT_MODES:
        raise UsageError(f"weights {weights!r} is not one of {', '.join(_WEIGHT_MODES)}")
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    plan = plan_repository(bundle, manifest, profile, preprocess)
    library = _plugin_library(plan, plugin_library)
    labels = manifest.get("labels") if isinstance(manifest.get("labels"), list) else None
    with staged_directory(Path(output), force, "Triton model repository") as tmp:
        stored = _write_models(bundle, tmp, plan, weights, labels)
        if plan.preprocess is not None:
            _write_preprocess(tmp / PREPROCESS_MODEL, plan.preprocess)
            for ensemble in plan.ensembles:
                _write_config(tmp / ensemble.name, ensemble_config(ensemble))
                (tmp / ensemble.name / VERSION).mkdir()  # Triton wants a version folder
        if library is not None:
            shutil.copyfile(library, tmp / PLUGIN_FILE)
        check_onnx_models(tmp, plan)
        (tmp / "README.md").write_text(_readme(bundle, plan, stored))
    return plan


def _plugin_library(plan: RepositoryPlan, explicit: Path | None) -> Path | None:
    if not plan.needs_plugin_library:
        return None
    from trimformer.runtime.trt_env import find_plugin_library

    users = ", ".join(m.name for m in plan.models if m.plugins == "library")
    try:
        return find_plugin_library(explicit)
    except UsageError as exc:
        raise UsageError(
            f"the engines of {users} load the plugin library, which the repository must ship: {exc}"
        ) from None


def _write_models(
    bundle: Path, repo: Path, plan: RepositoryPlan, weights: str, labels: list[str] | None
) -> str:
    """Each config's folder; returns how weights.bin is stored (for the README)."""
    links: set[str] = set()  # how each weights.bin was made: "hard link" or "copy"
    first: Path | None = None  # the first weights.bin written; later ones link to it
    for model in plan.models:
        folder = repo / model.name
        version = folder / VERSION
        version.mkdir(parents=True)
        _write_config(folder, model_config(model, len(labels) if labels else None))
        if labels:
            (folder / LABELS).write_text("".join(f"{label}\n" for label in labels))
        if model.backend == "tensorrt":
            _link_or_copy(bundle / model.source, version / "model.plan")
            continue
        shutil.copyfile(bundle / model.source, version / "model.onnx")
        if not (bundle / WEIGHTS).is_file():
            continue  # a graph small enough to hold its weights inline
        if weights == "copy":
            shutil.copyfile(bundle / WEIGHTS, version / WEIGHTS)
            links.add("copy")
            continue
        links.add(_link_or_copy(first or bundle / WEIGHTS, version / WEIGHTS))
        first = first or version / WEIGHTS
    if not links:
        return "no ONNX model reads weights.bin"
    if links == {"hard link"}:
        return "hard links of the bundle's weights.bin: no second copy on disk"
    if weights == "copy":
        return "a plain copy in each model (--weights copy)"
    return "copies: this file system refused hard links"


def _write_preprocess(folder: Path, plan: PreprocessPlan) -> None:
    """The Python model: its config, model.py and the trimformer files it imports."""
    _write_config(folder, preprocess_config(plan))
    version = folder / VERSION
    package = resources.files("trimformer")
    model = package.joinpath("serving", "triton_python_model.py")
    version.mkdir()
    (version / "model.py").write_text(model.read_text())
    for relative in _PREPROCESS_FILES:
        dest = version / "trimformer" / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(package.joinpath(*relative.split("/")).read_text())
    (version / "trimformer" / "runtime" / "__init__.py").write_text(_RUNTIME_INIT)


def check_onnx_models(repo: Path, plan: RepositoryPlan) -> None:
    """Open every ONNX model as Triton's ONNX Runtime backend does (the file by its path, so
    weights.bin is found beside it) and check its inputs and outputs against its config."""
    import onnxruntime as ort

    for model in plan.models:
        if model.backend != "onnxruntime":
            continue
        path = repo / model.name / VERSION / "model.onnx"
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime's errors share no base class
            raise UsageError(
                f"{path} does not load in ONNX Runtime: {first_line(exc)}; re-export the bundle"
            ) from None
        for kind, declared, actual in (
            ("inputs", model.inputs, session.get_inputs()),
            ("outputs", model.outputs, session.get_outputs()),
        ):
            if [t.name for t in declared] != [a.name for a in actual]:
                raise UsageError(
                    f"{path}: the graph's {kind} {[a.name for a in actual]} are not the "
                    f"manifest's {[t.name for t in declared]}; re-export the bundle"
                )


def _readme(bundle: Path, plan: RepositoryPlan, stored: str) -> str:
    rows = []
    for model in plan.models:
        batching = (
            f"max {model.max_batch_size}, preferred {list(model.preferred_batch)}, "
            f"{model.max_queue_delay_us} us"
            if model.max_batch_size
            else "fixed batch (no dynamic batching)"
        )
        default = " (default)" if model.config == plan.default_config else ""
        rows.append(
            f"| `{model.name}`{default} | {model.backend} | {model.instance_kind} x "
            f"{model.instances} | {batching} | `{model.source}` | {model.note or '-'} |"
        )
    for ensemble in plan.ensembles:
        rows.append(
            f"| `{ensemble.name}` | ensemble: `{PREPROCESS_MODEL}` -> `{ensemble.model}` | - | "
            f"max {ensemble.max_batch_size} | - | send encoded images as BYTES `{IMAGE_INPUT}` |"
        )
    if plan.preprocess is not None:
        rows.append(
            f"| `{PREPROCESS_MODEL}` | python | KIND_CPU x {plan.preprocess.instances} | max "
            f"{plan.preprocess.max_batch_size} | the manifest's preprocessing | needs numpy and "
            "Pillow in Triton's Python environment |"
        )
    start = "tritonserver --model-repository=$PWD/REPOSITORY"
    plugins = ""
    if plan.needs_plugin_library:
        start += f" --backend-config=tensorrt,plugins=$PWD/REPOSITORY/{PLUGIN_FILE}"
        plugins = (
            f"\nThe TensorRT engines of {', '.join(m.name for m in plan.models if m.plugins)} "
            f"load trimformer's plugins from `{PLUGIN_FILE}` (the flag above; LD_PRELOAD of the "
            "file works too). It must be built against the TensorRT of the Triton container.\n"
        )
    engines = sorted({m.tensorrt for m in plan.models if m.tensorrt})
    if engines:
        plugins += (
            f"\nThe engines were built with TensorRT {', '.join(engines)} for one GPU: use the "
            "Triton release that ships that TensorRT, on that GPU, or rebuild them there.\n"
        )
    return (
        f"# Triton model repository of `{bundle.name}`\n\n"
        f"Written by `trimformer triton` for device profile `{plan.profile}`. One model per "
        f"config of the bundle; a client picks the config by model name (the bundle's default "
        f"is `{plan.default_config}`).\n\n"
        "| model | backend | instances | batching | from the bundle | note |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Start it with `{start}`.\n{plugins}\n"
        f"weights.bin: {stored}. Copy the repository with a tool that keeps hard links "
        "(cp -a, tar, rsync -aH) to keep one copy; an object store gets one per model.\n\n"
        "trimformer checked each config.pbtxt against Triton's ModelConfig schema and loaded "
        "each ONNX model in ONNX Runtime from its file, as Triton's backend does; Triton itself "
        "did not run it.\n"
    )

"""Build TensorRT engines for a bundle from a device profile, and record them in the bundle.

Two halves, so that everything but the TensorRT calls is tested without libnvinfer:

- ``build_settings`` translates a device profile (plus CLI overrides) and the TensorRT version
  into a ``BuildSettings``: which graph passes run first (``fp16`` on the ONNX side for
  TensorRT 11, which has no weak typing), which builder flags are set (``FP16``/``INT8`` on
  TensorRT 10, ``GPU_FALLBACK`` with a DLA core), workspace, optimisation level, batch range.
- ``build_engine`` applies them with the TensorRT Python API (Builder, OnnxParser, builder
  config, optimisation profile, timing cache), loads the plugin library (or registers the
  Python QDP form when no library is built), and writes ``engines/<profile>.plan`` and its
  ``.json`` record (TensorRT version, GPU, compute capability, settings) atomically.
  ``build_engines`` with config names (a config bank) writes ``engines/<profile>/<config>.plan``
  per config instead, weight-stripped (see ``trt_bank`` for why and what is shared).

The manifest lists engines under ``engines`` (``<profile>`` or ``<profile>/<config>`` -> plan
and record, each with its sha256), beside ``files``: ``bundle.read_manifest`` accepts only
top-level names in ``files``.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trimformer import __version__
from trimformer.bundle import (
    file_record,
    read_manifest,
    sha256_file,
    update_manifest,
    write_atomic,
)
from trimformer.errors import RuntimeFailure, UsageError
from trimformer.profiles.device_profiles import BatchRange, DeviceProfile
from trimformer.runtime.session import TensorSpec
from trimformer.runtime.trt_bank import REFIT_STEPS, BankEngine, engine_key, plan_bank, weight_flags
from trimformer.runtime.trt_env import GpuIdentity, TrtVersion, tensorrt_logger

if TYPE_CHECKING:
    import onnx
    import tensorrt

    from trimformer.graph_passes import PassResult

__all__ = [
    "ENGINE_FORMAT",
    "BuildResult",
    "BuildSettings",
    "EngineFiles",
    "PluginChoice",
    "add_engine_to_manifest",
    "build_engine",
    "build_engines",
    "build_settings",
    "check_engine_compatible",
    "configure_builder",
    "engine_files",
    "engine_record",
    "has_quantize_nodes",
    "input_shapes",
    "load_plugins",
    "prepared_graph",
    "read_engine_record",
    "require_tensorrt_profile",
    "write_engine",
]

ENGINE_FORMAT = "trimformer-engine"
_MIB = 1 << 20

Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class BuildSettings:
    """Everything a build decides before TensorRT runs, as plain values (recorded in the .json)."""

    profile: str
    tensorrt: str
    precision: str
    strongly_typed: bool
    onnx_passes: tuple[str, ...]
    builder_flags: tuple[str, ...]
    workspace_bytes: int
    optimization_level: int
    dla_core: int | None
    batch: BatchRange
    requires_qdq: bool = False
    timing_cache: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["onnx_passes"] = list(self.onnx_passes)
        data["builder_flags"] = list(self.builder_flags)
        return data


def require_tensorrt_profile(profile: DeviceProfile) -> None:
    """Refuse a profile of another backend (cpu-ort) before anything is loaded."""
    if profile.backend != "tensorrt":
        raise UsageError(
            f"device profile {profile.name} is for backend {profile.backend}; trimformer build "
            "makes TensorRT engines: choose a tensorrt profile (trimformer build --help lists them)"
        )


def build_settings(
    profile: DeviceProfile,
    version: TrtVersion,
    precision: str | None = None,
    timing_cache: Path | None = None,
) -> BuildSettings:
    """Translate a device profile for TensorRT ``version``; ``precision`` overrides the profile's.

    TensorRT 10 is weakly typed: FP16/INT8 are builder flags. TensorRT 11 is always strongly
    typed: FP16 is the ``fp16`` graph pass, and INT8 comes only from Q/DQ nodes in the model.
    """
    require_tensorrt_profile(profile)
    if version.major < 10:
        raise UsageError(
            f"TensorRT {version} is too old: the plugins are IPluginV3, which needs TensorRT 10+"
        )
    precision = precision or profile.precision
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"precision {precision!r} is not one of fp32, fp16, int8")
    if profile.dla_core is not None and precision == "fp32":
        raise UsageError(
            f"device profile {profile.name} uses DLA core {profile.dla_core}, which has no FP32: "
            "use --precision fp16 or a profile without dla_core"
        )
    strongly_typed = version.strongly_typed_only
    passes = ["cleanup"]
    flags: list[str] = []
    if strongly_typed and precision == "fp16":
        passes.append("fp16")
    elif not strongly_typed and precision == "fp16":
        flags.append("FP16")
    elif not strongly_typed and precision == "int8":
        flags += ["INT8", "FP16"]
    if profile.dla_core is not None and profile.gpu_fallback:
        flags.append("GPU_FALLBACK")
    passes += ["to-plugins", "lint"]
    if profile.workspace_mib is None or profile.builder_optimization_level is None:
        raise UsageError(f"device profile {profile.name} lacks workspace_mib or its level")
    return BuildSettings(
        profile=profile.name,
        tensorrt=str(version),
        precision=precision,
        strongly_typed=strongly_typed,
        onnx_passes=tuple(passes),
        builder_flags=tuple(flags),
        workspace_bytes=profile.workspace_mib * _MIB,
        optimization_level=profile.builder_optimization_level,
        dla_core=profile.dla_core,
        # DLA takes static shapes only (min = opt = max), else its layers fall back to the GPU
        batch=profile.batch if profile.dla_core is None else BatchRange(*[profile.batch.opt] * 3),
        requires_qdq=precision == "int8",
        timing_cache=str(timing_cache) if timing_cache is not None else None,
    )


def input_shapes(inputs: Sequence[TensorSpec], batch: BatchRange) -> Shapes:
    """(min, opt, max) shapes per input: a dynamic first dim takes the batch range, static dims
    stay; any other dynamic dim is an error (the engine would need a range nobody gave)."""
    shapes: Shapes = {}
    for spec in inputs:
        low: list[int] = []
        opt: list[int] = []
        high: list[int] = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                sizes = (dim, dim, dim)
            elif axis == 0:
                sizes = (batch.min, batch.opt, batch.max)
            else:
                raise UsageError(
                    f"input {spec.name!r} has dynamic dim {axis} ({dim!r}); only the batch dim may "
                    "be dynamic for an engine: re-export with a fixed image size"
                )
            low.append(sizes[0])
            opt.append(sizes[1])
            high.append(sizes[2])
        shapes[spec.name] = (tuple(low), tuple(opt), tuple(high))
    return shapes


def has_quantize_nodes(model: onnx.ModelProto) -> bool:
    """Whether the graph carries explicit quantization (QuantizeLinear/DequantizeLinear)."""
    from trimformer.graph_passes.base import iter_node_scopes

    return any(
        node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx")
        for nodes, _ in iter_node_scopes(model)
        for node in nodes
    )


@dataclass(frozen=True)
class EngineFiles:
    """Where a profile's engine and its record live inside a bundle."""

    plan: str
    record: str

    def paths(self, bundle: Path) -> tuple[Path, Path]:
        return bundle / self.plan, bundle / self.record


def engine_files(profile: str, config: str | None = None) -> EngineFiles:
    """``engines/<profile>.plan`` and ``.json``, or ``engines/<profile>/<config>.plan`` and
    ``.json`` for a config of a bank (bundle-relative)."""
    for name in (profile, config):
        if name is not None and (not name or "/" in name or name.startswith(".")):
            raise UsageError(f"{name!r} cannot name an engine file; use a plain name")
    stem = f"engines/{profile}" if config is None else f"engines/{profile}/{config}"
    return EngineFiles(f"{stem}.plan", f"{stem}.json")


def _rebuild(profile: object, config: object) -> str:
    """The command that rebuilds an engine."""
    option = "" if config is None else f" --config {config}"
    return f"--device {profile}{option}"


def engine_record(
    settings: BuildSettings,
    gpu: GpuIdentity,
    graph: Mapping[str, Any],
    plugins: PluginChoice,
    power_mode: str | None = None,
    engine: BankEngine | None = None,
) -> dict[str, Any]:
    """The .json written beside a plan: what the runtime checks before loading it.

    ``engine`` (a config of a bank) adds its config, graph and how its weights are held:
    "embedded" in the plan, or "stripped" and refitted at load by ``refit`` steps.
    """
    engine = engine or BankEngine(None, "model", str(graph.get("file", "model.onnx")), False)
    return {
        "format": ENGINE_FORMAT,
        "profile": settings.profile,
        "config": engine.config,
        "graph": engine.graph,
        "graph_file": engine.graph_file,
        "weights": "stripped" if engine.stripped else "embedded",
        "refit": list(REFIT_STEPS) if engine.stripped else [],
        "plan": engine_files(settings.profile, engine.config).plan,
        "tensorrt": settings.tensorrt,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "power_mode": power_mode,
        "plugins": plugins.source,
        "plugins_aot_blocked": plugins.aot_blocked,
        "settings": settings.to_json(),
        "inputs": list(graph["inputs"]),
        "outputs": list(graph["outputs"]),
        "trimformer": __version__,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def check_engine_compatible(
    record: Mapping[str, Any], version: TrtVersion, gpu: GpuIdentity, where: str
) -> None:
    """Refuse an engine built for another TensorRT version or GPU, naming both in one line."""
    built_version = TrtVersion.parse(str(record.get("tensorrt", "0.0")))
    same_gpu = (
        record.get("gpu") == gpu.name and record.get("compute_capability") == gpu.compute_capability
    )
    if built_version == version and same_gpu:
        return
    rebuild = _rebuild(record.get("profile", "PROFILE"), record.get("config"))
    raise UsageError(
        f"{where} was built with TensorRT {built_version} for {record.get('gpu')} (compute "
        f"{record.get('compute_capability')}), but this machine has TensorRT {version} and "
        f"{gpu.name} (compute {gpu.compute_capability}); rebuild it here with "
        f"trimformer build BUNDLE {rebuild}"
    )


def add_engine_to_manifest(bundle: Path, profile: str, config: str | None = None) -> dict[str, Any]:
    """Record an engine's plan and .json (sha256, bytes) in the manifest's ``engines`` and
    rewrite manifest.json atomically; every other manifest entry is kept."""
    entry = {
        kind: file_record(bundle, relative)
        for kind, relative in asdict(engine_files(profile, config)).items()
    }

    def record(manifest: dict[str, Any]) -> None:
        manifest.setdefault("engines", {})[engine_key(profile, config)] = entry

    return update_manifest(bundle, record)


def write_engine(bundle: Path, plan: bytes, record: Mapping[str, Any]) -> EngineFiles:
    """Write a plan and its record into the bundle (each atomically), then the manifest."""
    config = record.get("config")
    files = engine_files(str(record["profile"]), config)
    plan_path, record_path = files.paths(bundle)
    try:
        write_atomic(plan_path, plan)
        write_atomic(record_path, (json.dumps(record, indent=2) + "\n").encode())
        add_engine_to_manifest(bundle, str(record["profile"]), config)
    except OSError as exc:
        raise RuntimeFailure(f"writing the engine into {bundle} failed: {exc}") from None
    return files


def read_engine_record(
    bundle: Path, manifest: Mapping[str, Any], profile: str, config: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """The plan path and record of ``profile``'s engine (of ``config``, for a bank), after
    checking both files' sha256."""
    key = engine_key(profile, config)
    entry = (manifest.get("engines") or {}).get(key)
    built = ", ".join(manifest.get("engines") or {}) or "none"
    rebuild = _rebuild(profile, config)
    if not isinstance(entry, dict):
        raise UsageError(
            f"{bundle} has no engine for {key!r} (built: {built}); run trimformer build "
            f"{bundle} {rebuild}"
        )
    paths = engine_files(profile, config).paths(bundle)
    for kind, path in zip(("plan", "record"), paths, strict=True):
        if not path.is_file():
            raise UsageError(f"{path} is missing; run trimformer build {bundle} {rebuild}")
        if sha256_file(path) != entry.get(kind, {}).get("sha256"):
            raise UsageError(
                f"{path} does not match its sha256 in the manifest (corrupt or modified); run "
                f"trimformer build {bundle} {rebuild}"
            )
    try:
        record = json.loads(paths[1].read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{paths[1]} is not valid JSON ({exc}); rebuild the engine") from None
    if not isinstance(record, dict) or record.get("format") != ENGINE_FORMAT:
        raise UsageError(f"{paths[1]} is not a trimformer engine record; rebuild the engine")
    return paths[0], record


def prepared_graph(
    bundle: Path, graph_file: str, passes: Sequence[str]
) -> tuple[onnx.ModelProto, list[PassResult]]:
    """A bundle graph after the build's graph passes: what TensorRT parses, and what a
    weight-stripped engine is refitted from (the passes are deterministic)."""
    import onnx

    from trimformer.graph_passes import run_passes

    return run_passes(onnx.load(bundle / graph_file), passes)


# --------------------------------------------------------------------------------------------
# The TensorRT calls
# --------------------------------------------------------------------------------------------


def configure_builder(
    trt: ModuleType,
    builder: tensorrt.Builder,
    config: tensorrt.IBuilderConfig,
    settings: BuildSettings,
    shapes: Shapes,
) -> None:
    """Apply ``settings`` to a TensorRT builder config (flags, pool, level, DLA, profile)."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.optimization_level
    for flag in settings.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings.dla_core is not None:
        available = builder.num_DLA_cores
        if settings.dla_core >= available:
            raise UsageError(
                f"device profile {settings.profile} asks for DLA core {settings.dla_core}, but "
                f"this device has {available}; set dla_core: null"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
    config.add_optimization_profile(profile)


def _parse(
    trt: ModuleType,
    network: tensorrt.INetworkDefinition,
    logger: tensorrt.ILogger,
    model: onnx.ModelProto,
) -> None:
    """Parse ``model`` into ``network`` from a file, so weights over 2 GiB can stay external."""
    parser: tensorrt.OnnxParser = trt.OnnxParser(network, logger)
    from trimformer.graph_passes.model_io import saved_onnx

    with saved_onnx(model) as path:
        if parser.parse_from_file(str(path)):
            return
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
    raise RuntimeFailure(
        f"TensorRT's ONNX parser refused the model: {'; '.join(errors) or 'no reason given'}"
    )


@dataclass(frozen=True)
class PluginChoice:
    """What provides the plugins of one build: "library", "qdp-aot" (Triton kernels compiled
    into the engine) or "qdp" (the Python JIT form), and why AOT was not used, when it was not."""

    source: str
    aot_blocked: str | None = None

    def network_flags(self, trt: ModuleType) -> int:
        """The network flag choosing between Python plugins' AOT and JIT forms (10.9+)."""
        flags = trt.NetworkDefinitionCreationFlag
        if self.source == "library" or not hasattr(flags, "PREFER_AOT_PYTHON_PLUGINS"):
            return 0
        prefer = (
            "PREFER_AOT_PYTHON_PLUGINS" if self.source == "qdp-aot" else "PREFER_JIT_PYTHON_PLUGINS"
        )
        return 1 << int(getattr(flags, prefer))


def load_plugins(
    trt: ModuleType,
    registry: tensorrt.IPluginRegistry,
    library: Path | None,
    model: onnx.ModelProto | None = None,
    capability: int | None = None,
) -> PluginChoice:
    """Load the plugin library into ``registry``; without one, register the Python QDP form:
    ahead-of-time Triton kernels when TensorRT (10.9+), Triton and every plugin node of
    ``model`` (on a GPU of compute ``capability``) allow it, else the JIT form. A graph with
    more tokens than the kernels take (``PLUGIN_MAX_TOKENS``) gets the JIT form even where a
    library was found; a library given explicitly is an error then.

    The choice is recorded with the engine, so a runtime loads the same plugins.
    """
    from trimformer.graph_passes.base import PLUGIN_MAX_TOKENS, over_token_cap
    from trimformer.runtime.trt_env import find_plugin_library, load_plugin_library

    version = TrtVersion.parse(trt.__version__)
    try:
        path = find_plugin_library(library)
    except UsageError:
        if library is not None or not version.has_qdp:
            raise
        return _python_plugins(version, model, capability)
    too_many = over_token_cap(model) if model is not None else None
    if too_many is None:
        load_plugin_library(registry, path)
        return PluginChoice("library")
    if library is not None or not version.has_qdp:
        way = "build without --plugin-library (the Python plugins' JIT form runs it) or "
        raise UsageError(
            f"{too_many}, more than the plugin library's kernels take ({PLUGIN_MAX_TOKENS}); "
            f"{way if version.has_qdp else ''}export the model at a smaller image size"
        )
    return _python_plugins(version, model, capability)


def _python_plugins(
    version: TrtVersion, model: onnx.ModelProto | None, capability: int | None
) -> PluginChoice:
    """Register the QDP form: AOT where every plugin node's kernel fits, else JIT and why."""
    from trimformer.plugins_qdp import aot_blocker, register_qdp_plugins

    blocked: str | None
    if not version.has_aot_qdp:
        blocked = f"TensorRT {version} has no AOT Python plugins (needs 10.9+)"
    elif model is None or capability is None:
        blocked = "no graph or GPU was given to check the kernels against"
    else:
        blocked = aot_blocker(model, capability)
    if blocked is None:
        register_qdp_plugins(aot_capability=capability)
        return PluginChoice("qdp-aot")
    register_qdp_plugins()
    return PluginChoice("qdp", blocked)


@dataclass(frozen=True)
class BuildResult:
    """A built engine: its files in the bundle, its record, and what the graph passes did."""

    files: EngineFiles
    record: dict[str, Any]
    passes: list[PassResult] = field(default_factory=list)


def build_engine(
    bundle: Path,
    profile: DeviceProfile,
    precision: str | None = None,
    timing_cache: Path | None = None,
    plugin_library: Path | None = None,
) -> BuildResult:
    """Build the bundle's model graph into ``engines/<profile>.plan`` for this machine's GPU."""
    return build_engines(bundle, profile, None, precision, timing_cache, plugin_library)[0]


def build_engines(
    bundle: Path,
    profile: DeviceProfile,
    configs: Sequence[str] | None = None,
    precision: str | None = None,
    timing_cache: Path | None = None,
    plugin_library: Path | None = None,
) -> list[BuildResult]:
    """Build engines for this machine's GPU: the model graph (``configs`` None), or one
    weight-stripped engine per named config ("all": every config of the bank)."""
    from trimformer.runtime.trt_env import gpu_identity, import_tensorrt, jetson_power_mode

    require_tensorrt_profile(profile)
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    trt = import_tensorrt()
    version = TrtVersion.parse(trt.__version__)
    base = build_settings(profile, version, precision, timing_cache)
    jobs = plan_bank(manifest, configs, version, base.dla_core)
    stripped = replace(
        base, builder_flags=base.builder_flags + weight_flags(version, base.dla_core)
    )
    graphs = manifest["graphs"]
    gpu = gpu_identity()
    power_mode = jetson_power_mode()
    results = []
    for job in jobs:
        settings = stripped if job.stripped else base
        graph = {**graphs[job.graph], "file": job.graph_file}
        plan, plugins, passes = _build_plan(trt, bundle, graph, settings, plugin_library, gpu)
        record = engine_record(settings, gpu, graph, plugins, power_mode, job)
        files = write_engine(bundle, plan, record)
        results.append(BuildResult(files, record, passes))
    return results


def _build_plan(
    trt: ModuleType,
    bundle: Path,
    graph: Mapping[str, Any],
    settings: BuildSettings,
    plugin_library: Path | None,
    gpu: GpuIdentity,
) -> tuple[bytes, PluginChoice, list[PassResult]]:
    """One graph through the passes and TensorRT's builder: the serialised plan, what provides
    its plugins, and what the passes did. Updates the timing cache when one is set."""
    inputs = [TensorSpec.from_manifest(e) for e in graph["inputs"]]
    shapes = input_shapes(inputs, settings.batch)
    model, results = prepared_graph(bundle, graph["file"], settings.onnx_passes)
    if settings.requires_qdq and not has_quantize_nodes(model):
        raise UsageError(
            "precision int8 needs a Q/DQ-quantized model (explicit quantization); trimformer "
            "does not calibrate: quantize model.onnx first (e.g. TensorRT Model Optimizer) or "
            "use --precision fp16"
        )

    logger: tensorrt.ILogger = tensorrt_logger(trt)
    builder: tensorrt.Builder = trt.Builder(logger)
    major, minor = gpu.compute_capability.split(".")
    plugins = load_plugins(
        trt, builder.get_plugin_registry(), plugin_library, model, int(major) * 10 + int(minor)
    )
    if plugins.source != "library":
        from trimformer.plugins_qdp import qdp_graph

        model = qdp_graph(model)  # the Python form's creators all have TensorRT's version "1"
    # weakly typed on TensorRT 10 (precision from builder flags); 11 is always strongly typed
    network = builder.create_network(plugins.network_flags(trt))
    _parse(trt, network, logger, model)
    config = builder.create_builder_config()
    configure_builder(trt, builder, config, settings, shapes)
    cache_path = Path(settings.timing_cache) if settings.timing_cache is not None else None
    cache_bytes = (
        cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    )
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeFailure(
            f"TensorRT could not build an engine for {settings.profile} ({graph['file']}); rerun "
            "with TRIMFORMER_DEBUG=1 and read TensorRT's log above"
        )
    if cache_path is not None:
        write_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan)), plugins, results

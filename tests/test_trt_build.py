"""Engine building without libnvinfer: device profile -> BuildSettings for TensorRT 10 and 11,
the error paths, engine records and compatibility checks, the manifest update, and the whole
build flow against a recording stand-in for the TensorRT Python API."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnx
import pytest
from onnx import helper
from trt_helpers import make_bundle, profile

from trimformer.bundle import read_manifest
from trimformer.errors import UsageError
from trimformer.graph_passes.base import PLUGIN_DOMAIN
from trimformer.ops import get_op
from trimformer.profiles.device_profiles import BatchRange
from trimformer.runtime import trt_build, trt_env
from trimformer.runtime.session import TensorSpec
from trimformer.runtime.trt_build import (
    PluginChoice,
    add_engine_to_manifest,
    build_engine,
    build_settings,
    check_engine_compatible,
    configure_builder,
    engine_record,
    has_quantize_nodes,
    input_shapes,
    read_engine_record,
    write_engine,
)
from trimformer.runtime.trt_env import GpuIdentity, TrtVersion

TRT10 = TrtVersion(10, 3, 0)
TRT11 = TrtVersion(11, 1, 0)
GPU = GpuIdentity("Orin", "8.7")


# ------------------------------------------------------------------ translation


@pytest.mark.parametrize(
    ("version", "precision", "passes", "flags", "strongly_typed"),
    [
        (TRT10, "fp32", ("cleanup", "to-plugins", "lint"), (), False),
        (TRT10, "fp16", ("cleanup", "to-plugins", "lint"), ("FP16",), False),
        (TRT10, "int8", ("cleanup", "to-plugins", "lint"), ("INT8", "FP16"), False),
        (TRT11, "fp32", ("cleanup", "to-plugins", "lint"), (), True),
        (TRT11, "fp16", ("cleanup", "fp16", "to-plugins", "lint"), (), True),
        (TRT11, "int8", ("cleanup", "to-plugins", "lint"), (), True),
    ],
)
def test_precision_is_builder_flags_on_10_and_graph_passes_on_11(
    version, precision, passes, flags, strongly_typed
):
    settings = build_settings(profile(), version, precision)
    assert settings.onnx_passes == passes
    assert settings.builder_flags == flags
    assert settings.strongly_typed is strongly_typed
    assert settings.requires_qdq is (precision == "int8")
    assert settings.tensorrt == str(version)


def test_profile_values_are_carried_over():
    settings = build_settings(profile("desktop-rtx"), TRT10, None, Path("cache.bin"))
    assert settings.precision == "fp16"
    assert settings.workspace_bytes == 8192 << 20
    assert settings.optimization_level == 4
    assert settings.batch == BatchRange(1, 8, 64)
    assert settings.dla_core is None and settings.timing_cache == "cache.bin"
    assert json.loads(json.dumps(settings.to_json()))["builder_flags"] == ["FP16"]


def test_dla_core_sets_gpu_fallback_and_a_static_batch():
    settings = build_settings(profile(dla_core=1), TRT10)
    assert settings.dla_core == 1 and settings.builder_flags == ("FP16", "GPU_FALLBACK")
    opt = profile().batch.opt  # AGX Orin: 1..16, tuned for 4
    assert (settings.batch.min, settings.batch.opt, settings.batch.max) == (opt, opt, opt)
    assert build_settings(profile(), TRT10).batch == profile().batch  # GPU: the range
    no_fallback = build_settings(profile(dla_core=0, gpu_fallback=False), TRT11)
    assert no_fallback.builder_flags == ()


@pytest.mark.parametrize(
    ("device", "version", "precision", "match"),
    [
        ("cpu-ort", TRT10, None, "is for backend onnxruntime"),
        ("desktop-rtx", TrtVersion(8, 6), None, "TensorRT 8.6.0 is too old"),
        ("desktop-rtx", TRT10, "bf16", "precision 'bf16' is not one of"),
    ],
)
def test_translation_refuses(device, version, precision, match):
    with pytest.raises(UsageError, match=match):
        build_settings(profile(device), version, precision)
    with pytest.raises(UsageError, match="has no FP32"):
        build_settings(profile(dla_core=0), TRT10, "fp32")


def test_input_shapes_give_the_batch_range_to_dynamic_batch_only():
    specs = [
        TensorSpec("x", ("batch", 3, 96, 96), "float32"),
        TensorSpec("fixed", (2, 5), "float32"),
    ]
    shapes = input_shapes(specs, BatchRange(1, 4, 16))
    assert shapes["x"] == ((1, 3, 96, 96), (4, 3, 96, 96), (16, 3, 96, 96))
    assert shapes["fixed"] == ((2, 5), (2, 5), (2, 5))
    with pytest.raises(UsageError, match="dynamic dim 2"):
        input_shapes([TensorSpec("x", (1, 3, "h", 96), "float32")], BatchRange(1, 1, 1))


def test_quantize_nodes_are_detected():
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["q"])
    graph = helper.make_graph([node], "g", [], [])
    assert has_quantize_nodes(helper.make_model(graph))
    assert not has_quantize_nodes(helper.make_model(helper.make_graph([], "g", [], [])))


# ------------------------------------------------------------------ records, compatibility


def _record(**changes: Any) -> dict[str, Any]:
    settings = build_settings(profile(), TRT10)
    graph = {"inputs": [], "outputs": []}
    return {**engine_record(settings, GPU, graph, PluginChoice("library"), "MAXN"), **changes}


def test_engine_record_names_version_gpu_and_settings():
    record = _record()
    assert record["format"] == "trimformer-engine"
    assert record["plan"] == "engines/jetson-agx-orin.plan"
    assert (record["tensorrt"], record["gpu"], record["compute_capability"]) == (
        "10.3.0",
        "Orin",
        "8.7",
    )
    assert record["power_mode"] == "MAXN" and record["settings"]["workspace_bytes"] == 4096 << 20


def test_compatible_engine_passes_and_others_are_refused_naming_both():
    check_engine_compatible(_record(), TrtVersion(10, 3, 0), GPU, "e.plan")
    cases = [
        (TrtVersion(10, 8, 0), GPU, "TensorRT 10.3.0 .*this machine has TensorRT 10.8.0"),
        (
            TRT10,
            GpuIdentity("NVIDIA A100", "8.0"),
            "for Orin .compute 8.7.*NVIDIA A100 .compute 8.0",
        ),
        (TRT10, GpuIdentity("Orin", "8.9"), "compute 8.7.*compute 8.9"),
    ]
    for version, gpu, match in cases:
        with pytest.raises(UsageError, match=match) as info:
            check_engine_compatible(_record(), version, gpu, "engines/x.plan")
        message = str(info.value)
        assert "\n" not in message and "trimformer build BUNDLE --device jetson-agx-orin" in message


# ------------------------------------------------------------------ bundle files


def test_writing_an_engine_keeps_the_bundle_valid(tmp_path: Path):
    bundle = make_bundle(tmp_path / "b")
    before = json.loads((bundle / "manifest.json").read_text())
    files = write_engine(bundle, b"PLAN", _record())
    manifest = read_manifest(bundle)  # every original hash still checks
    assert manifest["files"] == before["files"] and manifest["graphs"] == before["graphs"]
    entry = manifest["engines"]["jetson-agx-orin"]
    assert entry["plan"]["path"] == files.plan == "engines/jetson-agx-orin.plan"
    assert entry["plan"]["bytes"] == 4
    plan, record = read_engine_record(bundle, manifest, "jetson-agx-orin")
    assert plan.read_bytes() == b"PLAN" and record["gpu"] == "Orin"
    assert not [p for p in (bundle / "engines").iterdir() if p.name.startswith(".")]
    write_engine(bundle, b"PLAN2", _record(profile="desktop-rtx"))
    assert set(read_manifest(bundle)["engines"]) == {"jetson-agx-orin", "desktop-rtx"}


def test_engine_records_are_checked_against_the_manifest(tmp_path: Path):
    bundle = make_bundle(tmp_path / "b")
    with pytest.raises(UsageError, match=r"has no engine for 'desktop-rtx' \(built: none"):
        read_engine_record(bundle, read_manifest(bundle), "desktop-rtx")
    write_engine(bundle, b"PLAN", _record())
    (bundle / "engines" / "jetson-agx-orin.plan").write_bytes(b"TAMPERED")
    with pytest.raises(UsageError, match="does not match its sha256"):
        read_engine_record(bundle, read_manifest(bundle), "jetson-agx-orin")
    (bundle / "engines" / "jetson-agx-orin.json").write_text("{not json")
    add_engine_to_manifest(bundle, "jetson-agx-orin")
    with pytest.raises(UsageError, match="is not valid JSON"):
        read_engine_record(bundle, read_manifest(bundle), "jetson-agx-orin")
    (bundle / "engines" / "jetson-agx-orin.plan").unlink()
    with pytest.raises(UsageError, match="is missing"):
        read_engine_record(bundle, read_manifest(bundle), "jetson-agx-orin")


# ------------------------------------------------------------------ the TensorRT calls


class Recorder:
    """Records attribute writes and method calls made on it; methods return configured values."""

    def __init__(self, log: list, name: str, returns: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_returns", returns or {})

    def __setattr__(self, key: str, value: Any) -> None:
        self._log.append((f"{self._name}.{key}", value))

    def __getattr__(self, key: str) -> Any:
        returns = self._returns

        def method(*args: Any) -> Any:
            self._log.append((f"{self._name}.{key}()", args))
            value = returns.get(key)
            return value(*args) if callable(value) else value

        return returns[key] if key in returns and not callable(returns[key]) else method


class FakeLogger:
    """``trt.Logger``: remembers the severity it was made with."""

    WARNING, VERBOSE = 2, 4

    def __init__(self, level: int) -> None:
        self.level = level


def fake_registry(log: list, loads: bool = True) -> Recorder:
    """TensorRT's plugin registry before our library is loaded: no trimformer creators; a load
    returns a handle, or None (what TensorRT returns when dlopen or getCreators fails)."""
    return Recorder(log, "registry", {"load_library": lambda path: "HANDLE" if loads else None})


def fake_tensorrt(log: list, version: str = "10.3.0.26", parse_ok: bool = True) -> Any:
    """A stand-in for the documented TensorRT Python API used by build_engine."""
    enum = SimpleNamespace
    cache = Recorder(log, "cache", {"serialize": lambda: b"CACHE"})
    config = Recorder(
        log,
        "config",
        {"create_timing_cache": lambda data: cache, "get_timing_cache": lambda: cache},
    )
    opt_profile = Recorder(log, "profile")
    registry = fake_registry(log)
    error = SimpleNamespace(desc=lambda: "No importer registered for op: BipartiteMerge")
    builder = Recorder(
        log,
        "builder",
        {
            "num_DLA_cores": 2,
            "get_plugin_registry": lambda: registry,
            "create_network": lambda flags: "network",
            "create_builder_config": lambda: config,
            "create_optimization_profile": lambda: opt_profile,
            "build_serialized_network": lambda network, cfg: b"SERIALIZED",
        },
    )

    def parser(network: Any, logger: Any) -> Any:
        def parse(path: str) -> bool:
            log.append(("parse", onnx.load(path)))
            return parse_ok

        return Recorder(
            log, "parser", {"parse_from_file": parse, "num_errors": 1, "get_error": lambda i: error}
        )

    return SimpleNamespace(
        __version__=version,
        Builder=lambda logger: builder,
        Logger=FakeLogger,
        OnnxParser=parser,
        MemoryPoolType=enum(WORKSPACE="WORKSPACE"),
        BuilderFlag=enum(
            FP16="FP16",
            INT8="INT8",
            GPU_FALLBACK="GPU_FALLBACK",
            STRIP_PLAN="STRIP_PLAN",
            REFIT_IDENTICAL="REFIT_IDENTICAL",
        ),
        DeviceType=enum(DLA="DLA", GPU="GPU"),
        NetworkDefinitionCreationFlag=enum(STRONGLY_TYPED=0),
        Dims=tuple,
    )


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run build_engine on a small bundle with the stand-in; return (bundle, log, library)."""
    library = tmp_path / "libtrimformer_plugins.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setattr(trt_env, "gpu_identity", lambda device=0: GPU)
    monkeypatch.setattr(trt_env, "jetson_power_mode", lambda: "MAXN")
    return make_bundle(tmp_path / "bundle"), library


def test_configure_builder_uses_the_documented_calls():
    log: list = []
    trt = fake_tensorrt(log)
    settings = build_settings(profile(dla_core=1), TRT10)
    builder, config = trt.Builder(None), trt.Builder(None).create_builder_config()
    shapes = {"x": ((1, 17, 8), (4, 17, 8), (16, 17, 8))}
    configure_builder(trt, builder, config, settings, shapes)
    calls = [entry for entry in log if not entry[0].startswith("builder.")]
    assert ("config.set_memory_pool_limit()", ("WORKSPACE", 4096 << 20)) in calls
    assert ("config.builder_optimization_level", 4) in calls
    assert ("config.set_flag()", ("FP16",)) in calls
    assert ("config.set_flag()", ("GPU_FALLBACK",)) in calls
    assert ("config.default_device_type", "DLA") in calls and ("config.DLA_core", 1) in calls
    assert ("profile.set_shape()", ("x", *shapes["x"])) in calls
    with pytest.raises(UsageError, match="DLA core 1, but this device has 0"):
        builder._returns["num_DLA_cores"] = 0
        configure_builder(trt, builder, config, settings, shapes)


@pytest.mark.parametrize("version", ["10.3.0.26", "11.1.0.3"])
def test_build_engine_runs_passes_builds_and_records(built, monkeypatch, version, tmp_path):
    bundle, library = built
    log: list = []
    monkeypatch.setattr(trt_env, "import_tensorrt", lambda: fake_tensorrt(log, version))
    cache = tmp_path / "timing.cache"
    result = build_engine(bundle, profile("desktop-rtx"), None, cache, library)

    parsed = next(value for key, value in log if key == "parse")
    assert [n.domain for n in parsed.graph.node if n.op_type == "BipartiteMerge"] == [PLUGIN_DOMAIN]
    if version.startswith("11"):  # strongly typed: FP16 is decided on the ONNX side
        assert "fp16" in [r.name for r in result.passes]
        assert ("config.set_flag()", ("FP16",)) not in log
    else:
        assert ("config.set_flag()", ("FP16",)) in log
    assert ("registry.load_library()", (str(library),)) in log
    assert ("profile.set_shape()", ("x", (1, 17, 8), (8, 17, 8), (64, 17, 8))) in log
    assert ("config.create_timing_cache()", (b"",)) in log
    assert any(key == "config.set_timing_cache()" and args[1] is False for key, args in log)
    assert cache.read_bytes() == b"CACHE"

    plan, record = read_engine_record(bundle, read_manifest(bundle), "desktop-rtx")
    assert plan.read_bytes() == b"SERIALIZED"
    assert record == result.record
    assert record["tensorrt"] == version.rsplit(".", 1)[0] and record["gpu"] == "Orin"
    assert record["plugins"] == "library" and record["power_mode"] == "MAXN"
    assert [r.name for r in result.passes] == list(record["settings"]["onnx_passes"])


def test_python_plugin_builds_label_plugin_nodes_with_tensorrt_s_qdp_version(built, monkeypatch):
    # TensorRT registers every Python plugin at version "1"; the library's carry the op's own.
    bundle, library = built
    log: list = []
    monkeypatch.setattr(trt_env, "import_tensorrt", lambda: fake_tensorrt(log, "10.9.0.34"))
    build_engine(bundle, profile("desktop-rtx"), plugin_library=library)
    parsed = [value for key, value in log if key == "parse"]

    def no_library(explicit: Any = None) -> Any:
        raise UsageError("libtrimformer_plugins.so not found")

    monkeypatch.setattr(trt_env, "find_plugin_library", no_library)
    monkeypatch.setattr(trt_build, "_python_plugins", lambda *_: trt_build.PluginChoice("qdp"))
    build_engine(bundle, profile("desktop-rtx"))
    parsed += [value for key, value in log if key == "parse"][1:]
    versions = [
        [a.s.decode() for n in model.graph.node for a in n.attribute if a.name == "plugin_version"]
        for model in parsed
    ]
    assert versions == [[str(get_op("BipartiteMerge").version)], ["1"]]


def test_build_engine_reports_parser_errors_and_missing_plugins(built, monkeypatch):
    bundle, library = built
    log: list = []
    monkeypatch.setattr(trt_env, "import_tensorrt", lambda: fake_tensorrt(log, parse_ok=False))
    with pytest.raises(Exception, match="No importer registered for op: BipartiteMerge"):
        build_engine(bundle, profile("desktop-rtx"), plugin_library=library)
    monkeypatch.setattr(trt_env, "import_tensorrt", lambda: fake_tensorrt(log))
    with pytest.raises(UsageError, match="does not exist"):
        build_engine(bundle, profile("desktop-rtx"), plugin_library=bundle / "missing.so")
    with pytest.raises(UsageError, match="needs a Q/DQ-quantized model"):
        build_engine(bundle, profile("desktop-rtx"), "int8", plugin_library=library)
    assert "engines" not in read_manifest(bundle)


def test_build_engine_without_tensorrt_says_how_to_get_it(built, monkeypatch):
    bundle, _ = built

    def missing() -> Any:
        raise trt_env.TensorRTMissing("TensorRT cannot be imported; install TensorRT")

    monkeypatch.setattr(trt_env, "import_tensorrt", missing)
    with pytest.raises(UsageError, match="install TensorRT"):
        build_engine(bundle, profile("desktop-rtx"))
    assert trt_build.ENGINE_FORMAT == "trimformer-engine"


def test_the_plugin_library_loads_once_and_a_failed_load_is_named(tmp_path: Path):
    from trimformer.errors import RuntimeFailure
    from trimformer.runtime.trt_env import load_plugin_library

    library = tmp_path / "libtrimformer_plugins.so"
    log: list = []
    load_plugin_library(fake_registry(log), library)
    assert ("registry.load_library()", (str(library),)) in log
    loaded = Recorder(log, "loaded", {"get_creator": lambda *key: "CREATOR"})
    load_plugin_library(loaded, library)  # its creators are registered: no second load
    assert not any(key == "loaded.load_library()" for key, _ in log)
    creator = next(args for key, args in log if key == "loaded.get_creator()")
    assert creator == ("BipartiteMerge", "2", "trimformer")
    with pytest.raises(RuntimeFailure, match=r"could not load the plugin library .* rebuild it"):
        load_plugin_library(fake_registry(log, loads=False), library)


def test_tensorrt_logs_verbosely_when_debugging(monkeypatch):
    from trimformer.runtime.trt_env import tensorrt_logger

    trt = SimpleNamespace(Logger=FakeLogger)
    monkeypatch.delenv("TRIMFORMER_DEBUG", raising=False)
    assert tensorrt_logger(trt).level == FakeLogger.WARNING
    monkeypatch.setenv("TRIMFORMER_DEBUG", "1")
    assert tensorrt_logger(trt).level == FakeLogger.VERBOSE

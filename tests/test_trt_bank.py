"""TensorRT config banks without libnvinfer: the build plan (engines, paths, records, builder
flags per TensorRT version, refit steps), the build and the refit against recording stand-ins
for the documented TensorRT Python API, the per-engine checks of the TensorRT Session, and its
config switching (``ConfigSwitch``), which needs no TensorRT at all."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from test_trt_build import (
    GPU,
    TRT10,
    TRT11,
    FakeLogger,
    Recorder,
    fake_registry,
    fake_tensorrt,
)
from trt_helpers import BANK, make_bank_bundle, make_bundle, profile

from trimformer.bundle import read_manifest
from trimformer.errors import RuntimeFailure, UsageError
from trimformer.runtime import trt_env, trt_session
from trimformer.runtime.trt_bank import (
    REFIT_STEPS,
    BankEngine,
    ConfigSwitch,
    engine_key,
    plan_bank,
    refit_engine,
    weight_flags,
)
from trimformer.runtime.trt_build import (
    PluginChoice,
    build_engines,
    build_settings,
    engine_files,
    engine_record,
    read_engine_record,
    write_engine,
)
from trimformer.runtime.trt_env import GpuIdentity, TrtVersion

# ------------------------------------------------------------------ the plan


@pytest.mark.parametrize("version", [TRT10, TRT11, TrtVersion(10, 0, 1)])
def test_bank_engines_are_stripped_and_refit_identical_on_10_and_11(version):
    assert weight_flags(version, None) == ("STRIP_PLAN", "REFIT_IDENTICAL")
    assert weight_flags(version, 0) == ()  # DLA: weights stay in the plan
    assert weight_flags(TrtVersion(8, 6, 1), None) == ()


def test_plan_bank_names_every_engine(tmp_path: Path):
    manifest = read_manifest(make_bank_bundle(tmp_path / "b"))
    assert plan_bank(manifest, None, TRT10, None) == [
        BankEngine(None, "model", "model.onnx", False)
    ]
    assert plan_bank(manifest, ["all"], TRT11, None) == [
        BankEngine(c, g, f"{g}.onnx", True) for c, g in BANK.items()
    ]
    assert plan_bank(manifest, ["none", "fast", "none"], TRT10, 1) == [
        BankEngine("none", "full", "full.onnx", False),
        BankEngine("fast", "cfg-fast", "cfg-fast.onnx", False),
    ]
    with pytest.raises(
        UsageError, match=r"no config 'slow'; choose from tome-r4, fast, none or all"
    ):
        plan_bank(manifest, ["slow"], TRT10, None)
    with pytest.raises(UsageError, match="--config all builds every config; give it alone"):
        plan_bank(manifest, ["all", "fast"], TRT10, None)


def test_a_bundle_from_before_banks_plans_its_one_config(tmp_path: Path):
    manifest = read_manifest(make_bundle(tmp_path / "b"))
    assert plan_bank(manifest, ["all"], TRT10, None) == [
        BankEngine("none", "model", "model.onnx", True)
    ]


def test_engine_paths_and_records_of_a_config(tmp_path: Path):
    assert engine_key("desktop-rtx", None) == "desktop-rtx"
    assert engine_key("desktop-rtx", "fast") == "desktop-rtx/fast"
    files = engine_files("desktop-rtx", "fast")
    assert (files.plan, files.record) == (
        "engines/desktop-rtx/fast.plan",
        "engines/desktop-rtx/fast.json",
    )
    assert engine_files("desktop-rtx").plan == "engines/desktop-rtx.plan"
    with pytest.raises(UsageError, match="cannot name an engine file"):
        engine_files("desktop-rtx", "../x")
    settings = build_settings(profile("desktop-rtx"), TRT10)
    graph = {"file": "cfg-fast.onnx", "inputs": [], "outputs": []}
    job = BankEngine("fast", "cfg-fast", "cfg-fast.onnx", True)
    record = engine_record(settings, GPU, graph, PluginChoice("library"), None, job)
    assert record["plan"] == "engines/desktop-rtx/fast.plan"
    assert (record["config"], record["graph"], record["weights"]) == (
        "fast",
        "cfg-fast",
        "stripped",
    )
    assert record["refit"] == list(REFIT_STEPS)
    whole = engine_record(settings, GPU, graph, PluginChoice("library"))
    assert (whole["config"], whole["weights"], whole["refit"]) == (None, "embedded", [])


# ------------------------------------------------------------------ the build


@pytest.fixture
def bank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    library = tmp_path / "libtrimformer_plugins.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setattr(trt_env, "gpu_identity", lambda device=0: GPU)
    monkeypatch.setattr(trt_env, "jetson_power_mode", lambda: None)
    return make_bank_bundle(tmp_path / "bank"), library


@pytest.mark.parametrize("version", ["10.3.0.26", "11.1.0.3"])
def test_build_all_writes_one_stripped_engine_per_config(bank, monkeypatch, version):
    bundle, library = bank
    log: list = []
    monkeypatch.setattr(trt_env, "import_tensorrt", lambda: fake_tensorrt(log, version))
    results = build_engines(bundle, profile("desktop-rtx"), ["all"], plugin_library=library)

    assert [r.files.plan for r in results] == [f"engines/desktop-rtx/{c}.plan" for c in BANK]
    assert sum(key == "parse" for key, _ in log) == len(BANK)  # one network per config
    assert ("config.set_flag()", ("STRIP_PLAN",)) in log
    assert ("config.set_flag()", ("REFIT_IDENTICAL",)) in log
    manifest = read_manifest(bundle)
    assert sorted(manifest["engines"]) == sorted(f"desktop-rtx/{c}" for c in BANK)
    for config, graph in BANK.items():
        plan, record = read_engine_record(bundle, manifest, "desktop-rtx", config)
        assert plan.read_bytes() == b"SERIALIZED"
        assert (record["config"], record["graph"], record["graph_file"]) == (
            config,
            graph,
            f"{graph}.onnx",
        )
        flags = record["settings"]["builder_flags"]
        assert flags[-2:] == ["STRIP_PLAN", "REFIT_IDENTICAL"]
        assert ("FP16" in flags) is version.startswith("10")  # 11 is strongly typed

    # the single-engine layout is kept for the default build
    (result,) = build_engines(bundle, profile("desktop-rtx"), None, plugin_library=library)
    assert result.files.plan == "engines/desktop-rtx.plan"
    assert (
        result.record["weights"] == "embedded" and "desktop-rtx" in read_manifest(bundle)["engines"]
    )


def test_cli_builds_the_configs_it_is_given(bank, monkeypatch):
    from trimformer.cli_build import build_command

    bundle, library = bank
    log: list = []
    monkeypatch.setattr(trt_env, "import_tensorrt", lambda: fake_tensorrt(log))
    args = [str(bundle), "--device", "desktop-rtx", "--plugin-library", str(library)]
    result = CliRunner().invoke(build_command, [*args, "--config", "fast"])
    assert result.exit_code == 0, result.output
    assert "desktop-rtx/fast.plan" in result.output and "stripped" in result.output
    result = CliRunner().invoke(build_command, [*args, "--config", "slow"])
    assert result.exit_code != 0 and "no config 'slow'" in str(result.exception)


# ------------------------------------------------------------------ the refit


def fake_refit(log: list, refit_ok: bool = True, missing: tuple = (), applied: bool = True) -> Any:
    """A stand-in for the documented Refitter / OnnxParserRefitter calls."""
    error = SimpleNamespace(desc=lambda: "weight 'w' not found")
    refitter = Recorder(
        log,
        "refitter",
        {"get_missing_weights": lambda: list(missing), "refit_cuda_engine": lambda: applied},
    )

    def parser(ref: Any, logger: Any) -> Any:
        assert ref is refitter
        return Recorder(
            log,
            "parser",
            {
                "refit_from_file": lambda path: refit_ok,
                "num_errors": 1,
                "get_error": lambda i: error,
            },
        )

    def make_refitter(engine: Any, logger: Any) -> Any:
        log.append(("Refitter", engine))
        return refitter

    return SimpleNamespace(Refitter=make_refitter, OnnxParserRefitter=parser)


def test_refit_makes_the_documented_calls_in_order(tmp_path: Path):
    log: list = []
    refit_engine(fake_refit(log), "ENGINE", None, tmp_path / "model.onnx")
    assert [key for key, _ in log] == [
        "Refitter",
        "parser.refit_from_file()",
        "refitter.get_missing_weights()",
        "refitter.refit_cuda_engine()",
    ]
    assert log[1][1] == (str(tmp_path / "model.onnx"),)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"refit_ok": False}, "could not refit the engine from model.onnx: weight 'w' not found"),
        ({"missing": ("a", "b")}, "left 2 weights unset"),
        ({"applied": False}, "refused the refit"),
    ],
)
def test_refit_failures_are_one_line(tmp_path: Path, kwargs, match):
    with pytest.raises(RuntimeFailure, match=match) as info:
        refit_engine(fake_refit([], **kwargs), "ENGINE", None, tmp_path / "model.onnx")
    assert "\n" not in str(info.value) and "rebuild it" in str(info.value)


# ------------------------------------------------------------------ the Session's checks


def _write(bundle: Path, config: str | None, version: TrtVersion, gpu: GpuIdentity = GPU) -> None:
    settings = build_settings(profile("desktop-rtx"), version)
    manifest = read_manifest(bundle)
    graph_name = BANK.get(config or "tome-r4", "model")
    graph = manifest["graphs"][graph_name]
    job = None if config is None else BankEngine(config, graph_name, graph["file"], True)
    write_engine(
        bundle, b"PLAN", engine_record(settings, gpu, graph, PluginChoice("library"), None, job)
    )


def _machine(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    trt = SimpleNamespace(__version__=version)
    monkeypatch.setattr(trt_session, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_session, "gpu_identity", lambda device=0: GPU)


def test_engine_records_find_bank_and_single_engines(tmp_path: Path):
    bundle = make_bank_bundle(tmp_path / "b")
    with pytest.raises(UsageError, match="has no engine for 'desktop-rtx'"):
        trt_session.engine_records(bundle, read_manifest(bundle), "desktop-rtx")
    _write(bundle, None, TRT10)  # the single-engine layout serves the config of graph "model"
    found = trt_session.engine_records(bundle, read_manifest(bundle), "desktop-rtx")
    assert list(found) == ["tome-r4"] and found["tome-r4"][0].name == "desktop-rtx.plan"
    _write(bundle, "none", TRT10)
    _write(bundle, "fast", TRT10)
    found = trt_session.engine_records(bundle, read_manifest(bundle), "desktop-rtx")
    assert list(found) == ["tome-r4", "fast", "none"]  # config order
    assert found["fast"][0] == bundle / "engines" / "desktop-rtx" / "fast.plan"
    (bundle / "engines" / "desktop-rtx" / "fast.plan").write_bytes(b"OTHER")
    with pytest.raises(
        UsageError, match=r"does not match its sha256.*--device desktop-rtx --config fast"
    ):
        trt_session.engine_records(bundle, read_manifest(bundle), "desktop-rtx")


def test_session_refuses_each_mismatched_engine_naming_it(tmp_path: Path, monkeypatch):
    bundle = make_bank_bundle(tmp_path / "b")
    _write(bundle, "tome-r4", TRT10)
    _write(bundle, "fast", TrtVersion(10, 8, 0))
    _machine(monkeypatch, "10.3.0.26")
    with pytest.raises(
        UsageError, match=r"fast\.plan was built with TensorRT 10\.8\.0.*--config fast"
    ):
        trt_session.TrtSession(bundle, "desktop-rtx")
    _write(bundle, "fast", TRT10, GpuIdentity("NVIDIA H200", "9.0"))
    with pytest.raises(
        UsageError, match=r"fast\.plan was built .*for NVIDIA H200 \(compute 9\.0\)"
    ):
        trt_session.load_engine(bundle, "desktop-rtx", config="tome-r4")


def test_session_refuses_engines_with_different_io(tmp_path: Path, monkeypatch):
    bundle = make_bank_bundle(tmp_path / "b")
    _write(bundle, "tome-r4", TRT10)
    settings = build_settings(profile("desktop-rtx"), TRT10)
    graph = {"file": "cfg-fast.onnx", "inputs": [], "outputs": []}
    job = BankEngine("fast", "cfg-fast", "cfg-fast.onnx", True)
    write_engine(
        bundle, b"PLAN", engine_record(settings, GPU, graph, PluginChoice("library"), None, job)
    )
    _machine(monkeypatch, "10.3.0.26")
    with pytest.raises(UsageError, match="configs 'tome-r4' and 'fast' declare different inputs"):
        trt_session.TrtSession(bundle, "desktop-rtx")


# ------------------------------------------------------------------ switching


class Runner:
    """What ``ConfigSwitch`` hands out: here a plain object that records its config."""

    def __init__(self, name: str, opened: list[str]) -> None:
        opened.append(name)
        self.name = name


def test_switch_opens_lazily_or_all_at_once():
    opened: list[str] = []
    switch = ConfigSwitch(BANK, "fast", lambda n: Runner(n, opened), "b (desktop-rtx)")
    assert switch.current == "fast" and opened == []
    assert switch.get().name == "fast" and switch.get("none").name == "none"
    assert opened == ["fast", "none"] and switch.current == "fast"
    switch.use("none")
    assert switch.current == "none" and opened == ["fast", "none"]  # already open: a swap
    switch.preload()
    assert sorted(opened) == sorted(BANK) and switch.opened() == ("fast", "none", "tome-r4")
    with pytest.raises(
        UsageError, match=r"no engine for config 'slow'; choose from tome-r4, fast, none"
    ):
        switch.use("slow")
    assert switch.current == "none"
    assert [r.name for r in switch.close()] == ["fast", "none", "tome-r4"]
    with pytest.raises(UsageError, match="is closed; load the engines again"):
        switch.get()
    with pytest.raises(UsageError, match="no engine for config 'x'"):
        ConfigSwitch(BANK, "x", lambda n: Runner(n, []), "b")


def test_a_call_in_flight_finishes_on_its_config_while_another_thread_switches():
    opened: list[str] = []
    switch = ConfigSwitch(BANK, "tome-r4", lambda n: Runner(n, opened), "b")
    switch.preload()
    started, release = threading.Event(), threading.Event()
    ran_on: list[str] = []

    def call() -> None:
        runner = switch.get()
        started.set()
        release.wait(5)
        ran_on.append(runner.name)

    thread = threading.Thread(target=call)
    thread.start()
    started.wait(5)
    switch.use("none")
    switch.close()
    release.set()
    thread.join(5)
    assert ran_on == ["tome-r4"] and switch.current == "none"


def test_concurrent_first_uses_open_a_config_once():
    opened: list[str] = []
    gate = threading.Barrier(4)

    def slow_open(name: str) -> Runner:
        time.sleep(0.05)  # the others arrive while the first is opening
        return Runner(name, opened)

    switch = ConfigSwitch(BANK, "tome-r4", slow_open, "b")
    got: list[Runner] = []

    def first_use() -> None:
        gate.wait(5)
        got.append(switch.get("fast"))

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert opened == ["fast"] and len({id(r) for r in got}) == 1


class _StopBeforeCuda(Exception):
    """Raised by the refit stand-in: what follows needs a CUDA device."""


def test_loading_a_stripped_engine_refits_it_from_its_graph_after_the_passes(
    tmp_path: Path, monkeypatch
):
    import onnx

    from trimformer.graph_passes.base import PLUGIN_DOMAIN

    bundle = make_bank_bundle(tmp_path / "b")
    _write(bundle, "fast", TRT10)
    library = tmp_path / "libtrimformer_plugins.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setenv(trt_env.PLUGIN_LIBRARY_ENV, str(library))
    log: list = []
    runtime = Recorder(log, "runtime", {"deserialize_cuda_engine": lambda plan: "ENGINE"})
    runtime._returns["get_plugin_registry"] = lambda: fake_registry(log)
    trt = SimpleNamespace(
        __version__="10.3.0.26",
        Logger=FakeLogger,
        Runtime=lambda logger: runtime,
    )
    monkeypatch.setattr(trt_session, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_session, "gpu_identity", lambda device=0: GPU)

    def refit(module: Any, engine: Any, logger: Any, path: Path) -> None:
        log.append(("refit", engine, onnx.load(path)))
        raise _StopBeforeCuda

    monkeypatch.setattr(trt_session, "refit_engine", refit)
    import torch

    # no GPU here: opening the engine on the session's device is torch's device switch
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    with pytest.raises(_StopBeforeCuda):
        trt_session.TrtSession(bundle, "desktop-rtx")
    assert ("registry.load_library()", (str(library),)) in log
    assert ("runtime.deserialize_cuda_engine()", (b"PLAN",)) in log
    _, engine, model = next(entry for entry in log if entry[0] == "refit")
    assert engine == "ENGINE"  # the refit source is the graph as built: passes applied
    assert [n.domain for n in model.graph.node if n.op_type == "BipartiteMerge"] == [PLUGIN_DOMAIN]

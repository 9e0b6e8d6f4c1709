"""The TensorRT Session's checks before it touches a GPU, the ORT provider lists, and (with
TensorRT and a GPU) a real build-and-run that must match ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from trt_helpers import make_bundle, profile

from trimformer.errors import UsageError
from trimformer.runtime import ort_providers, trt_env, trt_session
from trimformer.runtime.ort_providers import execution_providers
from trimformer.runtime.trt_build import (
    PluginChoice,
    build_settings,
    engine_record,
    write_engine,
)
from trimformer.runtime.trt_env import GpuIdentity, TensorRTMissing, TrtVersion


def _usable_tensorrt() -> bool:
    try:
        trt_env.import_tensorrt()
    except TensorRTMissing:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def bundle_with_engine(tmp_path: Path) -> Path:
    bundle = make_bundle(tmp_path / "b")
    settings = build_settings(profile("jetson-agx-orin"), TrtVersion(10, 3, 0))
    graph = {"inputs": [], "outputs": []}
    record = engine_record(settings, GpuIdentity("Orin", "8.7"), graph, PluginChoice("library"))
    write_engine(bundle, b"PLAN", record)
    return bundle


def _machine(monkeypatch: pytest.MonkeyPatch, version: str, gpu: GpuIdentity) -> None:
    trt = SimpleNamespace(__version__=version, Builder=object)
    monkeypatch.setattr(trt_session, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_session, "gpu_identity", lambda device=0: gpu)


def test_session_refuses_an_engine_for_another_tensorrt_or_gpu(bundle_with_engine, monkeypatch):
    _machine(monkeypatch, "10.8.0.1", GpuIdentity("Orin", "8.7"))
    with pytest.raises(UsageError, match=r"TensorRT 10\.3\.0 .*this machine has TensorRT 10\.8\.0"):
        trt_session.TrtSession(bundle_with_engine, "jetson-agx-orin")
    _machine(monkeypatch, "10.3.0.26", GpuIdentity("NVIDIA GeForce RTX 4090", "8.9"))
    with pytest.raises(UsageError, match=r"for Orin \(compute 8\.7\).*RTX 4090 \(compute 8\.9\)"):
        trt_session.TrtSession(bundle_with_engine, "jetson-agx-orin")


def test_session_refuses_missing_or_modified_engines(bundle_with_engine, monkeypatch):
    _machine(monkeypatch, "10.3.0.26", GpuIdentity("Orin", "8.7"))
    with pytest.raises(UsageError, match="has no engine for 'desktop-rtx'"):
        trt_session.TrtSession(bundle_with_engine, "desktop-rtx")
    (bundle_with_engine / "engines" / "jetson-agx-orin.plan").write_bytes(b"OTHER")
    with pytest.raises(UsageError, match="does not match its sha256"):
        trt_session.load_engine(bundle_with_engine, "jetson-agx-orin")


def test_session_without_tensorrt_says_how_to_get_it(bundle_with_engine, monkeypatch):
    def missing():
        raise TensorRTMissing("TensorRT cannot be imported; install TensorRT 10 or 11")

    monkeypatch.setattr(trt_session, "import_tensorrt", missing)
    with pytest.raises(TensorRTMissing, match="install TensorRT"):
        trt_session.TrtSession(bundle_with_engine, "jetson-agx-orin")


def test_provider_lists(tmp_path: Path):
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    assert execution_providers("cuda", device_id=1) == [
        ("CUDAExecutionProvider", {"device_id": "1"}),
        "CPUExecutionProvider",
    ]
    providers = execution_providers("tensorrt", fp16=True, engine_cache=tmp_path / "cache")
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider"
    assert options["trt_fp16_enable"] == "True" and options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert providers[1:] == execution_providers("cuda")
    with pytest.raises(UsageError, match="backend 'openvino' is not one of cpu, cuda, tensorrt"):
        execution_providers("openvino")
    with pytest.raises(UsageError, match="device_id"):
        execution_providers("cuda", device_id=-1)
    assert ort_providers.EP_BACKENDS == ("cpu", "cuda", "tensorrt")


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not _usable_tensorrt(), reason="needs TensorRT and a CUDA GPU")
def test_built_engine_matches_onnx_runtime(tmp_path: Path):
    from trimformer.profiles.device_profiles import load_device_profile
    from trimformer.runtime import load
    from trimformer.runtime.trt_build import build_engine

    bundle = make_bundle(tmp_path / "b")
    build_engine(bundle, load_device_profile("desktop-rtx"), "fp32")
    rng = np.random.default_rng(0)
    feeds = [
        {
            "x": rng.standard_normal((batch, 17, 8)).astype(np.float32),
            "size": np.ones((batch, 17, 1), np.float32),
        }
        for batch in (2, 1)
    ]
    with load(bundle) as ort_session:
        expected = [ort_session.run(feed) for feed in feeds]
    for cuda_graph in (False, True):
        with trt_session.load_engine(bundle, "desktop-rtx", cuda_graph=cuda_graph) as session:
            # alternating batch sizes; the repeats replay the CUDA graphs
            for index in (0, 1, 0, 1):
                got = session.run(feeds[index])
                for name, want in expected[index].items():
                    np.testing.assert_allclose(got[name], want, atol=1e-4)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not _usable_tensorrt(), reason="needs TensorRT and a CUDA GPU")
def test_bank_engines_refit_and_match_onnx_runtime_per_config(tmp_path: Path):
    from trt_helpers import make_bank_bundle

    from trimformer.profiles.device_profiles import load_device_profile
    from trimformer.runtime import load
    from trimformer.runtime.trt_build import build_engines

    bundle = make_bank_bundle(tmp_path / "b")
    build_engines(bundle, load_device_profile("desktop-rtx"), ["all"], "fp32")
    rng = np.random.default_rng(0)
    feed = {
        "x": rng.standard_normal((2, 17, 8)).astype(np.float32),
        "size": np.ones((2, 17, 1), np.float32),
    }
    with load(bundle) as ort_session, trt_session.load_engine(bundle, "desktop-rtx") as session:
        assert list(session.configs) == list(ort_session.configs)
        for name in session.configs:
            expected = ort_session.run(feed, config=name)
            session.use(name)
            for got in (session.run(feed), session.run(feed, config=name)):
                for key, want in expected.items():
                    np.testing.assert_allclose(got[key], want, atol=1e-4)
    from trimformer.runtime import benchmark_configs

    timed = benchmark_configs(
        bundle, runs=3, warmup=1, progress=False, engine_profile="desktop-rtx"
    )
    assert [c.config for c in timed.configs] == list(session.configs)
    assert timed.providers[0].startswith("TensorRT") and not timed.share_weights


class _Context:
    """What an execution context remembers: input shapes and tensor addresses (TensorRT's
    ``IExecutionContext`` keeps both until set again)."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = shape
        return shape[0] <= 8  # the profile's batch range is 1..8

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.shapes["x"][0], 4)


def _unbound_engine() -> trt_session._Engine:
    """An ``_Engine`` over a recording context, its buffers on the CPU (no GPU here)."""
    import torch

    engine = object.__new__(trt_session._Engine)
    trt = SimpleNamespace(nptype=lambda dtype: np.float32)
    vars(engine).update(
        _trt=trt,
        _torch=torch,
        _device=torch.device("cpu"),
        _file=Path("e.plan"),
        _engine=SimpleNamespace(get_tensor_dtype=lambda name: "float"),
        _context=_Context(),
        _bound={},
        _active=None,
        inputs=(trt_session.TensorSpec("x", ("batch", 3), "float32"),),
        outputs=(trt_session.TensorSpec("y", ("batch", 4), "float32"),),
    )
    return engine


def test_alternating_batch_sizes_rebind_the_context_every_time():
    engine = _unbound_engine()
    context = engine._context
    feeds = [{"x": np.zeros((batch, 3), np.float32)} for batch in (8, 3, 8, 8, 3)]
    for feed in feeds:
        bound = engine._bind(feed)
        # the context runs on this feed's shapes and buffers, never a previous call's
        assert context.shapes == {"x": feed["x"].shape}
        assert context.addresses == {
            "x": bound.inputs["x"].data_ptr(),
            "y": bound.outputs["y"].data_ptr(),
        }
        assert tuple(bound.outputs["y"].shape) == (feed["x"].shape[0], 4)
    assert len(engine._bound) == 2  # buffers are made once per shape set
    with pytest.raises(UsageError, match=r"shape \(9, 3\) is outside the engine's profile"):
        engine._bind({"x": np.zeros((9, 3), np.float32)})

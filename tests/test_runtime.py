"""The runtime on small real bundles: loading, input checks, threads, benchmark, preprocessing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from trimformer.bundle import WEIGHTS, sha256_file, write_bundle
from trimformer.errors import UsageError
from trimformer.runtime import (
    BenchResult,
    Session,
    TensorSpec,
    benchmark,
    load,
    load_image,
)
from trimformer.runtime.bench import render_table

FEATURES = 3 * 8 * 8
CLASSES = 10
WEIGHT = np.random.default_rng(1).standard_normal((FEATURES, CLASSES)).astype(np.float32)
INPUT = {"name": "pixel_values", "shape": ["batch", 3, 8, 8], "dtype": "float32"}
OUTPUT = {"name": "logits", "shape": ["batch", CLASSES], "dtype": "float32"}


def _graph(full: bool) -> onnx.ModelProto:
    """model: flatten(x) @ W; full: (flatten(x) + relu(flatten(x))) @ W, the same W."""
    nodes = [helper.make_node("Flatten", ["pixel_values"], ["flat"], axis=1)]
    features = "flat"
    if full:
        nodes += [
            helper.make_node("Relu", ["flat"], ["relu"]),
            helper.make_node("Add", ["flat", "relu"], ["sum"]),
        ]
        features = "sum"
    nodes.append(helper.make_node("MatMul", [features, "W"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "full" if full else "model",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, INPUT["shape"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, OUTPUT["shape"])],
        initializer=[numpy_helper.from_array(WEIGHT, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _reference(x: np.ndarray, full: bool = False) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    if full:
        flat = flat + np.maximum(flat, 0)
    return flat @ WEIGHT


def _graph_entry(name: str, flops: int) -> dict:
    return {"file": f"{name}.onnx", "inputs": [INPUT], "outputs": [OUTPUT], "flops": flops}


def _write(dest: Path, full: bool = True) -> Path:
    graphs = {"model": _graph(False)}
    entries = {"model": _graph_entry("model", 2 * FEATURES * CLASSES)}
    if full:
        graphs["full"] = _graph(True)
        entries["full"] = _graph_entry("full", 2 * FEATURES * CLASSES + 2 * FEATURES)
    write_bundle(dest, graphs, {"model": "test/linear", "graphs": entries}, force=False)
    return dest


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("bundles") / "linear")


@pytest.fixture(scope="module")
def session(bundle: Path) -> Session:
    with load(bundle, providers=["CPUExecutionProvider"]) as s:
        yield s


def _x(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)).astype(np.float32)


def test_weights_are_stored_once(bundle: Path) -> None:
    size = (bundle / WEIGHTS).stat().st_size
    assert WEIGHT.nbytes <= size < 1.5 * WEIGHT.nbytes


def test_run_matches_numpy(bundle: Path, session: Session) -> None:
    x = _x()
    np.testing.assert_allclose(session.run({"pixel_values": x})["logits"], _reference(x), atol=1e-5)
    np.testing.assert_allclose(session.run(x)["logits"], _reference(x), atol=1e-5)
    with load(bundle, graph="full", providers=["CPUExecutionProvider"], threads=1) as full:
        np.testing.assert_allclose(full.run(x)["logits"], _reference(x, full=True), atol=1e-5)


def test_metadata(session: Session) -> None:
    assert session.inputs == (TensorSpec("pixel_values", ("batch", 3, 8, 8), "float32"),)
    assert session.outputs == (TensorSpec("logits", ("batch", CLASSES), "float32"),)
    assert session.graph == "model"
    assert session.providers == ("CPUExecutionProvider",)
    assert session.manifest["model"] == "test/linear"


def test_default_providers_end_with_cpu(bundle: Path) -> None:
    with load(bundle) as s:
        assert s.providers[-1] == "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("inputs", "fragments"),
    [
        ({"pixels": _x()}, ["unknown input 'pixels'", "pixel_values (batch, 3, 8, 8) float32"]),
        ({}, ["missing input 'pixel_values'", "expects pixel_values"]),
        (_x()[0], ["rank 3", "expected rank 4", "x[None]"]),
        (_x()[..., None], ["rank 5", "reshape it to (batch, 3, 8, 8)"]),
        (np.zeros((2, 3, 8, 9), np.float32), ["dim 3 is 9, expected 8"]),
        (_x().astype(np.float64), ["dtype float64, expected float32", ".astype(np.float32)"]),
        (_x().astype(np.float16), ["dtype float16, expected float32"]),
        (_x().tolist(), ["dtype float64", ".astype(np.float32)"]),
    ],
    ids=["unknown", "missing", "rank-batch", "rank", "static-dim", "float64", "float16", "list"],
)
def test_input_validation(session: Session, inputs: object, fragments: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        session.run(inputs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_dynamic_dim_and_nan_pass_through(session: Session) -> None:
    x = _x(batch=5)
    x[0, 0, 0, 0] = np.nan
    out = session.run(x)["logits"]
    assert out.shape == (5, CLASSES)
    assert np.isnan(out[0]).all()
    np.testing.assert_allclose(out[1:], _reference(x[1:]), atol=1e-5)


def test_closed_session_refuses_run(bundle: Path) -> None:
    s = load(bundle, providers=["CPUExecutionProvider"])
    s.close()
    with pytest.raises(UsageError, match="closed"):
        s.run(_x())


def test_tampered_weights_fail_hash_check(tmp_path: Path) -> None:
    dest = _write(tmp_path / "b")
    with (dest / WEIGHTS).open("r+b") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(UsageError, match=r"weights.bin does not match its sha256"):
        load(dest)


def test_corrupt_graph_with_rewritten_hash(tmp_path: Path) -> None:
    dest = _write(tmp_path / "b")
    (dest / "model.onnx").write_bytes(b"not a protobuf at all")
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["files"]["model.onnx"]["sha256"] = sha256_file(dest / "model.onnx")
    (dest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError) as info:
        load(dest)
    message = str(info.value)
    assert "model.onnx cannot be loaded by onnxruntime:" in message
    assert message.endswith("re-export the bundle")
    assert "\n" not in message


def test_missing_full_graph(tmp_path: Path) -> None:
    dest = _write(tmp_path / "b", full=False)
    with pytest.raises(UsageError, match=r"no full graph because it was exported with --method"):
        load(dest, graph="full")
    with pytest.raises(UsageError, match="choose from model"):
        load(dest, graph="fast")


def test_bad_providers_and_threads(bundle: Path) -> None:
    with pytest.raises(UsageError, match=r"'NoSuchExecutionProvider' is not available.*CPU"):
        load(bundle, providers=["NoSuchExecutionProvider"])
    with pytest.raises(UsageError, match="threads must be a positive integer"):
        load(bundle, threads=0)


def test_concurrent_runs_match_serial(session: Session) -> None:
    inputs = [[_x(batch=1 + j % 3, seed=100 * t + j) for j in range(25)] for t in range(8)]
    serial = [[session.run(x)["logits"] for x in row] for row in inputs]
    results: list[list[np.ndarray]] = [[] for _ in inputs]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(inputs))

    def work(t: int) -> None:
        try:
            barrier.wait()
            results[t] = [session.run(x)["logits"] for x in inputs[t]]
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for got_row, want_row in zip(results, serial, strict=True):
        for got, want in zip(got_row, want_row, strict=True):
            np.testing.assert_array_equal(got, want)


def test_benchmark_vs_full(bundle: Path) -> None:
    result = benchmark(bundle, batch=3, threads=1, runs=6, warmup=1, vs_full=True, progress=False)
    data = result.to_json()
    assert set(data) == {
        "latency_ms_p50",
        "latency_ms_p90",
        "latency_ms_mean",
        "throughput",
        "flops",
        "batch",
        "runs",
        "threads",
        "providers",
        "backend",
        "precision",
        "full_latency_ms_p50",
        "full_latency_ms_p90",
        "full_throughput",
        "full_flops",
        "speedup",
        "flops_ratio",
        "peak_rss_mb",
        "rss_before_mb",
        "rss_after_mb",
        "peak_rss_scope",
        "gpu_memory_mb",
        "gpu_memory_scope",
        "energy_mj_per_inference",
        "full_energy_mj_per_inference",
        "energy_covers",
        "jetson",
        "telemetry_notes",
    }
    json.dumps(data)
    for key in ("latency_ms_p50", "latency_ms_p90", "latency_ms_mean", "throughput"):
        assert data[key] > 0
    assert data["latency_ms_p90"] >= data["latency_ms_p50"]
    assert data["full_latency_ms_p50"] > 0 and data["speedup"] > 0
    assert data["flops"] == 3 * 2 * FEATURES * CLASSES
    assert data["flops_ratio"] == pytest.approx(data["full_flops"] / data["flops"])
    assert (data["batch"], data["runs"], data["threads"]) == (3, 6, 1)
    table = render_table(result)
    assert [c.header for c in table.columns][:5] == [
        "graph",
        "p50 ms",
        "p90 ms",
        "throughput/s",
        "GFLOPs",
    ]  # then one energy column per readable source
    assert table.row_count == 2 and "speed-up" in str(table.caption)


def test_benchmark_reduced_only(bundle: Path) -> None:
    result = benchmark(bundle, runs=2, warmup=0, progress=True)
    assert isinstance(result, BenchResult)
    assert "speedup" not in result.to_json()
    assert "full_energy_mj_per_inference" not in result.to_json()
    assert render_table(result).row_count == 1
    with pytest.raises(UsageError, match="runs must be an integer >= 1"):
        benchmark(bundle, runs=0)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A natural-looking photo: skimage's astronaut when installed, else a smooth synthetic one."""
    path = tmp_path_factory.mktemp("images") / "photo.png"
    try:
        from skimage import data

        Image.fromarray(data.astronaut()).resize((400, 300)).save(path)
    except ImportError:
        y, x = np.mgrid[0:300, 0:400].astype(np.float32)
        rgb = np.stack([x / 400, y / 300, 0.5 + 0.5 * np.sin(x / 17 + y / 23)], axis=-1)
        noise = np.random.default_rng(0).uniform(0, 0.15, rgb.shape)
        Image.fromarray(np.clip((rgb + noise) * 230, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def deit_config() -> dict:
    """timm's data config of deit_tiny (no weights needed, the config comes with the model)."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    return dict(timm.data.resolve_data_config({}, model=model))


def _timm_transform(config: dict, path: Path, mode: str) -> np.ndarray:
    timm = pytest.importorskip("timm")
    with Image.open(path) as image:
        return timm.data.create_transform(**config)(image.convert(mode)).numpy()


@pytest.mark.parametrize("portrait", [False, True], ids=["landscape", "portrait"])
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"interpolation": "bilinear", "crop_pct": 0.875},
        {"crop_mode": "squash"},
        {"crop_mode": "border"},
        {"input_size": (3, 160, 224)},
        {"crop_pct": 1.2},
    ],
    ids=["deit", "bilinear", "squash", "border", "non-square", "pad"],
)
def test_preprocess_matches_timm(
    photo: Path, deit_config: dict, overrides: dict, portrait: bool, tmp_path: Path
) -> None:
    """PIL resizes in both pipelines, so the result is the same up to float32 rounding."""
    if portrait:
        with Image.open(photo) as image:
            image.transpose(Image.Transpose.TRANSPOSE).save(tmp_path / "portrait.png")
        photo = tmp_path / "portrait.png"
    config = {**deit_config, **overrides}
    want = _timm_transform(config, photo, "RGB")
    got = load_image(photo, config)
    assert got.dtype == np.float32 and got.shape == want.shape == tuple(config["input_size"])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_preprocess_grayscale(photo: Path, deit_config: dict) -> None:
    config = {**deit_config, "input_size": (1, 224, 224), "mean": (0.5,), "std": (0.25,)}
    want = _timm_transform(config, photo, "L")
    got = load_image(photo, config)
    assert got.shape == (1, 224, 224)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_runtime_does_not_import_torch() -> None:
    code = (
        "import sys, trimformer.runtime; sys.exit('torch' in sys.modules or 'timm' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_not_an_image(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    config = {"input_size": [3, 8, 8], "mean": [0.5] * 3, "std": [0.5] * 3}
    for path in (text, tmp_path / "missing.jpg"):
        with pytest.raises(UsageError, match="is not an image PIL can read; pass a JPEG/PNG"):
            load_image(path, config)

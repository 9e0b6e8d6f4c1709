"""trimformer quantize: int8 graphs for ONNX Runtime (static QDQ, dynamic) and OpenVINO (NNCF),
recorded in the bundle atomically and run with ``precision="int8"``.

Accuracy is checked on real weights and data: the shipped Fashion-MNIST ViT (ToMe r=16) on
Fashion-MNIST test images, against the fp32 full graph.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli import assert_one_line_error, cli
from test_eval import SHIPPED, needs_data

from trimformer.errors import UsageError
from trimformer.exporter import ExportRequest, export_bundle
from trimformer.profiles import ReductionConfig
from trimformer.runtime import load

pytestmark = needs_data


@pytest.fixture(scope="module")
def fashion_tome(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped Fashion-MNIST ViT with ToMe r=16 (and its full graph), exported once."""
    path = tmp_path_factory.mktemp("quantize") / "fm-tome"
    export_bundle(ExportRequest(str(SHIPPED), path, ReductionConfig("tome", {"r": 16})))
    return path


@pytest.fixture
def bundle(fashion_tome: Path, tmp_path: Path) -> Path:
    """A fresh copy per test, so that tests which quantize do not see each other's graphs."""
    return Path(shutil.copytree(fashion_tome, tmp_path / "bundle"))


@pytest.fixture(scope="module")
def test_images(fashion_tome: Path) -> tuple[np.ndarray, np.ndarray]:
    from trimformer.evaluation.fashion_mnist import normalise, read_fashion_mnist

    preprocess = json.loads((fashion_tome / "manifest.json").read_text())["preprocess"]
    images, labels = read_fashion_mnist("test")
    return normalise(images[-400:], preprocess["mean"], preprocess["std"]), labels[-400:]


def _top1(bundle: Path, images: np.ndarray, config: str, **options) -> np.ndarray:
    with load(bundle, config=config, **options) as session:
        return session.run(images)["logits"].argmax(axis=1)


def test_static_int8_for_every_config_is_recorded_and_keeps_the_accuracy(
    bundle, test_images, capsys, caplog
) -> None:
    code, out, err = cli(
        capsys, "quantize", str(bundle), "--data", "fashion-mnist", "--limit", "64"
    )
    assert code == 0, err
    assert "static-qdq" in out
    # pre-processing would inline the reductions' functions: its advice is not shown
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["quantized"]) == {"tome-r16/ort-int8", "none/ort-int8"}
    entry = manifest["quantized"]["tome-r16/ort-int8"]
    assert entry["scheme"] == "static-qdq" and entry["precision"] == "int8"
    assert entry["calibration"]["data"] == "fashion-mnist"
    assert entry["calibration"]["items"] == 64 and len(entry["calibration"]["sha256"]) == 64
    assert entry["tools"]["onnxruntime"]
    graph = onnx.load(bundle / entry["files"]["graph"]["path"])
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "BipartiteMerge"} <= ops
    # the reductions stay one float function call each: nothing quantized inside them
    (merge,) = [f for f in graph.functions if f.name == "BipartiteMerge"]
    assert not {n.op_type for n in merge.node} & {"QuantizeLinear", "DequantizeLinear"}

    images, labels = test_images
    reference = _top1(bundle, images, "none")
    for config in ("tome-r16", "none"):
        top1 = _top1(bundle, images, config, precision="int8")
        assert (top1 == reference).mean() >= 0.93, config  # measured 0.97-0.99
        assert abs((top1 == labels).mean() - (reference == labels).mean()) <= 0.03


def test_dynamic_int8_needs_no_data_and_runs_in_bench(bundle, capsys) -> None:
    code, _, err = cli(capsys, "quantize", str(bundle), "--dynamic", "--config", "tome-r16")
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert list(manifest["quantized"]) == ["tome-r16/ort-int8"]
    assert manifest["quantized"]["tome-r16/ort-int8"]["calibration"] is None
    code, out, err = cli(capsys, "bench", str(bundle), "--precision", "int8", "--runs", "3")
    assert code == 0, err
    assert "int8" in out
    # none was not quantized: its int8 graph is refused with the command that makes it
    code, _, err = cli(capsys, "bench", str(bundle), "--precision", "int8", "--vs-full")
    assert_one_line_error(code, err, 2, "no int8 graph of config 'none'", "trimformer quantize")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "calibration data missing: give --data D or --dynamic"),
        (("--backend", "openvino"), "calibration data missing: give --data D"),
        (("--backend", "openvino", "--dynamic"), "--dynamic is ONNX Runtime's"),
        (("--dynamic", "--data", "fashion-mnist"), "--dynamic needs no calibration data"),
        (("--dynamic", "--config", "fast"), "has no config 'fast'"),
        (("--data", "lee"), "takes image input, but --data lee needs text"),
    ],
)
def test_usage_errors_leave_the_bundle_untouched(bundle, capsys, args, message) -> None:
    before = (bundle / "manifest.json").read_bytes()
    code, _, err = cli(capsys, "quantize", str(bundle), *args)
    assert_one_line_error(code, err, 2, message)
    assert (bundle / "manifest.json").read_bytes() == before
    assert not (bundle / "int8").exists()


def test_quantizing_again_needs_force_and_replaces_the_old_files(bundle, capsys) -> None:
    assert cli(capsys, "quantize", str(bundle), "--dynamic")[0] == 0
    old = sorted(p.name for p in (bundle / "int8").iterdir())
    code, _, err = cli(capsys, "quantize", str(bundle), "--dynamic")
    assert_one_line_error(code, err, 2, "already has ort int8 graphs of tome-r16, none", "--force")
    code, _, err = cli(capsys, "quantize", str(bundle), "--data", "fashion-mnist", "--force")
    assert code == 0, err
    new = sorted(p.name for p in (bundle / "int8").iterdir())
    assert len(new) == 2 and not set(new) & set(old)  # the replaced graphs' files are gone
    entries = json.loads((bundle / "manifest.json").read_text())["quantized"]
    assert {e["scheme"] for e in entries.values()} == {"static-qdq"}
    assert not [p for p in bundle.iterdir() if p.name.startswith(".")]


def test_a_failure_midway_leaves_the_bundle_as_it_was(bundle, monkeypatch, capsys) -> None:
    """Interrupted while quantizing the second config: nothing is moved in or recorded."""
    from trimformer.quantization import ort_int8

    real = ort_int8.quantize_ort
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_int8, "quantize_ort", interrupted)
    before = (bundle / "manifest.json").read_bytes()
    files = sorted(p.name for p in bundle.iterdir())
    with pytest.raises(KeyboardInterrupt):
        from trimformer.quantization import QuantizeRequest, quantize_bundle

        quantize_bundle(QuantizeRequest(bundle, "ort", None))
    assert len(calls) == 2
    assert (bundle / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in bundle.iterdir()) == files


def test_a_modified_int8_graph_is_refused(bundle, capsys) -> None:
    assert cli(capsys, "quantize", str(bundle), "--dynamic")[0] == 0
    entry = json.loads((bundle / "manifest.json").read_text())["quantized"]["tome-r16/ort-int8"]
    with (bundle / entry["files"]["graph"]["path"]).open("ab") as handle:
        handle.write(b"\0")
    code, _, err = cli(capsys, "bench", str(bundle), "--precision", "int8", "--runs", "1")
    assert_one_line_error(code, err, 2, "does not match its sha256", "--force")


def test_openvino_int8_calibrated_by_nncf_runs_with_the_fp32_accuracy(
    bundle, test_images, capsys
) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    code, _, err = cli(
        capsys, "quantize", str(bundle), "--backend", "openvino", "--data", "fashion-mnist",
        "--limit", "64",
    )  # fmt: skip
    assert code == 0, err
    entry = json.loads((bundle / "manifest.json").read_text())["quantized"][
        "tome-r16/openvino-int8"
    ]
    assert entry["scheme"] == "nncf-ptq" and set(entry["files"]) == {"graph", "weights"}
    assert entry["files"]["graph"]["path"].endswith(".xml")
    images, _ = test_images
    reference = _top1(bundle, images, "none")
    for config in ("tome-r16", "none"):
        top1 = _top1(bundle, images, config, backend="openvino", precision="int8")
        assert (top1 == reference).mean() >= 0.93, config
    # An IR saved with the fused ops needs the library: without it, one line says so.
    assert entry["extensions"] in ("fused", "decomposed")
    if entry["extensions"] == "fused":
        with pytest.raises(UsageError, match="saved with trimformer's fused OpenVINO ops"):
            load(bundle, backend="openvino", precision="int8", extensions="decomposed").run(
                np.zeros((1, 1, 28, 28), np.float32)
            )

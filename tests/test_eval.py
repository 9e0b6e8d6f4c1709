"""trimformer eval: data readers, metrics, loading the shipped Fashion-MNIST ViT, and the command.

The end-to-end tests export the shipped checkpoint (samples/models/fashion-mnist-vit) and check
the command's figures against the torch model on the same test images.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_text_folder
from test_cli import assert_one_line_error, cli

from trimformer.errors import UsageError
from trimformer.evaluation import metrics
from trimformer.evaluation.fashion_mnist import (
    DEFAULT_ROOT,
    normalise,
    read_fashion_mnist,
    read_idx,
)
from trimformer.evaluation.text_data import read_lee, read_polarity
from trimformer.exporter import ExportRequest, export_bundle
from trimformer.models.loading import ModelOptions, load_model
from trimformer.profiles import ReductionConfig

SHIPPED = Path(__file__).resolve().parents[1] / "samples" / "models" / "fashion-mnist-vit"
needs_data = pytest.mark.skipif(
    not DEFAULT_ROOT.is_dir(),
    reason="Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist",
)


# --- readers ---------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, header_dims: tuple[int, ...] | None = None) -> None:
    dims = header_dims if header_dims is not None else array.shape
    header = bytes([0, 0, 0x08, len(dims)]) + np.array(dims, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trips_and_refuses_broken_files(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "good.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "good.gz"), array)
    _write_idx(tmp_path / "short.gz", array, header_dims=(3, 3, 4))
    with pytest.raises(UsageError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    with gzip.open(tmp_path / "text.gz", "wb") as handle:
        handle.write(b"not an idx file")
    with pytest.raises(UsageError, match="not an idx file"):
        read_idx(tmp_path / "text.gz")
    with pytest.raises(UsageError, match="apt-get install -y dataset-fashion-mnist"):
        read_idx(tmp_path / "absent.gz")


@needs_data
def test_fashion_mnist_test_split_is_balanced() -> None:
    images, labels = read_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
    with pytest.raises(UsageError, match="unknown Fashion-MNIST split"):
        read_fashion_mnist("validation")


def test_normalise_applies_mean_and_std() -> None:
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    out = normalise(images, [0.2], [0.5])
    assert out.shape == (1, 1, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [[-0.4, 1.6], [0.0, 0.4]], atol=1e-6)
    with pytest.raises(UsageError, match="single-channel"):
        normalise(images, [0.5, 0.5, 0.5], [0.2, 0.2, 0.2])


def test_lee_has_50_documents_and_1225_rated_pairs() -> None:
    lee = read_lee()
    assert len(lee.documents) == 50 and len(lee.ratings) == 1225
    assert np.all(lee.first < lee.second)
    assert lee.ratings.min() >= 0.0 and lee.ratings.max() <= 1.0
    assert lee.documents[0].startswith("The national executive of the strife-torn Democrats")
    assert lee.ratings[0] == pytest.approx(0.3)  # documents 0 and 1, from the file's first row
    small = read_lee(limit=10)
    assert len(small.documents) == 10 and len(small.ratings) == 45
    with pytest.raises(UsageError, match="at least 3"):
        read_lee(limit=2)


def test_polarity_is_balanced_and_limits_stay_balanced() -> None:
    polarity = read_polarity()
    assert len(polarity.sentences) == 200 and polarity.labels.sum() == 100
    assert polarity.sentences[0] == "simplistic , silly and tedious ."
    small = read_polarity(limit=10)
    assert small.labels.tolist() == [0, 1] * 5
    with pytest.raises(UsageError, match="at least 10"):
        read_polarity(limit=9)


# --- metrics ---------------------------------------------------------------------------------


def test_spearman_of_known_data() -> None:
    # ranks of y are 1, 2, 3.5, 5, 3.5 (a tie): rho = 8 / sqrt(10 * 9.5)
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([5.0, 6.0, 7.0, 8.0, 7.0])
    assert metrics.spearman(x, y) == pytest.approx(8 / np.sqrt(95), abs=1e-12)
    assert metrics.spearman(x, -(x**3)) == pytest.approx(-1.0)


def test_cosines_and_top1() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [1.0, 0.0], [-3.0, -4.0]])
    np.testing.assert_allclose(metrics.cosine_rows(a, b), [1.0, 0.0, -1.0])
    np.testing.assert_allclose(
        metrics.pair_cosines(a, np.array([0, 0]), np.array([1, 2])), [0.0, 0.6]
    )
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert metrics.top1_accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    reference = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # always class 0
    assert metrics.top1_agreement(logits, reference) == pytest.approx(1 / 3)


def test_logistic_accuracy_separates_only_informative_embeddings() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    informative = rng.normal(size=(100, 8)) + 3.0 * labels[:, None]
    assert metrics.logistic_cv_accuracy(informative, labels) == 1.0
    noise = rng.normal(size=(100, 8))
    assert metrics.logistic_cv_accuracy(noise, labels) < 0.75


# --- the shipped model and its bundles --------------------------------------------------------


def test_shipped_folder_loads_as_a_trimformer_model() -> None:
    import timm

    loaded = load_model(str(SHIPPED))
    assert (loaded.source, loaded.weights) == ("timm", "folder:fashion-mnist-vit")
    assert loaded.preprocess["input_size"] == [1, 28, 28]
    assert loaded.preprocess["crop_pct"] == 1.0
    reference = timm.create_model(f"local-dir:{SHIPPED}", pretrained=True).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(x))
    assert loaded.model.patch_embed.num_patches + 1 == 197


def test_folder_loading_refuses_other_weights_and_bare_folders(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="holds its own weights"):
        load_model(str(SHIPPED), ModelOptions(checkpoint=SHIPPED / "model.safetensors"))
    with pytest.raises(UsageError, match="is a folder but holds no model"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224"}))
    with pytest.raises(UsageError, match="cannot be loaded as a timm local-dir model"):
        load_model(str(tmp_path))


@pytest.fixture(scope="module")
def fashion_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped ViT exported with ToMe r=8 (reduced + full graphs) and with no reduction."""
    root = tmp_path_factory.mktemp("fashion")
    bundles = {"tome": root / "tome", "none": root / "none"}
    export_bundle(ExportRequest(str(SHIPPED), bundles["tome"], ReductionConfig("tome", {"r": 8})))
    export_bundle(ExportRequest(str(SHIPPED), bundles["none"], ReductionConfig("none")))
    return bundles


def _torch_accuracy(limit: int) -> float:
    import timm

    model = timm.create_model(f"local-dir:{SHIPPED}", pretrained=True).eval()
    images, labels = read_fashion_mnist("test")
    cfg = model.pretrained_cfg
    x = (torch.from_numpy(images[:limit].copy()).float() / 255 - cfg["mean"][0]) / cfg["std"][0]
    with torch.no_grad():
        predicted = model(x[:, None]).argmax(1).numpy()
    return float(np.mean(predicted == labels[:limit]))


@needs_data
def test_eval_fashion_mnist_end_to_end(fashion_bundles, tmp_path, capsys) -> None:
    out = tmp_path / "eval.json"
    code, stdout, err = cli(
        capsys,
        *("eval", str(fashion_bundles["tome"]), "--data", "fashion-mnist", "--limit", "300"),
        *("--batch", "64", "--threads", "1", "--json", str(out)),
    )
    assert code == 0, err
    assert "top-1 accuracy" in stdout and "agreement" in stdout
    figures = json.loads(out.read_text())
    assert figures["metric"] == "top-1 accuracy" and figures["examples"] == 300
    # the full graph is the torch model: same preprocessing, same predictions
    assert figures["full_value"] == pytest.approx(_torch_accuracy(300), abs=1 / 300 + 1e-9)
    assert figures["full_value"] > 0.8  # a trained model, not random weights
    assert 0.9 <= figures["agreement"] <= 1.0
    assert abs(figures["value"] - figures["full_value"]) <= 1 - figures["agreement"] + 1e-9


@needs_data
def test_eval_without_full_graph_reports_the_metric_only(fashion_bundles, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code, stdout, err = cli(
        capsys,
        *("eval", str(fashion_bundles["none"]), "--data", "fashion-mnist", "--limit", "64"),
        *("--json", str(out)),
    )
    assert code == 0, err
    figures = json.loads(out.read_text())
    assert figures["full_value"] is None and figures["agreement"] is None
    assert "no full graph" in figures["note"] and "no full graph" in stdout
    assert 0.0 <= figures["value"] <= 1.0


@needs_data
def test_eval_on_openvino_bf16_reports_agreement_with_ort_fp32(fashion_bundles, tmp_path, capsys):
    pytest.importorskip("openvino")
    out = tmp_path / "eval.json"
    code, stdout, err = cli(
        capsys,
        *("eval", str(fashion_bundles["tome"]), "--data", "fashion-mnist", "--limit", "200"),
        *("--backend", "openvino", "--precision", "bf16", "--json", str(out)),
    )
    assert code == 0, err
    figures = json.loads(out.read_text())
    assert figures["runtime"] == "openvino bf16"
    assert "with full on ort fp32" in stdout
    # bf16 alone costs less than bf16 + reduction, and neither costs much on this model
    assert 0.95 <= figures["full_reference_agreement"] <= 1.0
    assert 0.85 <= figures["reference_agreement"] <= 1.0


@needs_data
def test_eval_of_the_reference_runtime_adds_no_reference_figures(fashion_bundles, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code, _, err = cli(
        capsys,
        *("eval", str(fashion_bundles["tome"]), "--data", "fashion-mnist", "--limit", "32"),
        *("--json", str(out)),
    )
    assert code == 0, err
    figures = json.loads(out.read_text())
    assert figures["runtime"] == "ort fp32" and figures["reference_agreement"] is None


@needs_data
def test_eval_int8_of_an_unquantized_bundle_says_how_to_quantize(fashion_bundles, capsys):
    code, _, err = cli(
        capsys,
        *("eval", str(fashion_bundles["tome"]), "--data", "fashion-mnist", "--precision", "int8"),
    )
    assert_one_line_error(code, err, 2, "trimformer quantize")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("mnist", "unknown data set 'mnist'; choose from fashion-mnist, lee, polarity"),
        ("lee", "takes image input, but --data lee needs text input"),
    ],
)
def test_eval_usage_errors(fashion_bundles, capsys, data: str, message: str) -> None:
    code, _, err = cli(capsys, "eval", str(fashion_bundles["tome"]), "--data", data)
    assert_one_line_error(code, err, 2, message)


def test_eval_refuses_an_rgb_bundle_for_fashion_mnist(tome_bundle, capsys) -> None:
    code, _, err = cli(capsys, "eval", str(tome_bundle), "--data", "fashion-mnist")
    assert_one_line_error(code, err, 2, "needs a model of 1 x 28 x 28 grayscale input")


# --- text bundles ----------------------------------------------------------------------------
# A tiny random BERT sentence encoder (conftest.tiny_text_folder), exported by trimformer itself:
# ToMe r=4 per layer (reduced + full graphs), or no reduction (one graph, no full).

SEQ = 32


def _text_bundle(path: Path, with_full: bool = True) -> Path:
    folder = tiny_text_folder(path.with_name(path.name + "-model"))
    reduction = ReductionConfig("tome", {"r": 4}) if with_full else ReductionConfig("none")
    export_bundle(ExportRequest(str(folder), path, reduction, seq_len=SEQ))
    return path


def test_eval_text_bundle_on_lee_and_polarity(tmp_path: Path) -> None:
    from trimformer.evaluation.runner import evaluate

    bundle = _text_bundle(tmp_path / "text")
    lee = evaluate(bundle, "lee", limit=12, batch=5, threads=1)
    assert lee.examples == 12 and lee.metric == "Spearman vs human similarity"
    assert -1.0 <= lee.value <= 1.0 and -1.0 <= lee.full_value <= 1.0
    assert lee.value != lee.full_value  # the reduced graph merged tokens
    assert lee.agreement_min < lee.agreement < 1.0
    polarity = evaluate(bundle, "polarity", limit=40, batch=16, threads=1)
    assert polarity.examples == 40 and 0.0 <= polarity.value <= 1.0
    assert 0.0 <= polarity.full_value <= 1.0 and polarity.agreement < 1.0


def test_eval_text_bundle_refuses_image_data_and_reports_without_full(tmp_path, capsys) -> None:
    bundle = _text_bundle(tmp_path / "text", with_full=False)
    code, _, err = cli(capsys, "eval", str(bundle), "--data", "fashion-mnist")
    assert_one_line_error(code, err, 2, "takes text input, but --data fashion-mnist needs image")
    code, stdout, err = cli(capsys, "eval", str(bundle), "--data", "lee", "--limit", "5")
    assert code == 0, err
    assert "Spearman" in stdout and "no full graph" in stdout

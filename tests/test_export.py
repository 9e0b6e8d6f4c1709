"""Export end to end: the bundle's content, its numbers, and atomic, verified writing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from trimformer.bundle import read_manifest
from trimformer.errors import RuntimeFailure, UsageError
from trimformer.exporter import ExportRequest, export_bundle
from trimformer.exporter import export as export_module
from trimformer.ops import domain_version
from trimformer.profiles import ReductionConfig
from trimformer.runtime import load


def test_manifest_records_the_reduction(tome_bundle: Path):
    manifest = read_manifest(tome_bundle)
    assert manifest["model"]["id"] == "deit_tiny_patch16_224"
    assert manifest["model"]["weights"] == "random"
    assert manifest["model"]["tokens"] == 37 and manifest["model"]["protected_tokens"] == 1
    reduction = manifest["reduction"]
    assert reduction["method"] == "tome" and reduction["params"]["r"] == 4
    assert reduction["tokens_per_layer"] == [33, 29, 25, 21, 17, 13, 9, 5, 3, 2, 2, 2]
    assert manifest["ops"] == {"BipartiteMerge": 2}
    assert manifest["graphs"]["model"]["flops"] < manifest["graphs"]["full"]["flops"]
    errors = manifest["verify"]["max_abs_error"]
    assert set(errors) == {"model", "full"} and max(errors.values()) <= 1e-4
    assert manifest["graphs"]["model"]["inputs"] == [
        {"name": "pixel_values", "shape": ["batch", 3, 96, 96], "dtype": "float32"}
    ]
    assert len(manifest["labels"]) == 1000
    assert set(manifest["files"]) == {"model.onnx", "full.onnx", "weights.bin"}


def test_model_keeps_one_function_call_per_reducing_layer(tome_bundle: Path):
    model = onnx.load(tome_bundle / "model.onnx", load_external_data=False)
    calls = [n for n in model.graph.node if n.domain == "trimformer"]
    assert [a.i for n in calls for a in n.attribute if a.name == "r"] == [4] * 8 + [2, 1]
    assert [(f.domain, f.name) for f in model.functions] == [("trimformer", "BipartiteMerge")]
    assert {o.domain: o.version for o in model.opset_import}["trimformer"] == domain_version()
    full = onnx.load(tome_bundle / "full.onnx", load_external_data=False)
    assert not [n for n in full.graph.node if n.domain == "trimformer"]


def test_weights_are_stored_once(tome_bundle: Path):
    params = 5_717_416  # deit_tiny_patch16_224 at 96 px
    weights = (tome_bundle / "weights.bin").stat().st_size
    assert params * 4 * 0.9 < weights < params * 4 * 1.2
    assert (tome_bundle / "model.onnx").stat().st_size < 5_000_000


def test_bundle_runs_with_dynamic_batch(tome_bundle: Path):
    x = np.random.default_rng(0).standard_normal((3, 3, 96, 96)).astype(np.float32)
    with load(tome_bundle) as reduced, load(tome_bundle, graph="full") as full:
        got, want = reduced.run(x)["logits"], full.run(x)["logits"]
    assert got.shape == want.shape == (3, 1000)
    assert np.abs(got - want).max() > 1e-3  # the reduction does change the output


def export_small(path: Path, **kwargs) -> dict:
    request = ExportRequest("deit_tiny_patch16_224", path, image_size=32, **kwargs)
    return export_bundle(request)


def test_existing_bundle_is_kept_unless_forced(tmp_path: Path):
    dest = tmp_path / "b"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="--force"):
        export_small(dest)
    assert (dest / "keep.txt").read_text() == "mine"
    export_small(dest, force=True)
    assert not (dest / "keep.txt").exists()
    assert read_manifest(dest)["reduction"]["method"] == "none"
    assert set(read_manifest(dest)["files"]) == {"model.onnx", "weights.bin"}
    assert [p.name for p in tmp_path.iterdir()] == ["b"], "no temporary folder may remain"


def test_failed_verification_writes_nothing(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(export_module, "VERIFY_ATOL", 0.0)
    with pytest.raises(RuntimeFailure, match="nothing was written"):
        export_small(tmp_path / "b", reduction=ReductionConfig("tome", {"r": 1}))
    assert list(tmp_path.iterdir()) == []


def test_write_failure_half_way_leaves_nothing(tmp_path: Path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", fail)
    with pytest.raises(RuntimeFailure, match="No space left"):
        export_small(tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_fixed_batch_and_opset(tmp_path: Path):
    manifest = export_small(tmp_path / "b", batch=2, opset=18)
    assert manifest["graphs"]["model"]["inputs"][0]["shape"] == [2, 3, 32, 32]
    model = onnx.load(tmp_path / "b" / "model.onnx", load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18


def test_checkpoint_weights_are_exported(tmp_path: Path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("deit_tiny_patch16_224", img_size=32, num_classes=7)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    manifest = export_small(tmp_path / "b", checkpoint=tmp_path / "w.safetensors")
    assert manifest["model"]["weights"] == "checkpoint:w.safetensors"
    assert manifest["model"]["num_classes"] == 7 and manifest["labels"] is None
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["model"]["num_classes"] == 7
    shutil.rmtree(tmp_path / "b")

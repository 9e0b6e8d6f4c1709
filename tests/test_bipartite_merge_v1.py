"""Models exported with BipartiteMerge version 1 still run: the function body travels with them.

tests/data/bipartite_merge_v1.onnx is a genuine version-1 artifact, written by the code before
version 2 (tests/data/make_bipartite_merge_v1.py says how), with the outputs that code's torch
face gave (bipartite_merge_v1.npz). An old bundle is a bundle exported today with that version-1
body and trimformer opset 1 put back in its place: every other part of the bundle format is the
same in both versions, so this is what an old export is. ONNX Runtime runs both as they are; the
passes that would substitute today's version (to-plugins, the reference runner) refuse them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from trimformer.bundle import MANIFEST, read_manifest, sha256_file
from trimformer.exporter.functions import translation_table
from trimformer.graph_passes import PassError, run_passes
from trimformer.graph_passes.reference import MissingReferenceError, run_reference
from trimformer.ops import DOMAIN, domain_version, get_op
from trimformer.ops.registry import retarget_function
from trimformer.runtime import load

DATA = Path(__file__).parent / "data"
SPEC = get_op("BipartiteMerge")
STALE = "is the one of trimformer opset 1, older than the version 2 the plugins implement"


@pytest.fixture(scope="module")
def v1_model() -> onnx.ModelProto:
    return onnx.load(DATA / "bipartite_merge_v1.onnx")


@pytest.fixture(scope="module")
def v1_data() -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "bipartite_merge_v1.npz"))


def test_the_fixture_is_version_1(v1_model):
    assert SPEC.version == domain_version() == 2
    assert {o.domain: o.version for o in v1_model.opset_import}[DOMAIN] == 1
    assert [(f.domain, f.name) for f in v1_model.functions] == [(DOMAIN, "BipartiteMerge")]


def test_a_version_1_model_runs_as_it_did(v1_model, v1_data):
    translation_table()  # today's schemas registered, as in any process that exports
    onnx.checker.check_model(v1_model, full_check=True)
    feeds = {name: v1_data[name] for name in SPEC.inputs}
    got = ort.InferenceSession(v1_model.SerializeToString()).run(None, feeds)
    for out, name in zip(got, SPEC.outputs, strict=True):
        np.testing.assert_allclose(out, v1_data[name], rtol=0, atol=1e-6)
    # Today's op merges other tokens (protected=1 is odd): the old body is what ran.
    attrs = {a.name: a.i for a in v1_model.graph.node[0].attribute}
    today = SPEC.torch_op(*(torch.from_numpy(feeds[n]) for n in SPEC.inputs), **attrs)
    assert np.abs(today[0].numpy() - got[0]).max() > 1e-2


def test_passes_that_substitute_today_s_version_refuse_it(v1_model, v1_data):
    with pytest.raises(PassError, match=STALE + r".*re-export the model"):
        run_passes(v1_model, ["to-plugins"])
    with pytest.raises(MissingReferenceError, match=STALE):
        run_reference(v1_model, {name: v1_data[name] for name in SPEC.inputs})
    run_passes(v1_model, ["lint"])  # still a valid model: its calls have their functions


def _as_version_1(bundle: Path, body: onnx.FunctionProto) -> None:
    """Put the version-1 body and trimformer opset 1 into ``bundle``'s model.onnx, as an export
    made before version 2 wrote it, and record it in the manifest."""
    path = bundle / "model.onnx"
    model = onnx.load(path, load_external_data=False)
    opset = {o.domain: o.version for o in model.opset_import}[""]
    for entry in model.opset_import:
        if entry.domain == DOMAIN:
            entry.version = 1
    del model.functions[:]
    model.functions.append(retarget_function(body, opset))
    onnx.save(model, path)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["ops"] = {"BipartiteMerge": 1}
    manifest["files"]["model.onnx"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def test_an_old_bundle_loads_and_runs(tome_bundle, tmp_path, v1_model):
    old = tmp_path / "old-bundle"
    shutil.copytree(tome_bundle, old)
    _as_version_1(old, v1_model.functions[0])
    assert read_manifest(old)["ops"] == {"BipartiteMerge": 1}
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    with load(old) as session, load(tome_bundle) as today:
        got, new = session.run(x)["logits"], today.run(x)["logits"]
    assert got.shape == new.shape == (2, 1000) and np.isfinite(got).all()
    assert np.abs(got - new).max() > 1e-4  # DeiT's CLS is protected alone: v1 merges others
    model = onnx.load(old / "model.onnx", load_external_data=False)
    with pytest.raises(PassError, match=STALE):
        run_passes(model, ["to-plugins"])

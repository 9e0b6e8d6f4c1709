"""Hardening: fuzzed configs, op attributes and bundle bytes end in a clean error or a good load.

Every outcome of loading a damaged bundle must be a UsageError (one line, no traceback) or a
Session that runs; never another exception, a crash or a hang. Model loading is done in a child
process so that a crash in native code would show as a failed test, not a dead test run.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trimformer.bundle import MANIFEST, read_manifest, sha256_file
from trimformer.errors import UsageError
from trimformer.methods import ConfigError, ModelGeometry, get_method, parse_params
from trimformer.ops import OpValidationError, registered_ops
from trimformer.profiles import load_reduction_config

DEIT = ModelGeometry(num_layers=12, num_tokens=197, protected=1, grid=(14, 14), dim=384)

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True), st.text(max_size=8)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=13) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
param_keys = st.sampled_from(
    [
        "r",
        "schedule",
        "proportional_attention",
        "keep",
        "layers",
        "fuse",
        "importance",
        "similarity",
        "iterations",
        "k",
        "ratio",
        "partitions",
        "budget_layer",
        "select_layer",
        "threshold",
        "seed",
        "gate",
        "",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(
        [*sorted(__import__("trimformer.methods").methods.registered_methods()), "x"]
    ),
    params=st.dictionaries(param_keys, yaml_values, max_size=4),
)
def test_any_params_plan_or_raise_config_error(method, params):
    try:
        chosen = get_method(method)
        chosen.plan(parse_params(method, chosen.params_type, params), DEIT)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=st.one_of(
        yaml_values,
        st.dictionaries(
            st.sampled_from(["method", "params", "description", "extra"]), yaml_values, max_size=4
        ),
    )
)
def test_any_yaml_document_loads_or_raises_usage_error(document, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load_reduction_config(str(path))
    except UsageError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_as_yaml_loads_or_raises_usage_error(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text)
    try:
        load_reduction_config(str(path))
    except UsageError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from(sorted(registered_ops())),
    attrs=st.dictionaries(
        st.sampled_from(["r", "k", "protected", "fuse", "x"]),
        st.one_of(st.integers(-3, 400), st.booleans(), st.floats(), st.text(max_size=3)),
        max_size=4,
    ),
    n_tokens=st.one_of(st.none(), st.integers(0, 400)),
)
def test_any_op_attributes_validate_or_raise(op, attrs, n_tokens):
    try:
        registered_ops()[op].validate(attrs, n_tokens)
    except OpValidationError as exc:
        assert "\n" not in str(exc)


# ------------------------------------------------------------------------------------------
# Damaged bundles
# ------------------------------------------------------------------------------------------

_LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from trimformer.errors import TrimformerError, UsageError
    from trimformer.runtime import load
    outcomes = []
    for path in sys.argv[1:]:
        try:
            with load(path) as session:
                shape = [2 if isinstance(d, str) else d for d in session.inputs[0].shape]
                session.run(np.zeros(shape, dtype=np.float32))
            outcomes.append("ok")
        except TrimformerError as exc:  # a damaged graph may also fail cleanly when it runs
            assert "\\n" not in str(exc), str(exc)
            kind = "usage" if isinstance(exc, UsageError) else "failure"
            outcomes.append(kind + ": " + str(exc))
    print(json.dumps(outcomes))
    """
)


def _load_in_child(paths: list[Path]) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _LOADER, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # onnxruntime prints its own "EP Error" banner to stdout for some damaged models
    return json.loads(result.stdout.strip().splitlines()[-1])


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.choice(["flip", "truncate", "splice", "zero"])
    if kind == "truncate":
        return bytes(data[: rng.randrange(len(data))])
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        if kind == "flip":
            data[i] ^= 1 << rng.randrange(8)
        elif kind == "zero":
            data[i] = 0
        else:
            data[i : i + 4] = bytes(rng.randrange(256) for _ in range(4))
    return bytes(data)


def _rehash(bundle: Path) -> None:
    """Make the manifest agree with the damaged files, so the damage reaches the loaders."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    for name in manifest["files"]:
        manifest["files"][name]["sha256"] = sha256_file(bundle / name)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("target", ["model.onnx", "manifest.json"])
def test_mutated_bundle_bytes_give_clean_errors(tome_bundle, tmp_path, target):
    rng = random.Random(target)
    cases = []
    for i in range(40):
        bundle = tmp_path / f"b{i}"
        shutil.copytree(tome_bundle, bundle)
        path = bundle / target
        path.write_bytes(_mutate(path.read_bytes(), rng))
        if target == "model.onnx" and i % 2:
            _rehash(bundle)  # half of them also pass the hash check
        cases.append(bundle)
    outcomes = _load_in_child(cases)
    assert len(outcomes) == len(cases)
    assert any(o.startswith("usage") for o in outcomes)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=99), "newer than this trimformer reads"),
        (lambda m: m["files"].update({"../outside": {"sha256": "0"}}), "outside the bundle"),
        (lambda m: m["files"].update({"/etc/passwd": {"sha256": "0"}}), "outside the bundle"),
        (lambda m: m.update(files=["model.onnx"]), "lists no files"),
        (lambda m: m["files"].update({"model.onnx": "abc"}), "model.onnx"),
        (lambda m: m.update(graphs={"model": {"file": "model.onnx"}}), "malformed"),
        (lambda m: m.update(graphs=[]), "declares no graphs"),
        (lambda m: m["graphs"]["model"].update(file="weights.bin"), "cannot be loaded"),
        (lambda m: m["graphs"]["model"].update(file="missing.onnx"), "not listed"),
    ],
)
def test_tampered_manifest_is_refused(tome_bundle, tmp_path, edit, message):
    bundle = tmp_path / "b"
    shutil.copytree(tome_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    edit(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    [outcome] = _load_in_child([bundle])
    assert outcome.startswith("usage") and message in outcome, outcome


def test_nan_and_inf_inputs_propagate_as_documented(tome_bundle):
    import numpy as np

    from trimformer.runtime import load

    x = np.zeros((1, 3, 96, 96), dtype=np.float32)
    x[0, 0, 0, 0] = np.nan
    with load(tome_bundle) as session:
        assert np.isnan(session.run(x)["logits"]).all()
    assert read_manifest(tome_bundle)  # the bundle itself is untouched


def test_small_load_test_is_identical_and_memory_stable(tome_bundle):
    """The benchmark's load test at a small size: 8 threads, 400 requests."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from load_test import run

    figures = run(tome_bundle, threads=8, requests=400, batch=1)
    assert figures["mismatches"] == 0
    assert figures["rss_growth"] < 0.10

"""Config banks: several reduction configs of one model in one bundle, switched at run time."""

from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BANK_CONFIGS, BANK_SIZE, export_tiny_bank
from tests.test_cli import assert_one_line_error, cli
from trimformer.bundle import MANIFEST, WEIGHTS, read_manifest
from trimformer.errors import UsageError
from trimformer.exporter import ExportRequest, export_bundle
from trimformer.profiles import ReductionConfig
from trimformer.runtime import load
from trimformer.runtime.shared_weights import SharedWeights

MODEL = "deit_tiny_patch16_224"
SIZE = BANK_SIZE
NAMES = list(BANK_CONFIGS)


def _tome(r: int) -> ReductionConfig:
    return ReductionConfig("tome", {"r": r})


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_bank(tmp_path_factory.mktemp("bank") / "bank")


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tome r=2 exported on its own: its model and full graphs."""
    path = tmp_path_factory.mktemp("bank") / "alone"
    export_bundle(ExportRequest(MODEL, path, _tome(2), image_size=SIZE))
    return path


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(bank: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each config's output, each run on a session of its own."""
    out = {}
    for name in NAMES:
        with load(bank, config=name, threads=1) as session:
            out[name] = session.run(x)["logits"]
    return out


def test_manifest_lists_every_config_with_its_graph_and_flops(bank: Path) -> None:
    manifest = read_manifest(bank)
    configs = manifest["configs"]
    assert list(configs) == NAMES and manifest["default_config"] == "tome-r2"
    assert [configs[n]["graph"] for n in NAMES] == ["model", "full", "cfg-tome-r1"]
    assert configs["none"]["flops"] > configs["tome-r1"]["flops"] > configs["tome-r2"]["flops"]
    assert configs["tome-r2"]["params"]["r"] == 2 and configs["none"]["method"] == "none"
    assert manifest["reduction"]["params"]["r"] == 2  # the default config, as before banks
    assert {"model.onnx", "full.onnx", "cfg-tome-r1.onnx"} <= set(manifest["files"])


def test_weights_are_stored_once_for_all_configs(bank: Path, alone: Path) -> None:
    assert (bank / WEIGHTS).stat().st_size == (alone / WEIGHTS).stat().st_size
    table = read_manifest(bank)["shared_weights"]
    stored = sum(t["bytes"] for t in table["tensors"])
    assert stored <= (bank / WEIGHTS).stat().st_size < stored + 64 * len(table["tensors"])
    assert set(table["graphs"]) == {"model", "full", "cfg-tome-r1"}
    assert len(table["graphs"]["model"]) == len(table["graphs"]["full"]) > 0


def test_each_config_equals_its_own_export(
    bank: Path, alone: Path, x: np.ndarray, reference: dict[str, np.ndarray]
) -> None:
    # Shared weights on both sides: the same kernels (no prepacking), so the same bits.
    with load(alone, threads=1, share_weights=True) as single:
        np.testing.assert_array_equal(reference["tome-r2"], single.run(x)["logits"])
        np.testing.assert_array_equal(reference["none"], single.run(x, config="none")["logits"])
    assert not np.allclose(reference["tome-r1"], reference["none"], atol=1e-4)  # r=1 reduces


def test_one_session_runs_every_config_on_one_copy_of_the_weights(
    bank: Path, x: np.ndarray, reference: dict[str, np.ndarray]
) -> None:
    with load(bank, threads=1, preload=True) as session:
        assert list(session.configs) == NAMES and session.config == "tome-r2"
        for name in NAMES:
            np.testing.assert_array_equal(session.run(x, config=name)["logits"], reference[name])
            session.use(name)
            assert session.config == name
            np.testing.assert_array_equal(session.run(x)["logits"], reference[name])
    weights = SharedWeights.of(bank, read_manifest(bank))
    graphs = read_manifest(bank)["shared_weights"]["graphs"]
    model, full = weights.initializers("model"), weights.initializers("full")
    by_index = {i: name for name, i in graphs["full"].items()}
    for name, index in graphs["model"].items():  # the same tensor is the same buffer
        assert model[name] is full[by_index[index]]


def test_unshared_weights_give_the_same_configs(bank: Path, x: np.ndarray, reference) -> None:
    with load(bank, threads=1, share_weights=False) as session:
        for name in NAMES:
            got = session.run(x, config=name)["logits"]
            np.testing.assert_allclose(got, reference[name], atol=1e-4, rtol=0)


def test_switching_under_concurrent_runs(
    bank: Path, x: np.ndarray, reference: dict[str, np.ndarray]
) -> None:
    """Calls naming a config get it; calls without one get one of the configs, whole."""
    errors: list[str] = []
    with load(bank, threads=1) as session:  # lazy: configs open while others run
        stop = threading.Event()

        def switcher() -> None:
            rng = random.Random(1)
            while not stop.is_set():
                session.use(rng.choice(NAMES))

        def caller(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(12):
                name = rng.choice([*NAMES, None])
                got = session.run(x, config=name)["logits"]
                if name is not None and not np.array_equal(got, reference[name]):
                    errors.append(f"asked {name}, got another output")
                if name is None and not any(np.array_equal(got, r) for r in reference.values()):
                    errors.append("default run matched no config")

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
        switch = threading.Thread(target=switcher)
        switch.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        switch.join()
    assert errors == []


def test_unknown_config_names_the_choices(bank: Path, x: np.ndarray) -> None:
    with load(bank) as session:
        for call in (lambda: session.use("fast"), lambda: session.run(x, config="fast")):
            with pytest.raises(UsageError, match="no config 'fast'; choose from tome-r2, none"):
                call()
    with pytest.raises(UsageError, match="no config 'fast'"):
        load(bank, config="fast")


def test_bundle_without_configs_reads_as_reduction_and_none(
    alone: Path, tmp_path: Path, x: np.ndarray
) -> None:
    old = tmp_path / "old"
    shutil.copytree(alone, old)
    manifest = json.loads((old / MANIFEST).read_text())
    for key in ("configs", "default_config", "shared_weights"):
        del manifest[key]
    (old / MANIFEST).write_text(json.dumps(manifest))
    with load(old, threads=1) as before, load(alone, threads=1) as now:
        assert list(before.configs) == ["tome-r2", "none"] == list(now.configs)
        assert before.config == "tome-r2"
        for name in ("tome-r2", "none"):
            got, want = before.run(x, config=name)["logits"], now.run(x, config=name)["logits"]
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_malformed_weight_table_is_refused(alone: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(alone, bad)
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["shared_weights"]["tensors"][0]["offset"] = 1 << 40
    (bad / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match=r"shared_weights is malformed .* past weights\.bin"):
        load(bad, share_weights=True)


def test_bench_config_all_prints_one_row_per_config(bank: Path, tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "b.json"
    args = ["bench", str(bank), "--config", "all", "--runs", "2", "--warmup", "0"]
    code, out, err = cli(capsys, *args, "--json", str(out_json))
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == NAMES
    assert "weights held once" in out
    figures = json.loads(out_json.read_text())
    assert [c["config"] for c in figures["configs"]] == NAMES and figures["share_weights"]
    code, out, err = cli(capsys, "bench", str(bank), "--config", "tome-r1", "--runs", "1")
    assert code == 0 and "tome-r1" in out and "tome-r2" not in out, err


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--config", "none", "--config", "vit-tome-r8", "--r", "8"], ["shape one config"]),
        (["--r", "2", "--r", "4"], ["several --r need a method"]),
        (["--method", "tome", "--r", "2", "--r", "2"], ["tome-r2 is given twice"]),
        (["--config", "none", "--config", "none"], ["none is given twice"]),
        (["--config", "none", "--config", "nope"], ["no profile or file named 'nope'"]),
    ],
)
def test_bank_export_errors_are_one_line(tmp_path, capsys, args, needles) -> None:
    code, _, err = cli(capsys, "export", MODEL, "-o", str(tmp_path / "b"), *args)
    assert_one_line_error(code, err, 2, *needles)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--config", "fast"], ["no config 'fast'; choose from tome-r2, none, tome-r1"]),
        (["--config", "all", "--vs-full"], ["time the config none too"]),
        (["--engine", "desktop-rtx"], ["no engine for 'desktop-rtx'", "trimformer build"]),
        (["--engine", "desktop-rtx", "--vs-full"], ["time the config none too"]),
        (["--engine", "desktop-rtx", "--threads", "2"], ["TensorRT engines take none"]),
        (["--engine", "nope"], ["no device profile or file named 'nope'; packaged: ", "cpu-ort"]),
    ],
)
def test_bench_config_errors_are_one_line(bank, capsys, args, needles) -> None:
    code, _, err = cli(capsys, "bench", str(bank), *args)
    assert_one_line_error(code, err, 2, *needles)

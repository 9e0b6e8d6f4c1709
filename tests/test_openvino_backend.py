"""The OpenVINO backend of Session: the bundle's graphs as exported, compiled for the CPU.

Numbers are checked against ONNX Runtime on the same bundle: fp32 to 1e-4, bf16 as close as
bf16 arithmetic allows; the API (configs, use, threads, input checks) is the ORT Session's.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from test_cli import assert_one_line_error, cli

from trimformer.errors import UsageError
from trimformer.runtime import load
from trimformer.runtime.bench import random_inputs

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def pixels(tome_bundle) -> np.ndarray:
    with load(tome_bundle) as session:
        return random_inputs(session.inputs, 3)["pixel_values"]


def test_fp32_matches_onnx_runtime_for_every_config(tome_bundle, pixels) -> None:
    with load(tome_bundle, preload=True) as ort_session:
        expected = {c: ort_session.run(pixels, config=c)["logits"] for c in ort_session.configs}
    with load(tome_bundle, backend="openvino", preload=True) as session:
        assert session.backend == "openvino" and session.precision == "fp32"
        assert session.providers == ("openvino:CPU",)
        assert list(session.configs) == list(expected)
        for config, logits in expected.items():
            np.testing.assert_allclose(
                session.run(pixels, config=config)["logits"], logits, atol=1e-4
            )
        with pytest.raises(UsageError, match="dtype float64"):
            session.run(pixels.astype(np.float64))


def test_bf16_runs_close_to_fp32(tome_bundle, pixels) -> None:
    with load(tome_bundle, config="none") as ort_session:
        expected = ort_session.run(pixels)["logits"]
    with load(tome_bundle, backend="openvino", precision="bf16", config="none") as session:
        got = session.run(pixels)["logits"]
    if session.precision == "bf16":  # a CPU without bf16 falls back to fp32, with a warning
        assert np.abs(got - expected).max() > 1e-6  # bf16 arithmetic really ran
    cosine = (
        (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() > 0.99


def test_threads_run_one_graph_and_switch_configs_at_once(tome_bundle, pixels) -> None:
    with load(tome_bundle, backend="openvino", threads=1, preload=True) as session:
        expected = {c: session.run(pixels, config=c)["logits"] for c in session.configs}
        errors: list[BaseException] = []

        def work(config: str) -> None:
            try:
                for _ in range(5):
                    np.testing.assert_array_equal(
                        session.run(pixels, config=config)["logits"], expected[config]
                    )
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(c,)) for c in [*expected] * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[0]


def test_bench_on_openvino_reports_backend_and_precision(tome_bundle, tmp_path, capsys) -> None:
    path = tmp_path / "bench.json"
    code, out, err = cli(
        capsys, "bench", str(tome_bundle), "--backend", "openvino", "--vs-full",
        "--runs", "3", "--threads", "1", "--json", str(path),
    )  # fmt: skip
    assert code == 0, err
    assert "openvino:CPU" in out
    figures = json.loads(path.read_text())
    assert (figures["backend"], figures["precision"]) == ("openvino", "fp32")
    assert figures["speedup"] > 0 and figures["flops_ratio"] > 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--backend", "openvino", "--device", "NOSUCH"), "device 'NOSUCH' is not available"),
        (("--device", "CPU"), "--device picks an OpenVINO device; add --backend openvino"),
        (("--precision", "bf16"), "precision bf16 runs on OpenVINO"),
        (("--backend", "openvino", "--profile-ops"), "--profile-ops reads ONNX Runtime's"),
        (("--backend", "openvino", "--precision", "int8"), "no int8 graph of config 'tome-r4'"),
    ],
)
def test_runtime_flag_errors_are_one_line(tome_bundle, capsys, args, message) -> None:
    code, _, err = cli(capsys, "bench", str(tome_bundle), "--runs", "1", *args)
    assert_one_line_error(code, err, 2, message)

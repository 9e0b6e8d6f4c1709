"""trimformer serve: a bundle on Ray Serve, run for real on 127.0.0.1.

The request parsing is tested on its own; then the command starts and stops (SIGTERM, a
graceful shutdown); then one local Ray (2 CPUs, no dashboard, a small object store) serves a
bank with 2 replicas under a bounded load of mixed configs and body formats, every answer is
compared with a direct ``Session.run`` of the same input and config, bad requests are answered
without harming a replica, the metrics reach Ray's Prometheus endpoint, and a replica killed
mid-load is replaced while every failed request ends in a clean error and succeeds on retry.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import BANK_CONFIGS, BANK_SIZE, export_tiny_bank
from trimformer.bundle import read_manifest
from trimformer.runtime import load
from trimformer.runtime.preprocess import decode_image
from trimformer.serving.requests import CONFIG_HEADER, NPY, NPZ, BadRequest, BundleInputs

CLIENTS, PER_CLIENT = 8, 50
TIMEOUT_S = 30  # no request may take longer: a hang fails the test
ATOL = 1e-5  # a stacked batch and a single run differ only by float rounding


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_bank(tmp_path_factory.mktemp("bank") / "bank")


def _png(seed: int, size: tuple[int, int] = (60, 80)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# ------------------------------------------------------------------ request parsing


def test_bodies_become_feeds_of_the_manifests_dtypes(bank: Path) -> None:
    inputs = BundleInputs.of(read_manifest(bank))
    assert inputs.default == "tome-r2" and inputs.image_input == "pixel_values"
    x = np.random.default_rng(0).standard_normal((2, 3, BANK_SIZE, BANK_SIZE))
    parsed = inputs.parse(
        "application/json", json.dumps({"inputs": x.tolist()}).encode(), None, None
    )
    assert parsed.config == "tome-r2" and parsed.feed["pixel_values"].dtype == np.float32
    body = json.dumps({"inputs": {"pixel_values": x.tolist()}, "config": "none"}).encode()
    assert inputs.parse("application/json", body, "tome-r1", None).config == "none"
    npy = inputs.parse(NPY, _npy(x.astype(np.float32)), "tome-r1", "none")
    assert npy.config == "tome-r1"  # the header before the query parameter
    archive = io.BytesIO()
    np.savez(archive, pixel_values=x.astype(np.float32))
    npz = inputs.parse(NPZ, archive.getvalue(), None, "none")
    assert npz.config == "none" and npz.feed["pixel_values"].shape == x.shape
    image = inputs.parse("image/png", _png(0), None, None).feed["pixel_values"]
    preprocess = read_manifest(bank)["preprocess"]
    np.testing.assert_array_equal(image, decode_image(_png(0), preprocess)[None])


@pytest.mark.parametrize(
    ("content_type", "body", "status", "needle"),
    [
        ("text/plain", b"x", 415, "is not accepted"),
        ("application/json", b"{", 400, "not valid JSON"),
        ("application/json", b'{"input": []}', 400, '{"inputs"'),
        ("application/json", b'{"inputs": [[1], [1, 2]]}', 400, "ragged"),
        ("application/json", b'{"inputs": {"x": [1]}}', 400, "unknown input 'x'"),
        ("application/json", b'{"inputs": ["a"]}', 400, "holds <U1 values"),
        ("application/json", b'{"inputs": [1], "config": "fast"}', 400, "no config 'fast'"),
        ("image/jpeg", b"not a jpeg", 400, "not an image PIL can read"),
        (NPY, b"\x93NUMPY garbage", 400, "not a .npy array"),
        (NPZ, _npy(np.zeros(2)), 400, "not an .npz archive"),
    ],
)
def test_bad_bodies_are_one_line_4xx(bank, content_type, body, status, needle) -> None:
    inputs = BundleInputs.of(read_manifest(bank))
    with pytest.raises(BadRequest) as info:
        inputs.parse(content_type, body, None, None)
    assert info.value.status == status and needle in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ the command


def test_command_serves_until_sigterm_then_shuts_down(bank: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "trimformer.cli", "serve", str(bank)]
    command += ["--port", str(port), "--cpus-per-replica", "0.5", "--threads", "1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        info = _wait_for(f"http://127.0.0.1:{port}/", 90)
        assert info["configs"] == list(BANK_CONFIGS) and info["default_config"] == "tome-r2"
        answer = requests.post(
            f"http://127.0.0.1:{port}/predict",
            data=_png(3),
            headers={"content-type": "image/png", CONFIG_HEADER: "tome-r1"},
            timeout=TIMEOUT_S,
        )
        assert answer.status_code == 200 and answer.json()["config"] == "tome-r1"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "stopped: replicas drained and Ray Serve shut down" in err
    assert "Traceback" not in err


def _wait_for(url: str, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return requests.get(url, timeout=2).json()
        except (requests.ConnectionError, requests.Timeout, ValueError):
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


# ------------------------------------------------------------------ 2 replicas under load


@pytest.fixture(scope="module")
def server(bank: Path) -> Iterator[dict]:
    """Ray Serve on 127.0.0.1 with 2 replicas of the bank; Ray's metrics on another port."""
    from trimformer.serving.ray_app import ServeSettings
    from trimformer.serving.ray_run import deploy, shutdown, start_ray

    port, metrics_port = free_port(), free_port()
    settings = ServeSettings(
        str(bank),
        replicas=2,
        cpus_per_replica=0.5,
        threads=1,
        max_batch=8,
        batch_wait_s=0.005,
        health_check_period_s=1.0,
        graceful_shutdown_s=5.0,
    )
    start_ray(num_cpus=2, metrics_port=metrics_port)
    try:
        url = deploy(settings, "127.0.0.1", port)
        yield {"url": url, "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    finally:
        shutdown()


@pytest.fixture(scope="module")
def cases(bank: Path) -> list[tuple[str, bytes, str, np.ndarray]]:
    """(content type, body, config, the direct Session.run answer): JSON, npy and PNG bodies
    over every config and the default."""
    rng = np.random.default_rng(7)
    preprocess = read_manifest(bank)["preprocess"]
    out = []
    with load(bank, threads=1) as session:
        for index in range(24):
            config = [*BANK_CONFIGS, None][index % 4]
            kind = ("json", "npy", "png")[index % 3]
            if kind == "png":
                body, x = _png(index), decode_image(_png(index), preprocess)[None]
            else:
                rows = 1 + index % 3
                x = rng.standard_normal((rows, 3, BANK_SIZE, BANK_SIZE)).astype(np.float32)
                document = {"inputs": x.tolist(), **({"config": config} if config else {})}
                body = json.dumps(document).encode() if kind == "json" else _npy(x)
            content_type = {"json": "application/json", "npy": NPY, "png": "image/png"}[kind]
            want = session.run(x, config=config or "tome-r2")["logits"]
            out.append((content_type, body, config or "tome-r2", want))
    return out


def _post(client: requests.Session, url: str, case) -> requests.Response:
    content_type, body, config, _ = case
    headers = {"content-type": content_type}
    if content_type != "application/json":
        headers[CONFIG_HEADER] = config
    return client.post(f"{url}/predict", data=body, headers=headers, timeout=TIMEOUT_S)


def _replicas() -> dict[str, str]:
    """Running replicas: actor name -> state, from Ray Serve's status."""
    import ray
    from ray import serve

    status = serve.status().applications["trimformer"].deployments["trimformer"]
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::trimformer#")
    ]
    return {"running": status.replica_states.get("RUNNING", 0), "names": sorted(names)}


def test_every_answer_equals_a_direct_run(server: dict, cases) -> None:
    answers: list[tuple[int, int, np.ndarray | str]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        with requests.Session() as http:
            for step in range(PER_CLIENT):
                index = (seed * 7 + step) % len(cases)
                response = _post(http, server["url"], cases[index])
                got = response.json() if response.status_code == 200 else response.text
                with lock:
                    answers.append((index, response.status_code, got))

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    seconds = time.perf_counter() - started
    assert len(answers) == CLIENTS * PER_CLIENT  # none lost
    worst = 0.0
    for index, status, got in answers:
        assert status == 200, got
        _, _, config, want = cases[index]
        assert got["config"] == config
        logits = np.asarray(got["outputs"]["logits"], dtype=np.float32)
        assert logits.shape == want.shape
        worst = max(worst, float(np.abs(logits - want).max()))
    assert worst <= ATOL, worst
    print(f"\n{len(answers)} requests in {seconds:.1f} s; max |served - direct| = {worst:.2e}")


def test_bad_requests_get_4xx_and_no_replica_dies(server: dict) -> None:
    before = _replicas()
    url = server["url"]
    too_many = np.zeros((9, 3, BANK_SIZE, BANK_SIZE), np.float32)
    wrong_size = np.zeros((1, 3, 32, 32), np.float32)
    for body, headers, status, needle in [
        (b"junk", {"content-type": "image/png"}, 400, "not an image"),
        (b"{}", {"content-type": "application/json"}, 400, '{"inputs"'),
        (_npy(too_many), {"content-type": NPY}, 400, "more than this server's batch of 8"),
        (_npy(wrong_size), {"content-type": NPY}, 400, "dim 2 is 32, expected 48"),
        (_npy(wrong_size[0, 0]), {"content-type": NPY, CONFIG_HEADER: "x"}, 400, "no config"),
        (b"x", {"content-type": "text/csv"}, 415, "is not accepted"),
    ]:
        response = requests.post(f"{url}/predict", data=body, headers=headers, timeout=TIMEOUT_S)
        assert response.status_code == status and needle in response.text, response.text
        assert response.text.count("\n") == 1
    assert requests.get(f"{url}/predict", timeout=TIMEOUT_S).status_code == 405
    assert requests.get(f"{url}/nowhere", timeout=TIMEOUT_S).status_code == 404
    assert requests.get(f"{url}/-/healthz", timeout=TIMEOUT_S).status_code == 200
    assert _replicas() == before and before["running"] == 2


def test_metrics_reach_rays_prometheus_endpoint(server: dict) -> None:
    """After the tests above: answers of every config and status, batch sizes and run times."""
    wanted = [f'config="{c}"' for c in BANK_CONFIGS] + ['status="200"', 'status="400"']
    deadline = time.monotonic() + 60  # Ray exports metrics every few seconds
    missing: list[str] = wanted
    while missing and time.monotonic() < deadline:
        time.sleep(2)
        text = requests.get(server["metrics"], timeout=TIMEOUT_S).text
        counts = [line for line in text.splitlines() if line.startswith("ray_trimformer_requests")]
        missing = [tag for tag in wanted if not any(tag in line for line in counts)]
        histograms = ("ray_trimformer_batch_rows_bucket", "ray_trimformer_run_seconds_bucket")
        missing += [h for h in histograms if h not in text]
    assert not missing, f"not in Ray's metrics after 60 s: {missing}"


def test_a_replica_killed_mid_load_is_survived(server: dict, cases) -> None:
    import ray

    url = server["url"]
    failures: list[str] = []
    retries_needed: list[int] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        with requests.Session() as http:
            for step in range(30):
                case = cases[(seed * 5 + step) % len(cases)]
                for attempt in range(20):
                    try:
                        response = _post(http, url, case)
                        ok = response.status_code == 200
                        why = f"{response.status_code} {response.text.strip()[:120]}"
                    except requests.Timeout:
                        raise AssertionError(f"a request hung for {TIMEOUT_S} s") from None
                    except requests.ConnectionError as exc:
                        ok, why = False, f"connection error: {type(exc).__name__}"
                    if ok:
                        got = np.asarray(response.json()["outputs"]["logits"], np.float32)
                        assert np.abs(got - case[3]).max() <= ATOL
                        if attempt:
                            with lock:
                                retries_needed.append(attempt)
                        break
                    with lock:
                        failures.append(why)
                    time.sleep(0.2 * (attempt + 1))
                else:
                    raise AssertionError(f"a request failed 20 times: {why}")

    victim = _replicas()["names"][0]
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, seed) for seed in range(CLIENTS)]
        time.sleep(1.0)  # the load is running
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        for future in futures:
            future.result()
    recovered = None
    while time.monotonic() - killed_at < 60:
        state = _replicas()
        if state["running"] == 2 and victim not in state["names"]:
            recovered = time.monotonic() - killed_at
            break
        time.sleep(0.5)
    assert recovered is not None, "Ray Serve did not bring the replica back within 60 s"
    for reason in failures:  # clean errors: an HTTP status with a message, or a refused socket
        assert reason.startswith(("5", "connection error")), reason
    response = _post(requests.Session(), url, cases[0])
    assert response.status_code == 200
    print(
        f"\nreplica {victim} killed mid-load: {len(failures)} failed attempts "
        f"({sorted(set(f.split(' ')[0] for f in failures))}), {len(retries_needed)} requests "
        f"needed a retry (at most {max(retries_needed, default=0)}), 2 replicas running again "
        f"{recovered:.1f} s after the kill"
    )

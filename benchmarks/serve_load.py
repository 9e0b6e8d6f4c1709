"""Ray Serve load: throughput and p50/p99 latency for 1 and 2 replicas, reduced vs full config.

For each replica count a local Ray (2 CPUs, no dashboard) serves the bank with ``trimformer``'s
deployment; the cores are split evenly (1 replica: 2 ONNX Runtime threads; 2 replicas: 1 thread
each), so the comparison is of layouts on the same machine, not of machines. ``--clients``
concurrent HTTP clients send one image tensor per request (npy body, batch 1: the server's
``@serve.batch`` forms the batches) for ``--requests`` requests per config; the reduced and the
full config alternate in rounds so that both see the same machine load. Every answer is checked
against a direct ``Session.run``.

    python benchmarks/serve_load.py BUNDLE [--reduced CONFIG] [--full none] [--clients 8]
        [--requests 200] [--rounds 4]

Writes benchmarks/results/serve_load.json and serve_load.png.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from trimformer.runtime import load
from trimformer.serving.ray_app import ServeSettings
from trimformer.serving.ray_run import deploy, shutdown, start_ray
from trimformer.serving.requests import CONFIG_HEADER, NPY

RESULTS = Path(__file__).parent / "results"
CORES = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _body(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


def _load(url: str, config: str, bodies: list[bytes], clients: int, count: int) -> list[float]:
    """``count`` requests from ``clients`` concurrent clients; the latency of each, seconds."""

    def client(seed: int) -> list[float]:
        latencies = []
        with requests.Session() as http:
            for step in range(seed, count, clients):
                started = time.perf_counter()
                response = http.post(
                    f"{url}/predict",
                    data=bodies[step % len(bodies)],
                    headers={"content-type": NPY, CONFIG_HEADER: config},
                    timeout=60,
                )
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text.strip()}")
        return latencies

    with ThreadPoolExecutor(clients) as pool:
        return [t for part in pool.map(client, range(clients)) for t in part]


def measure(
    bundle: Path, replicas: int, configs: list[str], clients: int, count: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Serve the bundle with ``replicas`` replicas; load each config in alternating rounds."""
    with load(bundle, threads=1) as session:
        shape = [1 if isinstance(d, str) else d for d in session.inputs[0].shape]
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]
        expected = {c: [session.run(x, config=c) for x in inputs] for c in configs}
    bodies = [_body(x) for x in inputs]
    settings = ServeSettings(
        str(bundle),
        replicas=replicas,
        cpus_per_replica=CORES / replicas,
        threads=CORES // replicas,
        max_batch=8,
        batch_wait_s=0.002,
    )
    start_ray(num_cpus=CORES)
    try:
        url = deploy(settings, "127.0.0.1", _free_port())
        for config in configs:  # warm-up, and every answer checked once
            for x, body, want in zip(inputs, bodies, expected[config], strict=True):
                got = requests.post(
                    f"{url}/predict",
                    data=body,
                    headers={"content-type": NPY, CONFIG_HEADER: config},
                    timeout=60,
                ).json()["outputs"]
                for name, value in want.items():
                    assert np.abs(np.asarray(got[name], np.float32) - value).max() <= 1e-5, x
            _load(url, config, bodies, clients, 2 * clients)
        latencies: dict[str, list[float]] = {c: [] for c in configs}
        seconds = dict.fromkeys(configs, 0.0)
        for _ in range(rounds):
            for config in configs:
                started = time.perf_counter()
                latencies[config] += _load(url, config, bodies, clients, count // rounds)
                seconds[config] += time.perf_counter() - started
    finally:
        shutdown()
    return {
        config: {
            "requests": len(latencies[config]),
            "throughput_rps": round(len(latencies[config]) / seconds[config], 1),
            "p50_ms": round(1000 * float(np.percentile(latencies[config], 50)), 1),
            "p99_ms": round(1000 * float(np.percentile(latencies[config], 99)), 1),
        }
        for config in configs
    }


def plot(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [(r, c) for r in figures["replicas"] for c in figures["configs"]]
    labels = [f"{r} replica{'s' if r > 1 else ''}\n{c}" for r, c in cells]
    rows = [figures["results"][str(r)][c] for r, c in cells]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(labels, [row["throughput_rps"] for row in rows], color="tab:blue")
    left.set_ylabel("requests / s")
    left.set_title("throughput")
    x = np.arange(len(cells))
    right.bar(x - 0.2, [row["p50_ms"] for row in rows], 0.4, label="p50")
    right.bar(x + 0.2, [row["p99_ms"] for row in rows], 0.4, label="p99")
    right.set_xticks(x, labels)
    right.set_ylabel("latency (ms)")
    right.set_title("latency per request")
    right.legend()
    fig.suptitle(
        f"Ray Serve, {figures['model']}, {figures['clients']} clients, 1 image per request, "
        f"{CORES} shared cores"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--reduced", default=None, help="default: the bank's default config")
    parser.add_argument("--full", default="none")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per config and replica count")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with load(args.bundle) as session:
        reduced = args.reduced or session.config
        model = session.manifest.get("model", {}).get("id", str(args.bundle))
        flops = {c: session.configs[c].get("flops") for c in (reduced, args.full)}
    configs = [reduced, args.full]
    results = {}
    for replicas in (1, 2):
        results[str(replicas)] = measure(
            args.bundle, replicas, configs, args.clients, args.requests, args.rounds
        )
        print(replicas, json.dumps(results[str(replicas)]))
    figures = {
        "bundle": str(args.bundle),
        "model": model,
        "configs": configs,
        "flops": flops,
        "replicas": [1, 2],
        "threads_per_replica": {"1": CORES, "2": CORES // 2},
        "clients": args.clients,
        "results": results,
        "command": "python benchmarks/serve_load.py "
        + " ".join(
            [str(args.bundle), "--clients", str(args.clients), "--requests", str(args.requests)]
        ),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(figures, indent=2) + "\n")
    plot(figures, RESULTS / "serve_load.png")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

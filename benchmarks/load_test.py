"""Load test: one Session shared by 8 threads for 2,000 requests; results and memory stay stable.

Every request's output is compared with the serial result for the same input (bit-identical
expected: the same graph on the same inputs), and resident memory is sampled as requests
complete; the figure of merit is RSS growth after warm-up, which should stay within 10 %.

    python benchmarks/load_test.py BUNDLE [--threads 8] [--requests 2000] [--batch 1]

Writes benchmarks/results/load_test.json.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trimformer.runtime import load

RESULTS = Path(__file__).parent / "results"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    """Current resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


def run(bundle: Path, threads: int, requests: int, batch: int, distinct: int = 16) -> dict:
    rng = np.random.default_rng(0)
    with load(bundle) as session:
        shape = [batch if isinstance(d, str) else d for d in session.inputs[0].shape]
        inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(distinct)]
        serial = [session.run(x) for x in inputs]
        serial_rss = rss_mib()
        samples: list[tuple[int, float]] = []
        mismatches = 0
        done = 0
        lock = threading.Lock()

        def request(i: int) -> None:
            nonlocal mismatches, done
            got = session.run(inputs[i % distinct])
            same = all(np.array_equal(got[k], serial[i % distinct][k]) for k in got)
            with lock:
                mismatches += not same
                done += 1
                if done % 100 == 0:
                    samples.append((done, rss_mib()))

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(request, range(requests)))
        seconds = time.perf_counter() - started
    warm_up = requests // 10
    warm_rss = next(rss for count, rss in samples if count >= warm_up)
    peak_rss = max(rss for count, rss in samples if count >= warm_up)
    return {
        "bundle": str(bundle),
        "threads": threads,
        "requests": requests,
        "batch": batch,
        "mismatches": mismatches,
        "seconds": round(seconds, 1),
        "requests_per_s": round(requests / seconds, 1),
        "rss_mib_after_serial_runs": round(serial_rss, 1),
        "rss_mib_after_warmup": round(warm_rss, 1),
        "rss_mib_peak_after_warmup": round(peak_rss, 1),
        "rss_growth": round(peak_rss / warm_rss - 1, 4),
        "rss_samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    figures = run(args.bundle, args.threads, args.requests, args.batch)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load_test.json").write_text(json.dumps(figures, indent=2) + "\n")
    summary = {k: v for k, v in figures.items() if k != "rss_samples"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

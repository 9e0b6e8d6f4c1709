"""Config bank: memory of 4 configs in one bundle vs 4 bundles, and the time a switch takes.

DeiT-S (random weights, 224 px) with configs none, tome r4, r8, r13, exported once as a bank
(`export --r 0 ...` style, here through the library) and once as 4 separate bundles. Each memory
figure comes from a fresh child process (imports done, then the sessions loaded and every config
run twice, so ONNX Runtime's arenas are counted): resident set size after that minus before
loading, and the peak (VmHWM, reset before loading). Layouts measured:

- bank, shared: one Session, all configs open, the weights read once and handed to every
  config's ONNX Runtime session (prepacking off; the default)
- bank, unshared: one Session, all configs open, each session loading and prepacking its own
  weights (``share_weights=False``, ONNX Runtime's default behaviour)
- 4 bundles: one Session per single-config bundle, ONNX Runtime's defaults
- 1 config: the none config alone, shared and unshared (what one model costs)

Switch time: ``Session.use`` with every config open (eager, ``preload=True``: a reference swap)
and on first use (lazy: the config's ONNX Runtime session is created then), and the run right
after a switch (every config in turn). Latency per config, shared vs unshared weights, is timed
interleaved. Sessions run without thread spinning (idle threads of one config's session would
otherwise take the cores of the next config's run).

    python benchmarks/config_bank.py [--work DIR] [--runs 10] [--threads 2]

Writes benchmarks/results/config_bank.json. The development machine has 2 shared cores: quote
memory and ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
MODEL = "deit_small_patch16_224"
R_VALUES = (4, 8, 13)
NAMES = ["none", *(f"tome-r{r}" for r in R_VALUES)]


def export(work: Path) -> tuple[Path, dict[str, Path]]:
    """The bank and the 4 single-config bundles (reused when already under ``work``)."""
    import torch

    from trimformer.exporter import ExportRequest, export_bundle
    from trimformer.profiles import ReductionConfig

    torch.set_num_threads(1)
    configs = {"none": ReductionConfig("none")}
    configs.update({f"tome-r{r}": ReductionConfig("tome", {"r": r}) for r in R_VALUES})
    bank = work / "bank"
    if not bank.exists():
        export_bundle(ExportRequest(MODEL, bank, bank=tuple(configs.items())))
    singles = {}
    for name, reduction in configs.items():
        singles[name] = work / name
        if not singles[name].exists():
            export_bundle(ExportRequest(MODEL, singles[name], reduction))
    return bank, singles


def _vm() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def child_memory(layout: str, bank: str, singles: dict[str, str], threads: int) -> dict:
    """Run in a fresh process: RSS of ``layout`` after loading and two runs of each config."""
    from trimformer.runtime import load

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _vm()["VmRSS"]
    opts = {"threads": threads}
    if layout == "bank-shared":
        sessions = {n: s for s in [load(bank, preload=True, **opts)] for n in NAMES}
    elif layout == "bank-unshared":
        sessions = {
            n: s for s in [load(bank, preload=True, share_weights=False, **opts)] for n in NAMES
        }
    elif layout == "separate-bundles":
        sessions = {n: load(singles[n], share_weights=False, **opts) for n in NAMES}
    elif layout in ("one-config-shared", "one-config-unshared"):
        shared = layout == "one-config-shared"
        sessions = {"none": load(singles["none"], share_weights=shared, **opts)}
    else:
        raise ValueError(layout)
    first = next(iter(sessions.values()))
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for _ in range(2):
        for name, session in sessions.items():
            session.run(x, config=name)
    vm = _vm()
    return {
        "configs": list(sessions),
        "rss_mb": round(vm["VmRSS"] - before, 1),
        "peak_rss_mb": round(vm["VmHWM"] - before, 1),
        "providers": list(first.providers),
    }


def switch_times(bank: Path, threads: int, cycles: int = 200) -> dict:
    """``use`` eager (every config open) and lazy (each config opened on its first use)."""
    from trimformer.runtime import load

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    out: dict[str, dict] = {}
    # No spinning: the idle threads of the config run last would steal the next one's cores.
    with load(bank, threads=threads, spinning=False) as session:  # lazy: the default is open
        lazy = {}
        for name in NAMES[1:]:
            start = time.perf_counter()
            session.use(name)
            opened = time.perf_counter() - start
            start = time.perf_counter()
            session.run(x)
            lazy[name] = {
                "use_ms": 1e3 * opened,
                "first_run_ms": 1e3 * (time.perf_counter() - start),
            }
        out["lazy"] = lazy
    with load(bank, threads=threads, spinning=False, preload=True) as session:
        for name in NAMES:  # warm every config up, as an application running a while would have
            session.run(x, config=name)
        swaps = []
        for i in range(cycles):
            name = NAMES[i % len(NAMES)]
            start = time.perf_counter()
            session.use(name)
            swaps.append(time.perf_counter() - start)
        first_runs: dict[str, list[float]] = {name: [] for name in NAMES}
        for _ in range(5):  # each config run right after another one ran
            for name in NAMES:
                session.use(name)
                start = time.perf_counter()
                session.run(x)
                first_runs[name].append(1e3 * (time.perf_counter() - start))
        out["eager"] = {
            "use_us_p50": 1e6 * float(np.median(swaps)),
            "use_us_max": 1e6 * float(np.max(swaps)),
            "first_run_after_switch_ms_p50": {
                n: float(np.median(t)) for n, t in first_runs.items()
            },
        }
    return out


def latency(bank: Path, threads: int, runs: int) -> dict:
    """p50 ms per config, shared vs unshared weights, in one interleaved loop."""
    from trimformer.runtime import load

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    sessions = {
        shared: load(bank, threads=threads, spinning=False, preload=True, share_weights=shared)
        for shared in (True, False)
    }
    times: dict[tuple[bool, str], list[float]] = {}
    for session in sessions.values():
        for name in NAMES:
            session.run(x, config=name)
    for i in range(runs):
        order = [(s, n) for n in NAMES for s in ((True, False) if i % 2 else (False, True))]
        for shared, name in order:
            start = time.perf_counter()
            sessions[shared].run(x, config=name)
            times.setdefault((shared, name), []).append(time.perf_counter() - start)
    out = {}
    for name in NAMES:
        shared = 1e3 * float(np.median(times[(True, name)]))
        unshared = 1e3 * float(np.median(times[(False, name)]))
        out[name] = {
            "shared_p50_ms": round(shared, 2),
            "unshared_p50_ms": round(unshared, 2),
            "shared_over_unshared": round(shared / unshared, 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/trimformer-config-bank"))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("LAYOUT", "ARGS_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child[1])
        print(json.dumps(child_memory(args.child[0], spec["bank"], spec["singles"], args.threads)))
        return
    bank, singles = export(args.work)
    spec = json.dumps({"bank": str(bank), "singles": {k: str(v) for k, v in singles.items()}})
    memory = {}
    for layout in (
        "bank-shared",
        "bank-unshared",
        "separate-bundles",
        "one-config-shared",
        "one-config-unshared",
    ):
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", layout, spec]
        memory[layout] = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        )
        print(layout, memory[layout], flush=True)
    manifest = json.loads((bank / "manifest.json").read_text())
    result = {
        "model": MODEL,
        "weights": "random",
        "configs": {n: {"flops": manifest["configs"][n]["flops"]} for n in NAMES},
        "bundle_bytes": {
            "bank": sum(f["bytes"] for f in manifest["files"].values()),
            "separate": sum(
                f["bytes"]
                for p in singles.values()
                for f in json.loads((p / "manifest.json").read_text())["files"].values()
            ),
        },
        "threads": args.threads,
        "memory_mb": memory,
        "switch": switch_times(bank, args.threads),
        "latency": latency(bank, args.threads, args.runs),
    }
    print(json.dumps(result["switch"], indent=1), json.dumps(result["latency"], indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "config_bank.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

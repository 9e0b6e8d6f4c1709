"""Jetson: tegrastats power rails, the nvpmodel power mode and whether clocks are locked."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimformer.runtime.telemetry.base import (
    COMMAND_TIMEOUT_S,
    SYS_ROOT,
    TEGRA_RELEASE,
    Unavailable,
)

# "<RAIL> <now>mW/<average>mW" (JetPack 5/6) or "<RAIL> <now>/<average>" (JetPack 4). The
# lookahead keeps "RAM 2448/30536MB" and "SWAP 0/15268MB" out.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
# Rails that measure the whole module's input, in order of preference.
_MODULE_INPUT = ("VDD_IN", "POM_5V_IN")


def parse_tegrastats_line(line: str) -> dict[str, float]:
    """Rail name -> instantaneous power (mW) of one tegrastats line; empty when it has none."""
    return {m[1]: float(m[2]) for m in _RAIL.finditer(line)}


def module_power_mw(rails: dict[str, float]) -> tuple[float, str]:
    """The module's power (mW) from one sample's rails, and which rails it is.

    Orin Nano / NX and Xavier NX report their input (VDD_IN, which includes the other rails);
    boards without an input rail (AGX Orin, AGX Xavier) get the sum of every rail reported.
    """
    for name in _MODULE_INPUT:
        if name in rails:
            return rails[name], name
    return sum(rails.values()), " + ".join(sorted(rails))


class TegrastatsMeter:
    """Jetson module energy: ``tegrastats`` runs during the window; power x time = energy.

    The process is started at ``start`` and stopped at ``stop``, so every sample it printed
    belongs to the window: energy = mean module power of the samples x the window's length.
    ``stdbuf -oL`` keeps its output line-buffered so no sample is lost when it is stopped.
    """

    source = "tegrastats"

    def __init__(self, interval_ms: int = 100, executable: str = "tegrastats") -> None:
        found = shutil.which(executable)
        if found is None:
            raise Unavailable(
                f"energy (tegrastats): {executable} is not on PATH; it ships with Jetson Linux"
            )
        stdbuf = shutil.which("stdbuf")
        self._command = [
            *([stdbuf, "-oL"] if stdbuf else []),
            found,
            "--interval",
            str(interval_ms),
        ]
        self._interval_ms = interval_ms
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._samples: list[dict[str, float]] = []
        self._t0 = 0.0
        self.covers = "Jetson module (tegrastats)"

    def start(self) -> None:
        self._samples = []
        try:
            self._proc = subprocess.Popen(
                self._command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError as exc:
            raise Unavailable(f"energy (tegrastats): cannot start it ({exc})") from None
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()
        self._t0 = time.perf_counter()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None  # opened with PIPE
        for line in proc.stdout:
            if rails := parse_tegrastats_line(line):
                self._samples.append(rails)

    def stop(self) -> float:
        seconds = time.perf_counter() - self._t0
        self.close()
        if not self._samples:
            raise Unavailable(
                f"energy (tegrastats): no power-rail sample in the {seconds:.2f} s window "
                f"(interval {self._interval_ms} ms; some images need root for the rails); "
                "raise --runs or run as root"
            )
        powers = [module_power_mw(s) for s in self._samples]
        self.covers = f"Jetson {powers[-1][1]} (tegrastats)"
        return sum(p for p, _ in powers) / len(powers) * seconds

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=COMMAND_TIMEOUT_S)


@dataclass(frozen=True)
class JetsonState:
    """What makes Jetson numbers comparable: the nvpmodel power mode and the clock locks.

    ``clocks`` maps cpu / gpu / emc to whether that clock is locked (min == max, or EMC's
    frequency override), for those that could be read; ``clocks_locked`` is True when all three
    are, False when any is not, None when that cannot be told; ``notes`` says what was unreadable.
    """

    power_mode: str | None
    power_mode_id: int | None
    clocks: dict[str, bool]
    notes: tuple[str, ...] = ()

    @property
    def clocks_locked(self) -> bool | None:
        if any(not locked for locked in self.clocks.values()):
            return False
        return True if set(self.clocks) == {"cpu", "gpu", "emc"} else None

    def to_json(self) -> dict[str, Any]:
        return {
            "power_mode": self.power_mode,
            "power_mode_id": self.power_mode_id,
            "clocks_locked": self.clocks_locked,
            "clocks": dict(self.clocks),
        }


def parse_nvpmodel(text: str) -> tuple[str, int | None]:
    """(mode name, mode id) from ``nvpmodel -q``: "NV Power Mode: MAXN" then the id on a line."""
    name = re.search(r"^NV Power Mode:\s*(\S+)\s*$", text, re.MULTILINE)
    if name is None:
        raise ValueError(f"no 'NV Power Mode:' line in nvpmodel output {text.strip()[:80]!r}")
    mode_id = re.search(r"^\s*(\d+)\s*$", text[name.end() :], re.MULTILINE)
    return name[1], int(mode_id[1]) if mode_id else None


def _freqs(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def parse_jetson_clocks(text: str) -> dict[str, bool]:
    """Clock locks from ``jetson_clocks --show``: online CPUs and GPU min == max, EMC overridden."""
    locks: dict[str, bool] = {}
    cpus = []
    for line in text.splitlines():
        line = line.strip()
        f = _freqs(line)
        if re.match(r"cpu\d+:", line) and f.get("Online", 1) == 1 and "MinFreq" in f:
            cpus.append(f["MinFreq"] == f["MaxFreq"])
        elif line.startswith("GPU ") and "MinFreq" in f:
            locks["gpu"] = f["MinFreq"] == f["MaxFreq"]
        elif line.startswith("EMC ") and "MinFreq" in f:
            locks["emc"] = f.get("FreqOverride") == 1 or f["MinFreq"] == f["MaxFreq"]
    if cpus:
        locks["cpu"] = all(cpus)
    return locks


# devfreq names of the Jetson GPUs: Orin (JetPack 6, JetPack 5), Xavier, TX2
_GPU_DEVFREQ = ("17000000.gpu", "17000000.ga10b", "17000000.gv11b", "17000000.gp10b")


def sysfs_clock_locks(root: Path = SYS_ROOT) -> dict[str, bool]:
    """CPU and GPU clock locks from world-readable sysfs (EMC's needs root: not here)."""
    locks: dict[str, bool] = {}
    cpus = []
    for policy in sorted(root.glob("devices/system/cpu/cpu[0-9]*/cpufreq")):
        try:
            low = int((policy / "scaling_min_freq").read_text())
            high = int((policy / "scaling_max_freq").read_text())
        except (OSError, ValueError):
            continue
        cpus.append(low == high)
    if cpus:
        locks["cpu"] = all(cpus)
    for name in _GPU_DEVFREQ:
        devfreq = root / "class/devfreq" / name
        try:
            low = int((devfreq / "min_freq").read_text())
            high = int((devfreq / "max_freq").read_text())
        except (OSError, ValueError):
            continue
        locks["gpu"] = low == high
        break
    return locks


def _command(args: Sequence[str]) -> str:
    """A command's stdout; Unavailable (with its one-line reason) when it cannot be run."""
    try:
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{args[0]}: {exc}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise Unavailable(f"{' '.join(args)} exited {done.returncode}: {(lines or ['?'])[-1]}")
    return done.stdout


def read_jetson_state(sys_root: Path = SYS_ROOT) -> JetsonState:
    """Power mode from ``nvpmodel -q``; clock locks from ``jetson_clocks --show`` (root), else
    from sysfs (CPU and GPU only)."""
    notes = []
    mode: tuple[str | None, int | None] = (None, None)
    try:
        mode = parse_nvpmodel(_command(["nvpmodel", "-q"]))
    except (Unavailable, ValueError) as exc:
        notes.append(f"Jetson power mode: {exc}")
    try:
        clocks = parse_jetson_clocks(_command(["jetson_clocks", "--show"]))
        if not clocks:
            raise Unavailable("jetson_clocks --show printed no CPU, GPU or EMC line")
    except Unavailable as exc:
        clocks = sysfs_clock_locks(sys_root)
        notes.append(
            f"Jetson clock locks: {exc}; CPU and GPU read from sysfs, EMC unknown (run as root)"
        )
    return JetsonState(mode[0], mode[1], clocks, tuple(notes))


def is_jetson(release: Path = TEGRA_RELEASE) -> bool:
    """Whether this is a Jetson (Jetson Linux writes /etc/nv_tegra_release)."""
    return release.is_file()

"""Read device telemetry for the benchmark: process and GPU memory, energy, Jetson power state.

Each source is a small reader that either works or raises ``Unavailable`` carrying the reason,
so the benchmark can say once why a figure is missing instead of printing a zero:

- process RSS: ``/proc/self/status`` (VmRSS, and VmHWM reset per section), else ``getrusage``;
- NVML (``nvidia-ml-py``, extra ``gpu``, imported lazily): GPU memory and the GPU energy counter;
- Linux RAPL (powercap): the CPU packages' energy counters, wraparound corrected;
- Jetson: ``tegrastats`` power rails integrated over the window, the ``nvpmodel`` power mode and
  whether CPU / GPU / EMC clocks are locked (numbers without those are not comparable).

Energy is whole-device energy over a window, idle draw included; the benchmark divides it by the
inferences run in the window. No torch here: the runtime must run without it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar

__all__ = [
    "EnergyMeter",
    "JetsonState",
    "MemoryFigures",
    "NvmlMeter",
    "RaplMeter",
    "RssMeter",
    "TegrastatsMeter",
    "Telemetry",
    "Unavailable",
    "module_power_mw",
    "parse_jetson_clocks",
    "parse_nvpmodel",
    "parse_proc_status",
    "parse_tegrastats_line",
    "read_jetson_state",
    "sysfs_clock_locks",
]

_MB = 1024 * 1024
_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_POWERCAP = Path("/sys/class/powercap")
_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
_SYS = Path("/sys")
_COMMAND_TIMEOUT_S = 10.0
_T = TypeVar("_T")


class Unavailable(Exception):
    """A figure that cannot be read here; the message says which, why, and what would fix it."""


# ---------------------------------------------------------------------------- process memory


@dataclass(frozen=True)
class MemoryFigures:
    """Resident memory of this process over one section, in MB (2**20 bytes).

    ``peak_scope`` is "section" when the peak was reset at the section's start, "process" when it
    is the peak since the process began (the kernel would not reset it, or no /proc).
    """

    rss_before_mb: float | None
    rss_after_mb: float | None
    peak_rss_mb: float
    peak_scope: str


def parse_proc_status(text: str) -> dict[str, int]:
    """The ``Vm*`` sizes of a /proc/<pid>/status text, in kB."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(Vm\w+):\s+(\d+) kB$", text, re.MULTILINE)}


class RssMeter:
    """This process's resident memory: before and after a section, and its peak in between.

    Linux keeps one peak (VmHWM) for the whole life of a process, so a benchmark run after other
    work would report that work's peak. Writing "5" to /proc/self/clear_refs (Linux >= 4.0, any
    process may do it to itself) resets VmHWM to the current RSS, which makes the peak the
    section's own; it is chosen for that reason, and it resets the peak for the whole process (an
    application watching its own VmHWM sees it drop). Where the write is refused the peak is the
    process's lifetime peak and ``note`` says why. Without /proc (macOS) ``getrusage`` gives the
    lifetime peak only.
    """

    def __init__(self, status: Path = _PROC_STATUS, clear_refs: Path = _CLEAR_REFS) -> None:
        self._status = status
        self._clear_refs = clear_refs
        self.note: str | None = None
        self._proc = status.is_file()
        self._before: float | None = None
        self._scope = "process"
        if not self._proc:
            try:
                import resource  # noqa: F401  (absent on Windows)
            except ImportError:
                raise Unavailable(
                    "peak RSS: neither /proc/self/status nor the resource module exists on "
                    f"{sys.platform}"
                ) from None

    def _vm(self) -> dict[str, int]:
        return parse_proc_status(self._status.read_text())

    def start(self) -> None:
        """Mark the section's start: read the RSS and reset the peak where the kernel allows."""
        if not self._proc:
            self.note = "peak RSS: no /proc on this platform, so it is the process's lifetime peak"
            return
        try:
            self._clear_refs.write_text("5")
            self._scope = "section"
        except OSError as exc:
            self._scope = "process"
            self.note = (
                f"peak RSS: cannot reset the peak ({exc.strerror} on {self._clear_refs}), so it "
                "is the process's lifetime peak; run the benchmark in a fresh process"
            )
        self._before = self._vm()["VmRSS"] / 1024

    def stop(self) -> MemoryFigures:
        """The figures since ``start``."""
        if not self._proc:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            # ru_maxrss is in bytes on macOS, in kB on Linux and the BSDs
            peak_mb = peak / _MB if sys.platform == "darwin" else peak / 1024
            return MemoryFigures(None, None, peak_mb, "process")
        vm = self._vm()
        return MemoryFigures(self._before, vm["VmRSS"] / 1024, vm["VmHWM"] / 1024, self._scope)


# ---------------------------------------------------------------------------- energy meters


class EnergyMeter(Protocol):
    """A source of energy over a window: ``start``, run the work, ``stop`` -> millijoules."""

    source: str
    covers: str

    def start(self) -> None: ...

    def stop(self) -> float: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _RaplZone:
    name: str
    counter: Path
    range_uj: int


class RaplMeter:
    """CPU package energy from Linux RAPL (powercap ``intel-rapl``, Intel and AMD CPUs).

    Only the top-level ``package-*`` zones are summed: their sub-zones (core, uncore, dram) are
    parts of them, and ``psys`` overlaps them. A counter wraps at ``max_energy_range_uj``; one
    wrap per window is corrected, which holds for any window shorter than the wrap period (hours
    at typical package power with the usual 2**38 uJ range). Since Linux 5.10 ``energy_uj`` is
    readable by root only.
    """

    source = "rapl"

    def __init__(self, root: Path = _POWERCAP) -> None:
        zones = []
        for path in sorted(root.glob("intel-rapl:*")):
            if path.name.count(":") != 1 or not (path / "name").is_file():
                continue
            name = (path / "name").read_text().strip()
            if name.startswith("package"):
                zones.append(
                    _RaplZone(name, path / "energy_uj", _read_int(path, "max_energy_range_uj"))
                )
        if not zones:
            raise Unavailable(
                f"energy (RAPL): no {root}/intel-rapl:* package zones (no RAPL powercap driver "
                "here: not an Intel/AMD CPU, the intel_rapl_msr module not loaded, or a VM that "
                "hides it)"
            )
        self._zones = tuple(zones)
        self.covers = "CPU " + " + ".join(z.name for z in zones)
        self._start: tuple[int, ...] = self._read()

    def _read(self) -> tuple[int, ...]:
        values = []
        for zone in self._zones:
            try:
                values.append(int(zone.counter.read_text()))
            except PermissionError:
                raise Unavailable(
                    f"energy (RAPL): permission denied on {zone.counter} (root-only since Linux "
                    "5.10); run as root or make it readable (sudo chmod a+r "
                    f"{zone.counter.parent}/energy_uj)"
                ) from None
            except (OSError, ValueError) as exc:
                raise Unavailable(f"energy (RAPL): cannot read {zone.counter}: {exc}") from None
        return tuple(values)

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float:
        end = self._read()
        total_uj = 0
        for zone, first, last in zip(self._zones, self._start, end, strict=True):
            total_uj += last - first if last >= first else zone.range_uj - first + last
        if total_uj <= 0:
            raise Unavailable("energy (RAPL): the counters did not advance over the window")
        return total_uj / 1000

    def close(self) -> None:
        pass


def _read_int(directory: Path, name: str) -> int:
    try:
        return int((directory / name).read_text())
    except (OSError, ValueError) as exc:
        raise Unavailable(f"energy (RAPL): cannot read {directory / name}: {exc}") from None


def _import_pynvml() -> ModuleType:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        raise Unavailable(
            "GPU memory and energy (NVML): the nvidia-ml-py package is not installed; "
            "pip install 'trimformer[gpu]'"
        ) from None


class NvmlMeter:
    """One GPU through NVML: memory in use, and energy from its total-energy counter (mJ).

    The session's CUDA device index is mapped to NVML's through CUDA_VISIBLE_DEVICES (indices or
    UUIDs). NVML numbers GPUs by PCI bus, CUDA fastest first; the two agree when the GPUs are
    all of one model, otherwise the mapping needs CUDA_DEVICE_ORDER=PCI_BUS_ID. ``energy_note``
    says why energy is missing on GPUs without the counter (before Volta).
    """

    source = "nvml"

    def __init__(self, cuda_device: int = 0) -> None:
        nvml = _import_pynvml()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise Unavailable(
                f"GPU memory and energy (NVML): cannot initialise NVML ({exc}); it needs the "
                "NVIDIA driver's libnvidia-ml (not present on Jetson or without a driver)"
            ) from None
        self._nvml = nvml
        self.energy_note: str | None = None
        try:
            self._handle = _nvml_handle(nvml, cuda_device)
            self.covers = f"GPU {cuda_device} ({_text(nvml.nvmlDeviceGetName(self._handle))})"
        except nvml.NVMLError as exc:
            nvml.nvmlShutdown()
            raise Unavailable(
                f"GPU memory and energy (NVML): cannot open CUDA device {cuda_device} ({exc})"
            ) from None
        except Unavailable:
            nvml.nvmlShutdown()
            raise
        try:
            self._start = self._energy_mj()
        except Unavailable as exc:
            self.energy_note = f"{exc} ({self.covers}; the counter needs a Volta or newer GPU)"

    def _energy_mj(self) -> int:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except self._nvml.NVMLError as exc:
            raise Unavailable(f"energy (NVML): cannot read the energy counter ({exc})") from None

    def start(self) -> None:
        self._start = self._energy_mj()

    def stop(self) -> float:
        used = self._energy_mj() - self._start
        if used <= 0:
            raise Unavailable(
                "energy (NVML): the GPU's energy counter did not advance over the window "
                "(it updates every few tens of ms); raise --runs"
            )
        return float(used)

    def memory_mb(self) -> tuple[float, str]:
        """MB of GPU memory used by this process ("process"), else by everyone ("device")."""
        nvml = self._nvml
        try:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == os.getpid() and isinstance(proc.usedGpuMemory, int):
                    return proc.usedGpuMemory / _MB, "process"
        except nvml.NVMLError:
            pass  # not supported here, or another PID namespace: take the device-wide figure
        try:
            return int(nvml.nvmlDeviceGetMemoryInfo(self._handle).used) / _MB, "device"
        except nvml.NVMLError as exc:
            raise Unavailable(f"GPU memory (NVML): cannot read it ({exc})") from None

    def close(self) -> None:
        self._nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _nvml_handle(nvml: ModuleType, cuda_device: int) -> Any:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in visible.split(",")] if visible else None
    entry = entries[cuda_device] if entries and cuda_device < len(entries) else str(cuda_device)
    if entry.startswith(("GPU-", "MIG-")):
        return nvml.nvmlDeviceGetHandleByUUID(entry)
    if not entry.isdigit():
        raise Unavailable(
            f"GPU memory and energy (NVML): CUDA_VISIBLE_DEVICES entry {entry!r} is neither an "
            "index nor a GPU UUID"
        )
    count = int(nvml.nvmlDeviceGetCount())
    models = {
        _text(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)
    }
    if len(models) > 1 and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        raise Unavailable(
            f"GPU memory and energy (NVML): GPUs of {len(models)} models, which CUDA orders "
            "fastest first and NVML by PCI bus, so the session's GPU cannot be matched; set "
            "CUDA_DEVICE_ORDER=PCI_BUS_ID"
        )
    return nvml.nvmlDeviceGetHandleByIndex(int(entry))


# ---------------------------------------------------------------------------- Jetson

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
            proc.wait(timeout=_COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=_COMMAND_TIMEOUT_S)


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


def sysfs_clock_locks(root: Path = _SYS) -> dict[str, bool]:
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
            list(args), capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{args[0]}: {exc}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise Unavailable(f"{' '.join(args)} exited {done.returncode}: {(lines or ['?'])[-1]}")
    return done.stdout


def read_jetson_state(sys_root: Path = _SYS) -> JetsonState:
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


def is_jetson(release: Path = _TEGRA_RELEASE) -> bool:
    """Whether this is a Jetson (Jetson Linux writes /etc/nv_tegra_release)."""
    return release.is_file()


# ---------------------------------------------------------------------------- all together


@dataclass
class EnergyWindow:
    """Filled when the window closes: source -> millijoules, and the window's seconds."""

    mj: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class Telemetry:
    """The energy and GPU sources readable for one benchmark, probed once at construction.

    ``gpu_device`` is the CUDA device the session runs on (None: no GPU provider; NVML is then
    not consulted). Every source that applies here but cannot be read leaves one line in
    ``notes``; sources that do not apply (tegrastats off Jetson, NVML without a GPU) leave none.
    """

    def __init__(
        self,
        gpu_device: int | None,
        powercap: Path = _POWERCAP,
        tegra_release: Path = _TEGRA_RELEASE,
        sys_root: Path = _SYS,
    ) -> None:
        self.notes: list[str] = []
        self.meters: list[EnergyMeter] = []
        self.nvml: NvmlMeter | None = None
        self.jetson: JetsonState | None = None
        jetson = is_jetson(tegra_release)
        if jetson:
            self.jetson = read_jetson_state(sys_root)
            self.notes.extend(self.jetson.notes)
            if (tegrastats := self._probe(TegrastatsMeter)) is not None:
                self.meters.append(tegrastats)
            if gpu_device is not None:
                self.notes.append(
                    "GPU memory: none of its own on Jetson (the GPU shares system memory) and no "
                    "NVML there; see peak RSS"
                )
            return
        if (rapl := self._probe(lambda: RaplMeter(powercap))) is not None:
            self.meters.append(rapl)
        if gpu_device is not None:
            nvml = self.nvml = self._probe(lambda: NvmlMeter(gpu_device))
            if nvml is not None and nvml.energy_note is not None:
                self.notes.append(nvml.energy_note)
            elif nvml is not None:
                self.meters.append(nvml)

    def _probe(self, make: Callable[[], _T]) -> _T | None:
        try:
            return make()
        except Unavailable as exc:
            self.notes.append(str(exc))
            return None

    @property
    def covers(self) -> dict[str, str]:
        """Source -> what its energy covers (CPU packages, a GPU, the Jetson module)."""
        return {m.source: m.covers for m in self.meters}

    @contextlib.contextmanager
    def energy_window(self) -> Iterator[EnergyWindow]:
        """Measure energy around the ``with`` body; a source that fails here is dropped, noted."""
        window = EnergyWindow()
        started = []
        try:
            for meter in list(self.meters):
                try:
                    meter.start()
                except Unavailable as exc:
                    self._drop(meter, str(exc))
                    continue
                started.append(meter)
            t0 = time.perf_counter()
            yield window
            window.seconds = time.perf_counter() - t0
        finally:
            for meter in started:
                try:
                    window.mj[meter.source] = meter.stop()
                except Unavailable as exc:
                    self._drop(meter, str(exc))

    def _drop(self, meter: EnergyMeter, note: str) -> None:
        self.meters.remove(meter)
        if meter is not self.nvml:  # NVML stays open for GPU memory
            meter.close()
        self.notes.append(note)

    def gpu_memory_mb(self) -> tuple[float, str] | None:
        """GPU memory in use now (and its scope), when NVML is readable."""
        if self.nvml is None:
            return None
        try:
            return self.nvml.memory_mb()
        except Unavailable as exc:
            self.notes.append(str(exc))
            return None

    def close(self) -> None:
        for meter in self.meters:
            if meter is not self.nvml:
                meter.close()
        if self.nvml is not None:
            self.nvml.close()

"""Energy counters: Linux RAPL (CPU packages) and NVML (GPU energy and memory)."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from trimformer.runtime.telemetry.base import MB, POWERCAP, Unavailable


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

    def __init__(self, root: Path = POWERCAP) -> None:
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
                    return proc.usedGpuMemory / MB, "process"
        except nvml.NVMLError:
            pass  # not supported here, or another PID namespace: take the device-wide figure
        try:
            return int(nvml.nvmlDeviceGetMemoryInfo(self._handle).used) / MB, "device"
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

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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trimformer.runtime.telemetry.base import POWERCAP, SYS_ROOT, TEGRA_RELEASE, T, Unavailable
from trimformer.runtime.telemetry.energy import EnergyMeter, NvmlMeter, RaplMeter
from trimformer.runtime.telemetry.jetson import (
    JetsonState,
    TegrastatsMeter,
    is_jetson,
    module_power_mw,
    parse_jetson_clocks,
    parse_nvpmodel,
    parse_tegrastats_line,
    read_jetson_state,
    sysfs_clock_locks,
)
from trimformer.runtime.telemetry.memory import MemoryFigures, RssMeter, parse_proc_status

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
        powercap: Path = POWERCAP,
        tegra_release: Path = TEGRA_RELEASE,
        sys_root: Path = SYS_ROOT,
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

    def _probe(self, make: Callable[[], T]) -> T | None:
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

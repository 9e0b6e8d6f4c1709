"""Process memory: resident set size now and its peak over a section."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from trimformer.runtime.telemetry.base import CLEAR_REFS, MB, PROC_STATUS, Unavailable


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

    def __init__(self, status: Path = PROC_STATUS, clear_refs: Path = CLEAR_REFS) -> None:
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
            peak_mb = peak / MB if sys.platform == "darwin" else peak / 1024
            return MemoryFigures(None, None, peak_mb, "process")
        vm = self._vm()
        return MemoryFigures(self._before, vm["VmRSS"] / 1024, vm["VmHWM"] / 1024, self._scope)

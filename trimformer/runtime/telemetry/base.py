"""What every telemetry source shares: where Linux keeps the figures, and ``Unavailable``."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

MB = 1024 * 1024
PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
POWERCAP = Path("/sys/class/powercap")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
SYS_ROOT = Path("/sys")
COMMAND_TIMEOUT_S = 10.0
T = TypeVar("T")


class Unavailable(Exception):
    """A figure that cannot be read here; the message says which, why, and what would fix it."""

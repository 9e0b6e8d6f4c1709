"""Ready-made zero-shot reduction configs (YAML data packaged with trimformer) and their loader.

A profile names a method and its params; ``load_reduction_config`` accepts a packaged profile's
name or a path to the user's own YAML file, and checks every key before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from trimformer.errors import UsageError

__all__ = ["ReductionConfig", "list_reduction_profiles", "load_reduction_config"]

# ``measured``: figures ``trimformer tune`` recorded for the config (informational).
_TOP_KEYS = {"description", "method", "params", "measured"}


@dataclass(frozen=True)
class ReductionConfig:
    """A method name and its raw params, as read from a profile or assembled from CLI flags."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str = "command line"
    description: str = ""


def _reductions_dir() -> Any:
    return resources.files(__package__).joinpath("reductions")


def list_reduction_profiles() -> dict[str, str]:
    """Packaged reduction profiles: name -> description."""
    out = {}
    for entry in sorted(_reductions_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text()) or {}
            out[entry.name.removesuffix(".yaml")] = str(data.get("description", ""))
    return out


def _read(name_or_path: str) -> tuple[str, str]:
    packaged = _reductions_dir().joinpath(f"{name_or_path}.yaml")
    if packaged.is_file():
        return packaged.read_text(), name_or_path
    path = Path(name_or_path)
    if path.is_file():
        try:
            return path.read_text(), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read config {path}: {exc}") from None
    known = ", ".join(list_reduction_profiles())
    raise UsageError(f"no profile or file named {name_or_path!r}; packaged profiles: {known}")


def load_reduction_config(name_or_path: str) -> ReductionConfig:
    """Load a reduction profile by packaged name or file path, checking its top-level keys."""
    text, source = _read(name_or_path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"config {source} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise UsageError(f"config {source} must be a mapping with keys method and params")
    unknown = ", ".join(sorted(map(repr, set(data) - _TOP_KEYS)))
    if unknown:
        raise UsageError(
            f"config {source}: unknown key(s) {unknown}; allowed: {', '.join(sorted(_TOP_KEYS))}"
        )
    method, params = data.get("method"), data.get("params", {}) or {}
    if not isinstance(method, str):
        raise UsageError(f"config {source}: 'method' must be a method name, got {method!r}")
    if not isinstance(params, dict):
        raise UsageError(f"config {source}: 'params' must be a mapping, got {params!r}")
    return ReductionConfig(method, dict(params), source, str(data.get("description", "")))

"""Precisions a bundle runs at, and where a config's quantized graph lies in the bundle.

fp32, fp16 and bf16 run the exported graphs (fp16 and bf16 are OpenVINO's inference precision,
set when the graph is compiled); int8 runs a graph that ``trimformer quantize`` added to the
bundle for one config and one backend. The manifest records each under ``quantized`` as
``"<config>/<backend>-int8"`` -> its files (path, sha256, bytes) and how it was made (scheme,
calibration set and size), so a bank can hold ``tome-r13/int8`` beside ``none/int8``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trimformer.bundle import member_path, sha256_file
from trimformer.errors import UsageError

__all__ = ["PRECISIONS", "quantized_entry", "quantized_graph_file", "quantized_key"]

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def quantized_key(config: str, backend: str) -> str:
    """The manifest key of ``config``'s int8 graph for ``backend``."""
    return f"{config}/{backend}-int8"


def quantized_entry(
    bundle: Path, manifest: Mapping[str, Any], config: str, backend: str
) -> Mapping[str, Any]:
    """The manifest record of ``config``'s int8 graph for ``backend``, or a UsageError saying
    how to make it."""
    entry = (manifest.get("quantized") or {}).get(quantized_key(config, backend))
    if not isinstance(entry, Mapping) or not isinstance(entry.get("files"), Mapping):
        made = ", ".join(manifest.get("quantized") or {}) or "none"
        raise UsageError(
            f"{bundle} has no int8 graph of config {config!r} for {backend} (quantized: {made}); "
            f"run trimformer quantize {bundle} --backend {backend} --config {config} --data D"
        )
    return entry


def quantized_graph_file(
    bundle: Path, manifest: Mapping[str, Any], config: str, backend: str
) -> Path:
    """The graph file of ``config``'s int8 graph, after checking every file of it against its
    sha256."""
    entry = quantized_entry(bundle, manifest, config, backend)
    paths = {}
    for kind, record in entry["files"].items():
        path = member_path(bundle, str(record.get("path", "")))
        if not path.is_file() or sha256_file(path) != record.get("sha256"):
            raise UsageError(
                f"{path} is missing or does not match its sha256 in the manifest; quantize again "
                f"with trimformer quantize {bundle} --backend {backend} --config {config} --force"
            )
        paths[kind] = path
    return paths["graph"]

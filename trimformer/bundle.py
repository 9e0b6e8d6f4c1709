"""The bundle: an export's directory of ONNX graphs, shared weights and a manifest.

```
BUNDLE/
  model.onnx      the reduced graph; reductions are trimformer model-local functions
  full.onnx       the un-reduced graph of the same weights (absent for --method none)
  weights.bin     every initializer stored once, shared by both graphs (ONNX external data)
  cfg-NAME.onnx   a config bank's further reduced graphs (``export --config A --config B``)
  tokenizer/      assets the inputs need (text models: the tokenizer, save_pretrained format)
  manifest.json   model, reduction, configs, graphs (inputs, outputs, FLOPs), ops, tools,
                  shared_weights (where each graph's initializers lie in weights.bin),
                  sha256 of files
```
``shared_weights`` lets the runtime read every tensor once and hand the same buffer to the
ONNX Runtime session of each graph, so a bank of configs holds its weights in memory once.
Bundles are written to a temporary sibling directory and renamed into place, so a failed or
interrupted export leaves nothing half-written, and an existing bundle is replaced only on request.
Both the exporter (writing) and the runtime (reading, hash checks) use this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from trimformer import __version__
from trimformer.errors import RuntimeFailure, UsageError

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "WEIGHTS",
    "bank_configs",
    "check_config_name",
    "default_config_name",
    "file_record",
    "member_path",
    "read_manifest",
    "sha256_file",
    "staged_directory",
    "update_manifest",
    "write_atomic",
    "write_bundle",
]

FORMAT = "trimformer-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.bin"
if TYPE_CHECKING:
    import onnx

_EXTERNAL_MIN_BYTES = 1024
_ALIGN = 64
CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A config name: also a file name (cfg-NAME.onnx), so letters, digits, '.', '_', '-'."""


def check_config_name(name: str) -> None:
    if not CONFIG_NAME.fullmatch(name):
        raise UsageError(
            f"config name {name!r} is not usable; use up to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def default_config_name(method: str, params: Mapping[str, Any]) -> str:
    """A config's name from its method and params, e.g. ``tome-r8``, ``evit-keep0.7``, ``none``.

    Lists are joined by '.', and a name that would be too long ends in a hash of the params.
    """
    parts = [method]
    for key, value in params.items():
        text = ".".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        parts.append(f"{key}{text}" if key in ("r", "k", "keep") else f"{key}-{text}")
    name = re.sub(r"[^A-Za-z0-9._-]", "", "-".join(parts))
    if CONFIG_NAME.fullmatch(name):
        return name
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    return f"{re.sub(r'[^A-Za-z0-9_]', '', method)[:40] or 'config'}-{digest[:12]}"


def bank_configs(manifest: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], str]:
    """The bundle's configs (name -> entry with "graph") and the default one's name.

    Bundles written before config banks read as a bank of their reduction (graph "model",
    named after its method and its r, k or keep: ``tome-r13``) and, when present, ``none``
    (graph "full").
    """
    configs = manifest.get("configs")
    default = manifest.get("default_config")
    if isinstance(configs, dict) and isinstance(default, str) and default in configs:
        return configs, default
    graphs = manifest.get("graphs")
    reduction = manifest.get("reduction")
    reduction = reduction if isinstance(reduction, dict) else {}
    method = reduction.get("method", "none")
    params = reduction.get("params") or {}
    if not isinstance(method, str) or not isinstance(params, dict):
        method, params = "none", {}
    name = default_config_name(method, {k: params[k] for k in ("r", "k", "keep") if k in params})
    derived = {name: {**reduction, "graph": "model"}}
    if isinstance(graphs, dict) and "full" in graphs:
        derived["none" if name != "none" else "full"] = {"method": "none", "graph": "full"}
    return derived, name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(bundle: Path, relative: str) -> dict[str, Any]:
    """A bundle member's manifest record: its path, sha256 and size."""
    path = bundle / relative
    return {"path": relative, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; bundle files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_manifest(bundle: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``change`` to the bundle's manifest and rewrite manifest.json atomically, keeping
    every other entry: how artifacts added after export (engines, quantized graphs) are recorded.
    Returns the new manifest."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    change(manifest)
    write_atomic(bundle / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _externalize(graphs: Mapping[str, onnx.ModelProto], weights_path: Path) -> dict[str, Any]:
    """Move large initializers of all graphs into one file, each distinct tensor stored once.

    Returns the manifest's ``shared_weights``: ``tensors`` (offset, bytes, dtype, shape of each
    stored tensor) and ``graphs`` (graph name -> initializer name -> index into ``tensors``).
    """
    import onnx  # only writers need onnx; the runtime reads bundles without it
    from onnx.external_data_helper import set_external_data

    index: dict[tuple[bytes, int, tuple[int, ...]], int] = {}
    tensors: list[dict[str, Any]] = []
    uses: dict[str, dict[str, int]] = {}
    with weights_path.open("wb") as out:
        for name, model in graphs.items():
            uses[name] = {}
            for tensor in model.graph.initializer:
                raw = tensor.raw_data
                if len(raw) < _EXTERNAL_MIN_BYTES:
                    continue
                key = (hashlib.sha256(raw).digest(), tensor.data_type, tuple(tensor.dims))
                if key not in index:
                    out.write(b"\0" * (-out.tell() % _ALIGN))
                    index[key] = len(tensors)
                    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
                    shape = list(tensor.dims)
                    tensors.append(
                        {"offset": out.tell(), "bytes": len(raw), "dtype": dtype, "shape": shape}
                    )
                    out.write(raw)
                entry = tensors[index[key]]
                uses[name][tensor.name] = index[key]
                set_external_data(
                    tensor, location=WEIGHTS, offset=entry["offset"], length=entry["bytes"]
                )
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
    return {"file": WEIGHTS, "tensors": tensors, "graphs": uses}


@contextlib.contextmanager
def staged_directory(dest: Path, force: bool, what: str) -> Iterator[Path]:
    """A temporary sibling of ``dest`` to fill; renamed into place when the block ends well.

    An existing ``dest`` is an error unless ``force``, and is then replaced by a rename (never
    left half-replaced). If the block fails, the temporary directory goes and ``dest`` is
    untouched; an ``OSError`` becomes a RuntimeFailure naming ``what`` was being written.
    """
    dest = Path(dest)
    if dest.exists() and not force:
        raise UsageError(f"{dest} already exists; choose another -o folder or pass --force")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    except OSError as exc:
        raise UsageError(
            f"cannot write to {dest.parent}: {exc.strerror}; choose a writable -o"
        ) from None
    try:
        yield tmp
        _replace(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeFailure(
            f"writing the {what} failed ({exc}); nothing was written to {dest}"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bundle(
    dest: Path,
    graphs: Mapping[str, onnx.ModelProto],
    manifest: dict[str, Any],
    force: bool,
    assets: Mapping[str, Callable[[Path], None]] | None = None,
) -> None:
    """Write graphs (name -> model), asset folders (name -> writer of that folder), manifest.

    Writing is atomic (``staged_directory``). The manifest gets the format fields and the sha256
    of every file. An existing ``dest`` is an error unless ``force``.
    """
    import onnx

    with staged_directory(dest, force, "bundle") as tmp:
        shared_weights = _externalize(graphs, tmp / WEIGHTS)
        for name, model in graphs.items():
            onnx.save_model(model, tmp / f"{name}.onnx")
        for name, write_asset in (assets or {}).items():
            write_asset(tmp / name)
        files = {
            p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, "trimformer": __version__}
        full.update(manifest)
        full["shared_weights"] = shared_weights
        full["files"] = files
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2) + "\n")


def _replace(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        tmp.rename(dest)
        return
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def member_path(bundle: Path, name: str) -> Path:
    """``bundle / name``, refusing a name that leads outside the bundle or deeper than one
    folder (a manifest is data, not a trusted path)."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or not 1 <= len(pure.parts) <= 2:
        raise UsageError(
            f"{bundle}: manifest lists {name!r}, which is outside the bundle; re-export it"
        )
    return bundle / name


def read_manifest(bundle: Path, check_hashes: bool = True) -> dict[str, Any]:
    """Load and check a bundle's manifest: format, version, and every file's presence and sha256."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir() or not path.is_file():
        raise UsageError(
            f"{bundle} is not a trimformer bundle (no {MANIFEST}); run trimformer export first"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}); re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"{path} is not a trimformer manifest; re-export the bundle")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UsageError(
            f"{bundle} has bundle format {version!r}, newer than this trimformer reads "
            f"({FORMAT_VERSION}); upgrade trimformer"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise UsageError(f"{path} lists no files; re-export the bundle")
    for name, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise UsageError(f"{path}: entry {name!r} has no sha256; re-export the bundle")
        member = member_path(bundle, name)
        if not member.is_file():
            raise UsageError(f"{bundle}: {name} is missing; re-export the bundle")
        if check_hashes and sha256_file(member) != entry.get("sha256"):
            raise UsageError(
                f"{bundle}: {name} does not match its sha256 in the manifest (corrupt or "
                "modified); re-export the bundle"
            )
    return manifest

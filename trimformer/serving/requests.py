"""Turn an HTTP request's body into a feed for a bundle, and outputs into a response body.

What a client may send to ``POST /predict``:

- an encoded image (``Content-Type: image/jpeg``, ``image/png``, ...): decoded and preprocessed
  as the manifest says (timm's eval transform, ``runtime.preprocess``), one image per request;
- JSON (``application/json``): ``{"inputs": {NAME: nested lists}, "config": NAME}``, or
  ``{"inputs": nested lists}`` for a one-input model; numbers take the manifest's dtype;
- numpy (``application/x-npy``: one array, for a one-input model; ``application/x-npz``:
  one array per input name), never unpickled.

The config is the JSON ``config`` field, else the ``x-trimformer-config`` header, else the
``config`` query parameter, else the bank's default. The answer is JSON,
``{"config": NAME, "outputs": {NAME: nested lists}}`` (float32 values print exactly), or npz
with ``Accept: application/x-npz``. Whatever is wrong with a request is a ``BadRequest`` with
an HTTP status (400, 413, 415) and one line naming the problem and the fix.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trimformer.bundle import bank_configs
from trimformer.errors import UsageError

__all__ = [
    "CONFIG_HEADER",
    "NPY",
    "NPZ",
    "BadRequest",
    "BundleInputs",
    "Parsed",
    "encode_outputs",
]

CONFIG_HEADER = "x-trimformer-config"
NPY = "application/x-npy"
NPZ = "application/x-npz"


class BadRequest(UsageError):
    """A request the server refuses: ``status`` is its HTTP status, the message one line."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Parsed:
    """A request's config and feed (name -> array with the batch dim first)."""

    config: str
    feed: dict[str, np.ndarray]


@dataclass(frozen=True)
class BundleInputs:
    """What a bundle takes, from its manifest: input dtypes, configs, preprocessing."""

    dtypes: Mapping[str, str]  # every input any config takes -> its dtype
    configs: tuple[str, ...]
    default: str
    preprocess: Mapping[str, Any] | None
    image_input: str | None  # the one input an image fills, when the bundle has one

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> BundleInputs:
        configs, default = bank_configs(manifest)
        graphs = manifest.get("graphs") or {}
        dtypes: dict[str, str] = {}
        names: list[list[str]] = []
        for entry in configs.values():
            inputs = graphs.get(entry.get("graph"), {}).get("inputs", [])
            names.append([spec["name"] for spec in inputs])
            dtypes.update({spec["name"]: spec["dtype"] for spec in inputs})
        preprocess = manifest.get("preprocess")
        preprocess = preprocess if isinstance(preprocess, Mapping) else None
        single = {tuple(n) for n in names}
        image = next(iter(single))[0] if len(single) == 1 and len(names[0]) == 1 else None
        return cls(dtypes, tuple(configs), default, preprocess, image if preprocess else None)

    def parse(
        self, content_type: str, body: bytes, header_config: str | None, query_config: str | None
    ) -> Parsed:
        """The config and feed of one request (see the module docstring)."""
        kind = content_type.split(";")[0].strip().lower()
        config = header_config or query_config
        if kind == "application/json":
            document = _json(body)
            if isinstance(document, dict) and "config" in document:
                config = document["config"]
            feed = self._from_json(document)
        elif kind.startswith("image/"):
            feed = self._from_image(body)
        elif kind == NPY:
            feed = {self._only_input(): _numpy(body, npz=False)}
        elif kind == NPZ:
            feed = _numpy(body, npz=True)
        else:
            raise BadRequest(
                f"content type {content_type or '(none)'!r} is not accepted; send "
                f"application/json, {NPY}, {NPZ}"
                + (" or an encoded image (image/jpeg, image/png)" if self.image_input else ""),
                415,
            )
        return Parsed(self._config(config), feed)

    def _config(self, name: Any) -> str:
        if name is None:
            return self.default
        if not isinstance(name, str) or name not in self.configs:
            raise BadRequest(f"no config {name!r}; choose from {', '.join(self.configs)}")
        return name

    def _from_image(self, body: bytes) -> dict[str, np.ndarray]:
        from trimformer.runtime.preprocess import decode_image

        if self.image_input is None or self.preprocess is None:
            raise BadRequest(
                "this bundle declares no image preprocessing (a text or multi-input model); "
                "send its inputs as JSON or numpy",
                415,
            )
        try:
            return {self.image_input: decode_image(body, self.preprocess)[None]}
        except UsageError as exc:
            raise BadRequest(f"{exc}") from None

    def _only_input(self) -> str:
        if len(self.dtypes) != 1:
            raise BadRequest(
                f"the model takes {len(self.dtypes)} inputs ({', '.join(self.dtypes)}); send "
                f"them as {NPZ} or JSON with one entry per name"
            )
        return next(iter(self.dtypes))

    def _from_json(self, document: Any) -> dict[str, np.ndarray]:
        if not isinstance(document, dict) or "inputs" not in document:
            raise BadRequest(
                'a JSON request is {"inputs": {NAME: nested lists}, "config": NAME}; '
                f"inputs: {', '.join(self.dtypes)}"
            )
        unknown = sorted(set(document) - {"inputs", "config"})
        if unknown:
            raise BadRequest(f"unknown JSON field {unknown[0]!r}; give inputs and config")
        inputs = document["inputs"]
        if not isinstance(inputs, dict):
            inputs = {self._only_input(): inputs}
        return {name: self._array(name, value) for name, value in inputs.items()}

    def _array(self, name: str, value: Any) -> np.ndarray:
        """A JSON value as an array of the input's dtype; floats are refused for integers."""
        dtype = self.dtypes.get(name)
        if dtype is None:
            raise BadRequest(f"unknown input {name!r}; the model takes {', '.join(self.dtypes)}")
        try:
            raw = np.asarray(value)
        except ValueError:
            raise BadRequest(f"input {name!r} is ragged; give equal-length lists") from None
        target = np.dtype(dtype)
        if raw.dtype.kind not in "biuf" or (target.kind in "iu" and raw.dtype.kind == "f"):
            raise BadRequest(f"input {name!r} holds {raw.dtype} values; it takes {dtype}")
        return raw.astype(target)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON ({exc.args[0]})") from None


def _numpy(body: bytes, npz: bool) -> Any:
    try:
        loaded = np.load(io.BytesIO(body), allow_pickle=False)
        if npz:
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("not an npz archive")
            return {name: loaded[name] for name in loaded.files}
        if not isinstance(loaded, np.ndarray):
            raise ValueError("not a single .npy array")
        return loaded
    except (ValueError, OSError, EOFError) as exc:
        what = "an .npz archive (np.savez)" if npz else "a .npy array (np.save)"
        raise BadRequest(f"the body is not {what}: {exc}") from None


def encode_outputs(
    config: str, outputs: Mapping[str, np.ndarray], accept: str
) -> tuple[bytes, str]:
    """The response body and its content type: npz when the client accepts it, else JSON."""
    if NPZ in accept:
        buffer = io.BytesIO()
        np.savez(buffer, **outputs)
        return buffer.getvalue(), NPZ
    document = {"config": config, "outputs": {k: v.tolist() for k, v in outputs.items()}}
    return json.dumps(document).encode(), "application/json"

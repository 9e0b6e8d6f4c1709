"""Device profiles: the packaged ``profiles/devices/*.yaml`` (or a user's file) and their loader.

A device profile says how to deploy on one kind of device: the backend (``tensorrt`` engines,
``onnxruntime`` or ``openvino``), the precision, for OpenVINO its device (CPU, GPU, NPU), and
for TensorRT the workspace, builder optimisation level, DLA core (Jetson AGX Orin / Orin NX,
with GPU fallback) and the batch range the engine's optimisation profile covers. ``serving``
says how a serving engine (Triton's dynamic batcher, Ray Serve's ``@serve.batch``) groups
requests on that device: the batch sizes it prefers, how long a request may wait for others,
and how many model instances run side by side. Every key is checked before anything runs: an
unknown key, a wrong type, an out-of-range value or a key of the other backend is a UsageError
naming the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trimformer.errors import UsageError

if TYPE_CHECKING:
    from trimformer.runtime.options import RuntimeOptions

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BatchRange",
    "DeviceProfile",
    "ServingSettings",
    "list_device_profiles",
    "load_device_profile",
    "parse_device_profile",
]

BACKENDS = ("tensorrt", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
_RUNTIME_BACKENDS = {"onnxruntime": "ort", "openvino": "openvino"}
_MAX_BATCH = 4096
_DEFAULT_QUEUE_DELAY_US = 100
_SERVING_KEYS = ("preferred_batch", "max_queue_delay_us", "instances")


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes an engine accepts (min, max) and is tuned for (opt)."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class ServingSettings:
    """How a server batches requests on the device: the batch sizes to aim for, the longest a
    request waits for others to join its batch, and the model instances (copies) per device."""

    preferred_batch: tuple[int, ...]
    max_queue_delay_us: int
    instances: int = 1


@dataclass(frozen=True)
class DeviceProfile:
    """A validated device profile. TensorRT-only fields are None for onnxruntime and vice versa."""

    name: str
    source: str
    backend: str
    precision: str
    batch: BatchRange
    description: str = ""
    workspace_mib: int | None = None
    builder_optimization_level: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    providers: tuple[str, ...] = ()
    threads: int | None = None
    device: str | None = None

    def runtime_options(self) -> RuntimeOptions:
        """How the runtime runs a bundle on this device (onnxruntime and openvino profiles)."""
        from trimformer.runtime.options import RuntimeOptions

        if self.backend not in _RUNTIME_BACKENDS:
            raise UsageError(
                f"device profile {self.name} is for {self.backend} engines, which the runtime "
                "does not time here; use trimformer build and bench --engine, or a CPU profile "
                "(cpu-ort, cpu-openvino)"
            )
        return RuntimeOptions(_RUNTIME_BACKENDS[self.backend], self.precision, self.device)

    # the loader always fills it (default: one instance, batching towards batch.opt in 100 us)
    serving: ServingSettings = ServingSettings((1,), _DEFAULT_QUEUE_DELAY_US)


Check = Callable[[str, Any], Any]


def _integer(minimum: int, maximum: int, optional: bool = False) -> Check:
    def check(key: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _KeyError(key, f"must be an integer, got {value!r}")
        if not minimum <= value <= maximum:
            raise _KeyError(key, f"must be in {minimum}..{maximum}, got {value}")
        return value

    return check


def _choice(choices: tuple[str, ...]) -> Check:
    def check(key: str, value: Any) -> Any:
        if value not in choices:
            raise _KeyError(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _KeyError(key, f"must be a string, got {value!r}")
    return value


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _KeyError(key, f"must be true or false, got {value!r}")
    return value


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _KeyError(key, f"must be a non-empty list of names, got {value!r}")
    return tuple(value)


def _batch(key: str, value: Any) -> BatchRange:
    if not isinstance(value, dict):
        raise _KeyError(key, f"must be a mapping with min, opt and max, got {value!r}")
    unknown = sorted(set(map(str, value)) - {"min", "opt", "max"})
    if unknown:
        raise _KeyError(f"{key}.{unknown[0]}", "is not a key; batch takes min, opt and max")
    sizes = {}
    for part in ("min", "opt", "max"):
        if part not in value:
            raise _KeyError(f"{key}.{part}", "is missing")
        sizes[part] = _integer(1, _MAX_BATCH)(f"{key}.{part}", value[part])
    if not sizes["min"] <= sizes["opt"] <= sizes["max"]:
        raise _KeyError(key, f"must satisfy min <= opt <= max, got {sizes}")
    return BatchRange(**sizes)


def _serving(key: str, value: Any) -> dict[str, Any]:
    """The ``serving`` mapping's values, checked one by one; the batch range is checked later."""
    if not isinstance(value, dict):
        raise _KeyError(key, f"must be a mapping with {', '.join(_SERVING_KEYS)}, got {value!r}")
    unknown = sorted(set(map(str, value)) - set(_SERVING_KEYS))
    if unknown:
        raise _KeyError(
            f"{key}.{unknown[0]}", f"is not a key; serving takes {', '.join(_SERVING_KEYS)}"
        )
    checked: dict[str, Any] = {}
    if "preferred_batch" in value:
        sizes = value["preferred_batch"]
        if not isinstance(sizes, list) or not sizes:
            raise _KeyError(
                f"{key}.preferred_batch", f"must be a list of batch sizes, got {sizes!r}"
            )
        where = f"{key}.preferred_batch"
        checked["preferred_batch"] = tuple(_integer(1, _MAX_BATCH)(where, v) for v in sizes)
    if "max_queue_delay_us" in value:
        delay = _integer(0, 10_000_000)(f"{key}.max_queue_delay_us", value["max_queue_delay_us"])
        checked["max_queue_delay_us"] = delay
    if "instances" in value:
        checked["instances"] = _integer(1, 64)(f"{key}.instances", value["instances"])
    return checked


def _serving_settings(values: dict[str, Any], batch: BatchRange) -> ServingSettings:
    """Fill the defaults; every preferred size must lie in the profile's batch range."""
    preferred = values.get("preferred_batch", (batch.opt,))
    outside = [size for size in preferred if not batch.min <= size <= batch.max]
    if outside:
        raise _KeyError(
            "serving.preferred_batch",
            f"has {outside[0]}, outside the batch range {batch.min}..{batch.max}",
        )
    return ServingSettings(
        tuple(sorted(set(preferred))),
        values.get("max_queue_delay_us", _DEFAULT_QUEUE_DELAY_US),
        values.get("instances", 1),
    )


_ALL = frozenset(BACKENDS)
_TRT = frozenset({"tensorrt"})
_ORT = frozenset({"onnxruntime"})
_OV = frozenset({"openvino"})
_REQUIRED = object()

# key -> (check, the backends that accept it, default or _REQUIRED)
_KEYS: dict[str, tuple[Check, frozenset[str], Any]] = {
    "description": (_string, _ALL, ""),
    "backend": (_choice(BACKENDS), _ALL, _REQUIRED),
    "precision": (_choice(PRECISIONS), _ALL, _REQUIRED),
    "batch": (_batch, _ALL, _REQUIRED),
    "workspace_mib": (_integer(16, 1 << 20), _TRT, _REQUIRED),
    "builder_optimization_level": (_integer(0, 5), _TRT, 3),
    "dla_core": (_integer(0, 1, optional=True), _TRT, None),
    "gpu_fallback": (_boolean, _TRT, True),
    "providers": (_strings, _ORT, ("CPUExecutionProvider",)),
    "threads": (_integer(1, 1024, optional=True), _ORT | _OV, None),
    "device": (_choice(("CPU", "GPU", "NPU")), _OV, "CPU"),
    "serving": (_serving, _ALL, None),
}


_BACKEND_PRECISIONS = {
    "tensorrt": ("fp32", "fp16", "int8"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "fp16", "bf16", "int8"),
}


class _KeyError(Exception):
    """A bad key, turned into a UsageError naming the profile by ``parse_device_profile``."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"key {key!r} {why}")


def parse_device_profile(data: Any, name: str, source: str) -> DeviceProfile:
    """Validate a device profile's parsed YAML; raise UsageError naming the bad key and why."""
    try:
        if not isinstance(data, dict):
            raise _KeyError("(top level)", "must be a mapping of keys to values")
        unknown = sorted(set(map(str, data)) - set(_KEYS))
        if unknown:
            raise _KeyError(unknown[0], f"is not a key; allowed: {', '.join(_KEYS)}")
        backend = _KEYS["backend"][0]("backend", data.get("backend"))
        values: dict[str, Any] = {}
        for key, (check, backends, default) in _KEYS.items():
            if key in data and backend not in backends:
                other = ", ".join(sorted(backends))
                raise _KeyError(key, f"applies only to backend {other}, not {backend}")
            if key in data:
                values[key] = check(key, data[key])
            elif backend in backends and default is _REQUIRED:
                raise _KeyError(key, f"is missing (required for backend {backend})")
            elif backend in backends:
                values[key] = default
        if values.get("dla_core") is not None and values["precision"] == "fp32":
            raise _KeyError("dla_core", "needs precision fp16 or int8 (DLA has no FP32)")
        if values["precision"] not in _BACKEND_PRECISIONS[backend]:
            fits = ", ".join(_BACKEND_PRECISIONS[backend])
            raise _KeyError("precision", f"must be one of {fits} for backend {backend}")
        values["serving"] = _serving_settings(values["serving"] or {}, values["batch"])
    except _KeyError as exc:
        raise UsageError(f"device profile {source}: {exc}") from None
    return DeviceProfile(name=name, source=source, **values)


def _devices_dir() -> Any:
    return resources.files(__package__).joinpath("devices")


def list_device_profiles() -> dict[str, str]:
    """Packaged device profiles: name -> description."""
    profiles = {}
    for entry in sorted(_devices_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text()) or {}
            profiles[entry.name.removesuffix(".yaml")] = str(data.get("description", ""))
    return profiles


def load_device_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load a packaged device profile by name, or a user's YAML file by path, and validate it."""
    packaged = _devices_dir().joinpath(f"{name_or_path}.yaml")
    if packaged.is_file():
        text, name, source = packaged.read_text(), str(name_or_path), str(name_or_path)
    else:
        path = Path(name_or_path)
        if not path.is_file():
            known = ", ".join(list_device_profiles())
            raise UsageError(
                f"no device profile or file named {str(name_or_path)!r}; packaged: {known}"
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read device profile {path}: {exc}") from None
        name, source = path.stem, str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"device profile {source} is not valid YAML{where}") from None
    return parse_device_profile(data, name, source)

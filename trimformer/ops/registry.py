"""The op registry: every token-reduction primitive declared once, with its faces.

An op's *spec* (name, domain, version, attributes, inputs, outputs, static output count) is the
contract that its torch reference, its ONNX function and its TensorRT plugin all implement.
Graph passes, the exporter and the runtime look ops up here by name; nothing else knows them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

__all__ = [
    "DOMAIN",
    "MAX_OPSET",
    "MIN_OPSET",
    "AttributeSpec",
    "OpSpec",
    "OpValidationError",
    "domain_version",
    "function_builder",
    "get_op",
    "register_op",
    "registered_ops",
    "retarget_function",
]

DOMAIN = "trimformer"


class OpValidationError(ValueError):
    """An op attribute or input shape is outside what the op supports."""


@dataclass(frozen=True)
class AttributeSpec:
    """One integer or float attribute of an op, with the range it accepts."""

    name: str
    kind: type  # int or float
    doc: str
    minimum: float | None = None
    maximum: float | None = None

    def check(self, op_name: str, value: Any) -> None:
        """Raise OpValidationError when ``value`` has the wrong type or is outside its range."""
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise OpValidationError(
                f"{op_name}: attribute {self.name} must be an int, got {value!r}"
            )
        if self.kind is float and not isinstance(value, (int, float)):
            raise OpValidationError(
                f"{op_name}: attribute {self.name} must be a number, got {value!r}"
            )
        if self.minimum is not None and value < self.minimum:
            raise OpValidationError(
                f"{op_name}: attribute {self.name}={value} is below its minimum {self.minimum:g}"
            )
        if self.maximum is not None and value > self.maximum:
            raise OpValidationError(
                f"{op_name}: attribute {self.name}={value} is above its maximum {self.maximum:g}"
            )


@dataclass(frozen=True)
class OpSpec:
    """The spec face of an op, plus handles to its torch and ONNX faces.

    ``version`` is the trimformer opset version that introduced the op's current semantics (as
    ONNX's since_version): a model importing the domain at a lower version calls an older one.

    ``output_tokens(n, attrs)`` gives the static output-token count for ``n`` input tokens and
    raises OpValidationError when the attributes cannot apply to ``n`` tokens.
    ``onnx_function(opset)`` builds the model-local FunctionProto for a model of that opset.
    """

    name: str
    version: int
    doc: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[AttributeSpec, ...]
    output_tokens: Callable[[int, Mapping[str, Any]], int]
    torch_op: Callable[..., Any]
    onnx_function: Callable[[int], onnx.FunctionProto]
    domain: str = DOMAIN
    plugin_name: str = field(default="")

    def validate(self, attrs: Mapping[str, Any], n_tokens: int | None = None) -> None:
        """Check attribute names, types and ranges, and (given n) that they fit n tokens."""
        known = {a.name: a for a in self.attributes}
        unknown = sorted(set(attrs) - set(known))
        if unknown:
            raise OpValidationError(
                f"{self.name}: unknown attribute(s) {', '.join(unknown)}; "
                f"expected {', '.join(known)}"
            )
        for name, spec in known.items():
            if name not in attrs:
                raise OpValidationError(f"{self.name}: missing attribute {name} ({spec.doc})")
            spec.check(self.name, attrs[name])
        if n_tokens is not None:
            self.output_tokens(n_tokens, attrs)

    @property
    def trt_plugin_name(self) -> str:
        """The TensorRT plugin type name (defaults to the op name)."""
        return self.plugin_name or self.name


_REGISTRY: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    """Add an op to the registry; names are unique."""
    if spec.name in _REGISTRY:
        raise ValueError(f"op {spec.name} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_op(name: str) -> OpSpec:
    """Look an op up by name, with an error listing the known ops."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown op {name!r}; registered ops: {', '.join(sorted(_REGISTRY))}"
        ) from None


def registered_ops() -> dict[str, OpSpec]:
    """All registered ops by name (a copy)."""
    return dict(_REGISTRY)


def domain_version() -> int:
    """The trimformer opset version models are exported with: the newest op version, so every
    op is called at its current version."""
    return max(spec.version for spec in _REGISTRY.values())


MIN_OPSET = 18
MAX_OPSET = 23


def function_builder(script: Any, name: str) -> Callable[[int], onnx.FunctionProto]:
    """The ``onnx_function`` face of an op from its onnxscript function: named after the op,
    its body retargeted to the model's opset."""

    def build(opset: int) -> onnx.FunctionProto:
        fn = script.to_function_proto()
        fn.name = name
        return retarget_function(fn, opset)

    return build


def retarget_function(fn: onnx.FunctionProto, opset: int) -> onnx.FunctionProto:
    """Set a function body's default-domain opset to the model's, as ONNX requires them equal.

    Op bodies use only operators whose semantics did not change between MIN_OPSET and MAX_OPSET,
    so the body is valid at any opset in that range.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OpValidationError(f"opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    for entry in fn.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    return fn

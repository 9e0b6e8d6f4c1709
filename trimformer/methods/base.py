"""Zero-shot reduction methods: a registry of recipes configured by data.

A method turns its parameters (from a YAML profile or CLI flags) and a model's geometry into a
``MethodPlan``: the static token count after every layer, the per-layer op attributes recorded in
the manifest, and the reducer the adapter calls inside each block.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from trimformer.models.base import GraphIO, ModelAdapter, Reducer

__all__ = [
    "ConfigError",
    "InputSlot",
    "Method",
    "MethodInput",
    "MethodPlan",
    "ModelGeometry",
    "WithMethodInputs",
    "get_method",
    "parse_params",
    "register_method",
    "registered_methods",
    "with_method_inputs",
]


class ConfigError(ValueError):
    """A reduction config names an unknown key, has a wrong type, or is out of range."""


@dataclass(frozen=True)
class ModelGeometry:
    """What a method needs to know of a model to plan static token counts.

    ``grid`` (rows, columns of the unprotected tokens) and ``dim`` (token width) are None when
    unknown; methods that need them say so.
    """

    num_layers: int
    num_tokens: int
    protected: int
    grid: tuple[int, int] | None = None
    dim: int | None = None
    matching: str = "keys"  # the family's default features for matching tokens (keys, hidden)

    @classmethod
    def of(cls, adapter: ModelAdapter, model: nn.Module) -> ModelGeometry:
        """The geometry of ``model`` as its adapter reads it."""
        return cls(
            adapter.num_layers(model),
            adapter.num_tokens(model),
            adapter.protected_tokens(model),
            adapter.patch_grid(model),
            adapter.embed_dim(model),
            adapter.default_metric,
        )


@dataclass(frozen=True)
class MethodInput:
    """A graph input a method adds to the model's own, e.g. ToDRE's query embedding."""

    name: str
    shape: tuple[int, ...]  # per sample: the graph input is [batch, *shape]
    doc: str
    integers_below: int | None = None  # int64 ids in [-1, this) instead of float32 values

    def example(self, batch: int) -> torch.Tensor:
        """A random value of this input for tracing and verifying the export."""
        if self.integers_below is None:
            return torch.randn(batch, *self.shape)
        return torch.randint(-1, self.integers_below, (batch, *self.shape))


class InputSlot:
    """Where a reducer reads its method's inputs during the forward in progress.

    ``WithMethodInputs`` fills it before calling the model and empties it after, so the
    adapters and the model's own forward need not know about the extra inputs.
    """

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.values:
            raise RuntimeError(f"input {name!r} not given; call the model via WithMethodInputs")
        return self.values[name]


@dataclass(frozen=True)
class MethodPlan:
    """A method resolved for one model: static counts, manifest record, and the reducer."""

    method: str
    tokens_per_layer: tuple[int, ...]  # tokens leaving each block
    layers: tuple[dict[str, Any], ...]  # op name + attributes per layer ({} = no reduction)
    params: dict[str, Any]
    reducer: Reducer
    inputs: tuple[MethodInput, ...] = ()  # graph inputs the reducer reads from ``slot``
    slot: InputSlot | None = None

    @property
    def reduces(self) -> bool:
        return any(self.layers)


def with_method_inputs(
    model: nn.Module, plan: MethodPlan, graph_io: GraphIO
) -> tuple[nn.Module, GraphIO]:
    """The reduced model and its graph I/O, extended by the method's own inputs (if any).

    Example values are random (MethodInput.example), batch as the model's own first input; a
    dynamic batch stays dynamic for the new inputs too.
    """
    if not plan.inputs:
        return model, graph_io
    first = next(iter(graph_io.example))
    example, dynamic = dict(graph_io.example), dict(graph_io.dynamic)
    batch_dim = graph_io.dynamic.get(first, {}).get(0)
    for spec in plan.inputs:
        example[spec.name] = spec.example(graph_io.example[first].shape[0])
        if batch_dim is not None:
            dynamic[spec.name] = {0: batch_dim}
    return WithMethodInputs(model, plan), GraphIO(example, dynamic, graph_io.outputs)


class WithMethodInputs(nn.Module):
    """A reduced model whose forward takes its method's inputs after the model's own."""

    def __init__(self, model: nn.Module, plan: MethodPlan) -> None:
        super().__init__()
        if plan.slot is None:
            raise ValueError(f"{plan.method} declares no inputs")
        self.model = model
        self.names = tuple(i.name for i in plan.inputs)
        self.slot = plan.slot

    def forward(self, *args: torch.Tensor) -> Any:
        own = len(args) - len(self.names)
        self.slot.values = dict(zip(self.names, args[own:], strict=True))
        try:
            return self.model(*args[:own])
        finally:
            self.slot.values = {}


class Method(Protocol):
    """A registered method: a name, a params dataclass, and a planner."""

    name: str
    params_type: type

    def plan(self, params: Any, geometry: ModelGeometry) -> MethodPlan: ...


_METHODS: dict[str, Method] = {}


def register_method(factory: Callable[[], Method]) -> Callable[[], Method]:
    """Class decorator: instantiate and register a method under its name."""
    method = factory()
    _METHODS[method.name] = method
    return factory


def registered_methods() -> dict[str, Method]:
    return dict(_METHODS)


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted([*_METHODS, "none"]))
        raise ConfigError(f"unknown method {name!r}; choose one of: {known}") from None


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if typing.get_origin(annotation) is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, annotation)


def parse_params(method: str, params_type: type, raw: Mapping[str, Any]) -> Any:
    """Build a method's frozen params dataclass from a mapping, naming any bad key and why."""
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    unknown = ", ".join(sorted(map(repr, set(raw) - set(fields))))
    if unknown:
        raise ConfigError(f"{method}: unknown key(s) {unknown}; known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(params_type)
    for key, value in raw.items():
        if not _type_ok(value, hints[key]):
            hint = hints[key]
            expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            raise ConfigError(f"{method}: key {key!r} must be {expected}, got {value!r}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    try:
        return params_type(**values)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{method}: {exc}") from None

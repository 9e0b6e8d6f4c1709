"""The plugins in TensorRT's Python "quickly deployable plugin" form (``tensorrt.plugin``).

For desktop users who build engines without compiling ``libtrimformer_plugins.so``: every
registered op is registered as ``trimformer::<plugin name>`` with

- a shape/dtype descriptor (``@trtp.register``): x [B,N,C] -> x_out [B,M,C], size [B,N,1] ->
  size_out [B,M,1], with M the op's static output-token count (the token count must be static);
- an implementation (``@trtp.impl``) running the op's torch face on TensorRT's stream;
- an autotune declaration (``@trtp.autotune``): linear FP32 or FP16, every tensor of one type.

Engines built this way run the Python implementation (JIT), so the runtime registers the same
plugins (``TrtSession`` does, from the engine's record). The descriptor and implementation
functions are generated from the op registry, with signatures built explicitly:
``tensorrt.plugin`` reads them with ``inspect.signature``, and this module's annotations are
strings (``from __future__ import annotations``). The signature and shape logic are pure
functions, tested without TensorRT; ``tensorrt`` is imported only by ``register_qdp_plugins``.
Needs TensorRT >= 10.6.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trimformer.errors import UsageError
from trimformer.graph_passes.base import PLUGIN_NAMESPACE, plugin_specs
from trimformer.ops import OpSpec, OpValidationError

__all__ = [
    "QdpShapeError",
    "autotune_signature",
    "descriptor_signature",
    "impl_signature",
    "output_dims",
    "output_token_count",
    "qdp_id",
    "register_qdp_plugins",
]

_SUPPORTED_TYPES = "FP32|FP16"
_registered: list[str] = []


class QdpShapeError(UsageError):
    """A QDP plugin cannot describe its outputs for these input shapes."""


def qdp_id(spec: OpSpec) -> str:
    """The plugin id ``tensorrt.plugin`` registers: ``trimformer::<plugin name>``."""
    return f"{PLUGIN_NAMESPACE}::{spec.trt_plugin_name}"


def output_token_count(spec: OpSpec, n_tokens: int | None, attrs: Mapping[str, Any]) -> int:
    """The static output-token count for ``n_tokens`` input tokens (None: not static)."""
    if n_tokens is None:
        raise QdpShapeError(
            f"{qdp_id(spec)}: the token count (dim 1 of {spec.inputs[0]}) must be static; "
            "re-export with a fixed image size"
        )
    try:
        return spec.output_tokens(n_tokens, attrs)
    except OpValidationError as exc:
        raise QdpShapeError(f"{qdp_id(spec)}: {exc}") from None


def output_dims(
    spec: OpSpec, x_dims: Sequence[int | None], attrs: Mapping[str, Any]
) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
    """Output shapes (x_out, size_out) for x of shape [B,N,C]; None marks a dynamic dim."""
    if len(x_dims) != 3:
        raise QdpShapeError(f"{qdp_id(spec)}: {spec.inputs[0]} must be [B,N,C], got {x_dims}")
    batch, tokens, channels = x_dims
    m = output_token_count(spec, tokens, attrs)
    return (batch, m, channels), (batch, m, 1)


def _params(names: Sequence[str], annotation: Any = inspect.Parameter.empty) -> list[Any]:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return [inspect.Parameter(name, kind, annotation=annotation) for name in names]


def descriptor_signature(spec: OpSpec, tensor_desc: type) -> inspect.Signature:
    """``(inputs: TensorDesc..., attrs: int|float...) -> tuple[TensorDesc, ...]``."""
    params = _params(spec.inputs, tensor_desc)
    params += [
        inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=a.kind)
        for a in spec.attributes
    ]
    outputs = tuple.__class_getitem__(tuple(tensor_desc for _ in spec.outputs))
    return inspect.Signature(params, return_annotation=outputs)


def impl_signature(spec: OpSpec) -> inspect.Signature:
    """``(inputs..., attrs..., outputs, stream)``, the schema ``trtp.impl`` checks by name."""
    names = [*spec.inputs, *(a.name for a in spec.attributes), "outputs", "stream"]
    return inspect.Signature(_params(names))


def autotune_signature(spec: OpSpec) -> inspect.Signature:
    """``(inputs..., outputs)``, the schema ``trtp.autotune`` checks by name."""
    return inspect.Signature(_params([*spec.inputs, "outputs"]))


def _with_signature(fn: Callable[..., Any], signature: inspect.Signature, name: str) -> Any:
    fn.__signature__ = signature  # type: ignore[attr-defined]
    fn.__name__ = fn.__qualname__ = name
    return fn


def _descriptor(spec: OpSpec) -> Callable[..., Any]:
    n_in = len(spec.inputs)
    names = [a.name for a in spec.attributes]

    def describe(*args: Any) -> tuple[Any, ...]:
        x, size = args[0], args[n_in - 1]
        attrs = dict(zip(names, args[n_in:], strict=True))
        n = x.shape_expr[1]
        m = output_token_count(spec, n.constant_value() if n.is_constant else None, attrs)
        x_out, size_out = x.like(), size.like()
        x_out.shape_expr[1] = m
        size_out.shape_expr[1] = m
        return x_out, size_out

    return describe


def _implementation(spec: OpSpec) -> Callable[..., None]:
    n_in, n_attrs = len(spec.inputs), len(spec.attributes)

    def run(*args: Any) -> None:
        import torch

        tensors = [torch.as_tensor(t, device="cuda") for t in args[:n_in]]
        attrs = args[n_in : n_in + n_attrs]
        outputs, stream = args[n_in + n_attrs], args[n_in + n_attrs + 1]
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            results = spec.torch_op(*tensors, *attrs)
            for out, result in zip(outputs, results, strict=True):
                torch.as_tensor(out, device="cuda").copy_(result)

    return run


def _autotune(spec: OpSpec, trtp: Any) -> Callable[..., list[Any]]:
    count = len(spec.inputs) + len(spec.outputs)

    def combinations(*_: Any) -> list[Any]:
        return [trtp.AutoTuneCombination(", ".join([_SUPPORTED_TYPES] * count), "LINEAR")]

    return combinations


def register_qdp_plugins() -> list[str]:
    """Register every op's QDP with TensorRT (once per process); return the plugin ids."""
    if _registered:
        return list(_registered)
    from trimformer.runtime.trt_env import TrtVersion, import_tensorrt

    trt = import_tensorrt()
    if not TrtVersion.parse(trt.__version__).has_qdp:
        raise UsageError(
            f"TensorRT {trt.__version__} has no tensorrt.plugin (needs 10.6+); build the plugin "
            "library instead (plugins/README.md)"
        )
    import tensorrt.plugin as trtp

    for spec in plugin_specs().values():
        plugin_id = qdp_id(spec)
        slug = spec.name.lower()
        trtp.register(plugin_id)(
            _with_signature(_descriptor(spec), descriptor_signature(spec, trtp.TensorDesc), slug)
        )
        trtp.impl(plugin_id)(_with_signature(_implementation(spec), impl_signature(spec), slug))
        trtp.autotune(plugin_id)(
            _with_signature(_autotune(spec, trtp), autotune_signature(spec), slug)
        )
        _registered.append(plugin_id)
    return list(_registered)

"""The plugins in TensorRT's Python "quickly deployable plugin" form (``tensorrt.plugin``).

For desktop users who build engines without compiling ``libtrimformer_plugins.so``: every
registered op is registered as ``trimformer::<plugin name>`` with

- a shape/dtype descriptor (``@trtp.register``): x [B,N,C] -> x_out [B,M,C], size [B,N,1] ->
  size_out [B,M,1], with M the op's static output-token count (the token count must be static);
- an implementation (``@trtp.impl``) running the op's torch face on TensorRT's stream;
- an autotune declaration (``@trtp.autotune``): linear FP32 or FP16, every tensor of one type;
- with ``aot_capability`` (TensorRT >= 10.9, Triton installed), an ahead-of-time implementation
  (``@trtp.aot_impl``): the op's Triton kernel (``trimformer.triton_kernels``) compiled to PTX for
  the layer's static shapes, launched one program per batch item.

Engines built with the JIT implementation run the Python code, so the runtime registers the same
plugins (``TrtSession`` does, from the engine's record). Engines built with the AOT form carry
their kernels and run on plain TensorRT, from Python or C++, with neither Python nor the plugin
library; ``aot_blocker`` says beforehand whether every plugin node of a graph has a kernel that
fits, so a build can choose the AOT form only where it works. The descriptor and implementation
functions are generated from the op registry, with signatures built explicitly:
``tensorrt.plugin`` reads them with ``inspect.signature``, and this module's annotations are
strings (``from __future__ import annotations``). The signature and shape logic are pure
functions, tested without TensorRT; ``tensorrt`` is imported only by ``register_qdp_plugins``.
Needs TensorRT >= 10.6.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from trimformer.errors import UsageError
from trimformer.graph_passes.base import (
    PLUGIN_DOMAIN,
    PLUGIN_NAMESPACE,
    iter_node_scopes,
    plugin_specs,
)
from trimformer.ops import OpSpec, OpValidationError

__all__ = [
    "QDP_PLUGIN_VERSION",
    "AotKernel",
    "QdpShapeError",
    "aot_blocker",
    "aot_kernels",
    "aot_signature",
    "autotune_signature",
    "descriptor_signature",
    "impl_signature",
    "output_dims",
    "output_token_count",
    "qdp_graph",
    "qdp_id",
    "register_qdp_plugins",
]

_SUPPORTED_TYPES = "FP32|FP16"
_registered: list[str] = []
_aot_registered: list[int] = []  # the compute capability the AOT form was registered for


class QdpShapeError(UsageError):
    """A QDP plugin cannot describe its outputs for these input shapes."""


QDP_PLUGIN_VERSION = "1"
"""The version ``tensorrt.plugin`` registers every Python plugin at (TensorRT fixes it)."""


def qdp_id(spec: OpSpec) -> str:
    """The plugin id ``tensorrt.plugin`` registers: ``trimformer::<plugin name>``."""
    return f"{PLUGIN_NAMESPACE}::{spec.trt_plugin_name}"


def qdp_graph(model: Any) -> Any:
    """A copy of a ``to-plugins`` graph whose plugin nodes carry the Python form's version.

    TensorRT's ONNX parser finds a plugin node's creator by name, ``plugin_version`` and
    namespace, and registers every Python plugin at version "1". The Python form is generated
    from this registry (the torch faces, the Triton kernels), so it implements each op's current
    version, which is what to-plugins writes (it refuses calls of older versions): only the
    label changes, never the semantics.
    """
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for nodes, _ in iter_node_scopes(out):
        for node in nodes:
            if node.domain != PLUGIN_DOMAIN:
                continue
            kept = [a for a in node.attribute if a.name != "plugin_version"]
            del node.attribute[:]
            node.attribute.extend(
                [helper.make_attribute("plugin_version", QDP_PLUGIN_VERSION), *kept]
            )
    return out


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


def aot_signature(spec: OpSpec, trtp: Any) -> inspect.Signature:
    """``(inputs..., attrs..., outputs, tactic) -> tuple[str, str, KernelLaunchParams,
    SymIntExprs]``, the schema ``trtp.aot_impl`` checks (it requires the return annotation)."""
    names = [*spec.inputs, *(a.name for a in spec.attributes), "outputs", "tactic"]
    returns = tuple.__class_getitem__((str, str, trtp.KernelLaunchParams, trtp.SymIntExprs))
    return inspect.Signature(_params(names), return_annotation=returns)


def _with_signature(fn: Callable[..., Any], signature: inspect.Signature, name: str) -> Any:
    """``fn`` (taking its arguments positionally, in ``signature``'s order) behind ``signature``:
    TensorRT passes some arguments by keyword (the descriptor's attributes, the impl's stream)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*signature.bind(*args, **kwargs).arguments.values())

    call.__signature__ = signature  # type: ignore[attr-defined]
    call.__name__ = call.__qualname__ = name
    return call


def _descriptor(spec: OpSpec, trtp: Any) -> Callable[..., Any]:
    n_in = len(spec.inputs)
    names = [a.name for a in spec.attributes]

    def describe(*args: Any) -> tuple[Any, ...]:
        x, size = args[0], args[n_in - 1]
        attrs = dict(zip(names, args[n_in:], strict=True))
        n = x.shape_expr[1]
        m = output_token_count(spec, n.constant_value() if n.is_constant else None, attrs)
        x_out, size_out = x.like(), size.like()
        # a ShapeExpr, not an int: TensorRT 10.6-10.8 store what they are given as it is
        x_out.shape_expr[1] = trtp.ShapeExpr(m)
        size_out.shape_expr[1] = trtp.ShapeExpr(m)
        return x_out, size_out

    return describe


def _implementation(spec: OpSpec) -> Callable[..., None]:
    n_in, n_attrs = len(spec.inputs), len(spec.attributes)

    def run(*args: Any) -> None:
        import torch

        # TensorRT's tensors expose __cuda_array_interface__: torch wraps them on their GPU
        tensors = [torch.as_tensor(t) for t in args[:n_in]]
        attrs = args[n_in : n_in + n_attrs]
        outputs, stream = args[n_in + n_attrs], args[n_in + n_attrs + 1]
        device = tensors[0].device
        on_stream = (
            torch.cuda.stream(torch.cuda.ExternalStream(stream, device=device))
            if device.type == "cuda"
            else contextlib.nullcontext()
        )
        with on_stream:
            results = spec.torch_op(*tensors, *attrs)
            for out, result in zip(outputs, results, strict=True):
                torch.as_tensor(out).copy_(result)

    return run


def _static_dim(desc: Any, axis: int, what: str, spec: OpSpec) -> int:
    """A static dim of a tensor descriptor: its shape expression's constant, else (a fake
    expression outside a shape context) the build-time dims TensorRT gave the descriptor."""
    dim = desc.shape_expr[axis]
    if not getattr(dim, "is_fake", False) and dim.is_constant:
        return int(dim.constant_value())
    try:
        value = int(desc.shape[axis])
    except (AttributeError, IndexError, RuntimeError, ValueError):
        value = -1
    if value > 0:
        return value
    raise QdpShapeError(f"{qdp_id(spec)}: {what} must be static for the AOT kernel")


def _aot_implementation(spec: OpSpec, trtp: Any, trt: Any, capability: int) -> Callable[..., Any]:
    n_in, names = len(spec.inputs), [a.name for a in spec.attributes]

    def compile_kernel(*args: Any) -> tuple[str, str, Any, Any]:
        import torch

        from trimformer.triton_kernels import compile_plan, kernel_plan

        x, second = args[0], args[1]
        attrs = dict(zip(names, args[n_in : n_in + len(names)], strict=True))
        tokens = _static_dim(x, 1, "the token count", spec)
        channels = _static_dim(x, 2, "the channel count", spec)
        second_channels = _static_dim(second, len(second.shape_expr) - 1, "dim -1", spec)
        dtype = torch.float16 if x.dtype == trt.float16 else torch.float32
        plan = kernel_plan(spec.name, tokens, channels, second_channels, attrs)
        kernel = compile_plan(plan, dtype, capability)
        batch = trtp.SymInt32(x.shape_expr[0])
        launch = trtp.KernelLaunchParams()
        launch.grid_x = batch
        launch.block_x = kernel.threads
        launch.shared_mem = kernel.shared_bytes
        scalars = trtp.SymIntExprs(1)
        scalars[0] = batch
        return kernel.name, kernel.ptx, launch, scalars

    return compile_kernel


def _autotune(spec: OpSpec, trtp: Any) -> Callable[..., list[Any]]:
    count = len(spec.inputs) + len(spec.outputs)

    def combinations(*_: Any) -> list[Any]:
        return [trtp.AutoTuneCombination(", ".join([_SUPPORTED_TYPES] * count), "LINEAR")]

    return combinations


def register_qdp_plugins(aot_capability: int | None = None) -> list[str]:
    """Register every op's QDP with TensorRT (once per process); return the plugin ids.

    With ``aot_capability`` (e.g. 87 for Jetson Orin), also register the ahead-of-time form for
    GPUs of that compute capability; needs TensorRT 10.9+ and Triton.
    """
    from trimformer.runtime.trt_env import TrtVersion, import_tensorrt

    trt = import_tensorrt()
    version = TrtVersion.parse(trt.__version__)
    if not version.has_qdp:
        raise UsageError(
            f"TensorRT {trt.__version__} has no tensorrt.plugin (needs 10.6+); build the plugin "
            "library instead (plugins/README.md)"
        )
    if aot_capability is not None and not version.has_aot_qdp:
        raise UsageError(
            f"TensorRT {trt.__version__} has no AOT Python plugins (needs 10.9+); build the "
            "plugin library or use the JIT form"
        )
    if _aot_registered and aot_capability not in (None, _aot_registered[0]):
        raise UsageError(
            f"the AOT plugins are registered for compute capability {_aot_registered[0]} in this "
            f"process; build for {aot_capability} in a new process"
        )
    import tensorrt.plugin as trtp

    for spec in plugin_specs().values():
        plugin_id = qdp_id(spec)
        slug = spec.name.lower()
        if plugin_id not in _registered:
            descriptor = descriptor_signature(spec, trtp.TensorDesc)
            trtp.register(plugin_id)(_with_signature(_descriptor(spec, trtp), descriptor, slug))
            impl = _with_signature(_implementation(spec), impl_signature(spec), slug)
            trtp.impl(plugin_id)(impl)
            tune = _with_signature(_autotune(spec, trtp), autotune_signature(spec), slug)
            trtp.autotune(plugin_id)(tune)
            _registered.append(plugin_id)
        if aot_capability is not None and not _aot_registered:
            aot = _aot_implementation(spec, trtp, trt, aot_capability)
            trtp.aot_impl(plugin_id)(_with_signature(aot, aot_signature(spec, trtp), slug))
    if aot_capability is not None and not _aot_registered:
        _aot_registered.append(aot_capability)
    return list(_registered)


@dataclass(frozen=True)
class AotKernel:
    """One distinct Triton kernel a graph's plugin nodes need (the first such node named), with
    what compiling it gave: threads and shared memory per dtype, or the problem."""

    node: str
    op: str
    tokens: int | None
    channels: int | None
    second_channels: int | None  # the channels of the op's second input (metric, scores, ...)
    attrs: Mapping[str, int]
    half_only: bool = False  # an FP16 graph: its kernel is compiled for fp16 alone
    threads: int | None = None
    shared_bytes: Mapping[str, int] = field(default_factory=dict)
    problem: str | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two plugin nodes need different kernels."""
        shape = (self.tokens, self.channels, self.second_channels)
        return (self.op, *shape, tuple(self.attrs.items()), self.half_only)


def _static_input_shapes(model: Any) -> tuple[dict[str, tuple[int | None, ...]], dict[str, int]]:

    from trimformer.graph_passes.model_io import infer_shapes

    graph = infer_shapes(model).graph
    infos = (*graph.input, *graph.value_info, *graph.output)
    shapes = {
        info.name: tuple(
            d.dim_value if d.HasField("dim_value") else None
            for d in info.type.tensor_type.shape.dim
        )
        for info in infos
    }
    return shapes, {info.name: info.type.tensor_type.elem_type for info in infos}


def aot_kernels(
    model: Any, capability: int, on_kernel: Callable[[str], None] | None = None
) -> list[AotKernel]:
    """Compile the Triton kernel of every distinct plugin node of ``model`` (a ``to-plugins``
    graph) for compute ``capability``: in fp32 and fp16 (TensorRT 10's FP16 flag may run an
    FP32 graph's plugins in FP16), or fp16 alone for an FP16 graph. Seconds per kernel; Triton
    caches them, so a build's own AOT calls then cost nothing. ``on_kernel`` hears each node
    name before its kernel compiles (progress). UsageError when Triton is missing."""
    import onnx

    from trimformer.graph_passes.base import PLUGIN_DOMAIN, iter_node_scopes
    from trimformer.ops import get_op

    try:
        import torch

        from trimformer.triton_kernels import KernelPlanError, compile_plan, kernel_plan
    except ImportError as exc:
        raise UsageError(f"Triton is not importable ({exc}); pip install triton") from None
    shapes, types = _static_input_shapes(model)
    kernels: dict[tuple[Any, ...], AotKernel] = {}
    for nodes, _ in iter_node_scopes(model):
        for node in (n for n in nodes if n.domain == PLUGIN_DOMAIN):
            spec = get_op(node.op_type)
            values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            attrs = {a.name: values[a.name] for a in spec.attributes}
            x, second = shapes.get(node.input[0], ()), shapes.get(node.input[1], ())
            tokens, channels = (x[1], x[2]) if len(x) == 3 else (None, None)
            second_channels = second[-1] if second else None
            half_only = types.get(node.input[0]) == onnx.TensorProto.FLOAT16
            kernel = AotKernel(
                node.name, spec.name, tokens, channels, second_channels, attrs, half_only
            )
            key = kernel.key
            if key in kernels:
                continue
            if tokens is None or channels is None or second_channels is None:
                kernels[key] = replace(kernel, problem="the shapes of its inputs are not static")
                continue
            if on_kernel is not None:
                on_kernel(node.name)
            dtypes = {"fp16": torch.float16} if half_only else {"fp32": torch.float32}
            dtypes.setdefault("fp16", torch.float16)
            try:
                plan = kernel_plan(spec.name, tokens, channels, second_channels, attrs)
                compiled = {name: compile_plan(plan, d, capability) for name, d in dtypes.items()}
            except KernelPlanError as exc:
                kernels[key] = replace(kernel, problem=str(exc))
                continue
            shared = {name: c.shared_bytes for name, c in compiled.items()}
            threads = compiled["fp16"].threads
            kernels[key] = replace(kernel, threads=threads, shared_bytes=shared)
    return list(kernels.values())


def aot_blocker(model: Any, capability: int) -> str | None:
    """Why the AOT form cannot run every plugin node of ``model`` on a GPU of compute
    ``capability`` (Triton missing, a shape not static, a kernel over the Triton kernels'
    limits), or None when it can: what a build checks before choosing the AOT form."""
    try:
        kernels = aot_kernels(model, capability)
    except UsageError as exc:
        return str(exc)
    problems = [k for k in kernels if k.problem is not None]
    return f"node {problems[0].node!r}: {problems[0].problem}" if problems else None

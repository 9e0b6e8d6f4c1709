"""lint: check our nodes against the op registry, and report what will run where.

Every plugin node (domain ``trt.plugins``) must name a registered op by its plugin name, with
the op's version as ``plugin_version``, our ``plugin_namespace``, and attributes that validate;
every trimformer call must name a registered op with valid attributes and have its function
definition in the model. Attributes are also checked against the static token count where
shape inference knows it. The report counts nodes per op type and where they run.

requires  nothing (lint reads, never rewrites)
ensures   the model is unchanged; the pass refuses a model with any problem
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import onnx

from trimformer.graph_passes.base import (
    PLUGIN_DOMAIN,
    PLUGIN_NAMESPACE,
    GraphPass,
    PassError,
    PassResult,
    attribute_values,
    iter_node_scopes,
    plugin_specs,
    register_pass,
    token_counts,
)
from trimformer.ops import DOMAIN, OpSpec, OpValidationError, registered_ops

__all__ = [
    "CUSTOM",
    "FUNCTION",
    "LINT",
    "LOCAL_FUNCTION",
    "ONNX",
    "PLACES",
    "PLUGIN",
    "LintReport",
    "OpCount",
    "lint",
    "lint_model",
]

_NAME = "lint"

ONNX = "onnx"
FUNCTION = "trimformer function"
PLUGIN = "plugin"
LOCAL_FUNCTION = "local function"
CUSTOM = "custom"
PLACES = {
    ONNX: "standard ONNX op: built into every runtime",
    FUNCTION: "trimformer function: the runtime inlines its body of standard ops",
    PLUGIN: "TensorRT plugin: needs the trimformer plugin library",
    LOCAL_FUNCTION: "another model-local function: the runtime inlines it",
    CUSTOM: "op of another domain: only runtimes that provide it",
}
"""Where a node runs, by category, with what that means."""


@dataclass(frozen=True)
class OpCount:
    """How many nodes of one op type the model has, and where they run."""

    place: str
    domain: str
    op_type: str
    count: int


@dataclass(frozen=True)
class LintReport:
    """Per-op-type node counts by where they run, and every problem found (empty: clean)."""

    ops: tuple[OpCount, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def totals(self) -> dict[str, int]:
        """Node counts per place, every place listed."""
        totals = dict.fromkeys(PLACES, 0)
        for op in self.ops:
            totals[op.place] += op.count
        return totals

    def rows(self) -> list[dict[str, Any]]:
        """The report as table rows (place, domain, op_type, count), most frequent first."""
        return [
            {"place": op.place, "domain": op.domain, "op_type": op.op_type, "count": op.count}
            for op in self.ops
        ]


def _place(node: onnx.NodeProto, local: set[tuple[str, str]]) -> str:
    if node.domain in ("", "ai.onnx"):
        return ONNX
    if node.domain == DOMAIN:
        return FUNCTION
    if node.domain == PLUGIN_DOMAIN:
        return PLUGIN
    return LOCAL_FUNCTION if (node.domain, node.op_type) in local else CUSTOM


def _validate(spec: OpSpec, attrs: dict[str, Any], n_tokens: int | None) -> str | None:
    try:
        spec.validate(attrs, n_tokens)
    except OpValidationError as exc:
        return str(exc)
    return None


def _plugin_problem(node: onnx.NodeProto, n_tokens: int | None) -> str | None:
    plugins = plugin_specs()
    spec = plugins.get(node.op_type)
    if spec is None:
        return (
            f"plugin {node.op_type} is not a registered op (registered plugins: "
            f"{', '.join(sorted(plugins))}); rebuild the graph with to-plugins"
        )
    counts = (len(node.input), len(node.output))
    if counts != (len(spec.inputs), len(spec.outputs)):
        return (
            f"{counts[0]} inputs and {counts[1]} outputs, but {spec.name} takes "
            f"{len(spec.inputs)} ({', '.join(spec.inputs)}) and gives {len(spec.outputs)}; "
            "rebuild the graph with to-plugins"
        )
    attrs = attribute_values(node)
    version = attrs.pop("plugin_version", None)
    namespace = attrs.pop("plugin_namespace", None)
    if version != str(spec.version):
        return (
            f"plugin_version {version!r}, but {spec.name} is version {spec.version}; "
            "rebuild the graph with to-plugins"
        )
    if namespace != PLUGIN_NAMESPACE:
        return f"plugin_namespace {namespace!r}, expected {PLUGIN_NAMESPACE!r}"
    return _validate(spec, attrs, n_tokens)


def _call_problem(
    node: onnx.NodeProto, n_tokens: int | None, functions: set[tuple[str, str]]
) -> str | None:
    ops = registered_ops()
    spec = ops.get(node.op_type)
    if spec is None:
        return f"{node.op_type} is not a registered op (registered: {', '.join(sorted(ops))})"
    if (DOMAIN, node.op_type) not in functions:
        return "no function definition in the model; re-export it"
    return _validate(spec, attribute_values(node), n_tokens)


def lint_model(model: onnx.ModelProto) -> LintReport:
    """Check every plugin and trimformer node; count all nodes by op type and place."""
    local = {(f.domain, f.name) for f in model.functions}
    counts: Counter[tuple[str, str, str]] = Counter()
    problems = []
    tokens: dict[str, int] | None = None
    for nodes, _ in iter_node_scopes(model):
        for node in nodes:
            place = _place(node, local)
            counts[place, node.domain, node.op_type] += 1
            if place not in (PLUGIN, FUNCTION):
                continue
            if tokens is None:
                tokens = token_counts(model)
            n_tokens = tokens.get(node.input[0]) if node.input else None
            if place == PLUGIN:
                problem = _plugin_problem(node, n_tokens)
            else:
                problem = _call_problem(node, n_tokens, local)
            if problem:
                problems.append(f"node {node.name!r} ({node.domain}::{node.op_type}): {problem}")
    ops = tuple(
        OpCount(place, domain, op_type, count)
        for (place, domain, op_type), count in sorted(
            counts.items(), key=lambda item: (list(PLACES).index(item[0][0]), -item[1], item[0])
        )
    )
    return LintReport(ops, tuple(problems))


def lint(model: onnx.ModelProto) -> PassResult:
    """Lint as a pass: the report on success, a PassError naming every problem otherwise."""
    report = lint_model(model)
    if not report.ok:
        raise PassError(f"{_NAME}: {len(report.problems)} problem(s): {'; '.join(report.problems)}")
    return PassResult(_NAME, model, modified=False, counts=report.totals(), report=report)


LINT = register_pass(
    GraphPass(
        _NAME,
        lint,
        requires="nothing",
        ensures="the model is unchanged; every plugin and trimformer node matches a registered "
        "op (name, version, namespace, attributes)",
    )
)

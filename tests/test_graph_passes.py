"""Graph passes: each pass's contract, numerical equality with the original, and the CLI.

The test model is small but gives every pass work: a foldable constant subgraph, a dead node,
MatMul with initializers, LayerNormalization, a BipartiteMerge call, and Softmax. Plugin graphs
are executed on CPU through the plugin references, so ``to-plugins`` is checked for semantics,
not only shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from trimformer.cli_passes import passes_command
from trimformer.errors import UsageError
from trimformer.graph_passes import (
    PLUGIN_DOMAIN,
    PassError,
    get_pass,
    lint_model,
    registered_passes,
    run_passes,
)
from trimformer.graph_passes.lint import FUNCTION, ONNX, PLUGIN
from trimformer.graph_passes.reference import (
    MissingReferenceError,
    references,
    run_reference,
)
from trimformer.ops import DOMAIN, domain_version, get_op, registered_ops

OPSET = 20
TOKENS, CHANNELS, CLASSES, R, PROTECTED = 17, 16, 5, 4, 1
ATOL_FP32 = 1e-5  # same graph, same precision: only summation order may differ
# On softmax probabilities in [0, 1]. Measured over 20 seeds: max 1.1e-3 in ONNX Runtime,
# 2.7e-3 through the reference evaluator (numpy FP16 arithmetic).
ATOL_FP16 = 5e-3
PASS_NAMES = ("inline", "to-plugins", "cleanup", "fp16", "lint")
BIPARTITE_MERGE = get_op("BipartiteMerge")


def _tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def make_model() -> onnx.ModelProto:
    """x -> MatMul(W*2) -> LayerNorm -> BipartiteMerge -> MatMul -> Softmax, plus dead code."""
    rng = np.random.default_rng(0)
    scale = np.float32(1 / np.sqrt(CHANNELS))
    initializers = [
        _tensor("w", rng.standard_normal((CHANNELS, CHANNELS)).astype(np.float32) * scale),
        _tensor("two", np.array(2.0, dtype=np.float32)),
        _tensor("gamma", rng.uniform(0.5, 1.5, CHANNELS).astype(np.float32)),
        _tensor("beta", rng.standard_normal(CHANNELS).astype(np.float32)),
        _tensor("head", rng.standard_normal((CHANNELS, CLASSES)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Mul", ["w", "two"], ["w2"], name="fold_me"),  # constant: folded
        helper.make_node("MatMul", ["x", "w2"], ["h"], name="proj"),
        helper.make_node("Relu", ["h"], ["unused"], name="dead"),  # feeds nothing: removed
        helper.make_node(
            "LayerNormalization", ["h", "gamma", "beta"], ["hn"], axis=-1, name="norm"
        ),
        helper.make_node(
            "BipartiteMerge",
            ["hn", "hn", "size"],
            ["merged", "size_out"],
            domain=DOMAIN,
            r=R,
            protected=PROTECTED,
            name="merge",
        ),
        helper.make_node("MatMul", ["merged", "head"], ["logits"], name="classify"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "passes_test",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", TOKENS, CHANNELS]),
            helper.make_tensor_value_info("size", TensorProto.FLOAT, ["B", TOKENS, 1]),
        ],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["B", "M", CLASSES]),
            helper.make_tensor_value_info("size_out", TensorProto.FLOAT, ["B", "M", 1]),
        ],
        initializer=initializers,
    )
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", OPSET),
            helper.make_opsetid(DOMAIN, domain_version()),
        ],
        functions=[BIPARTITE_MERGE.onnx_function(OPSET)],
        ir_version=10,
    )


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return make_model()


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "x": rng.standard_normal((2, TOKENS, CHANNELS)).astype(np.float32),
        "size": rng.uniform(1, 3, (2, TOKENS, 1)).astype(np.float32),
    }


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.fixture(scope="module")
def expected(model, feeds) -> dict[str, np.ndarray]:
    return run_ort(model, feeds)


def assert_outputs_close(got: dict, want: dict, atol: float) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_allclose(got[name], value, rtol=0, atol=atol, err_msg=name)


def save_copy(model: onnx.ModelProto, path: Path, **kwargs) -> None:
    """Save without touching ``model`` (saving with external data rewrites its tensors)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, path, **kwargs)


def nodes_of(model: onnx.ModelProto, domain: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == domain]


def attrs_of(node: onnx.NodeProto) -> dict:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


# --------------------------------------------------------------------------------------------
# Registry, pipeline, purity
# --------------------------------------------------------------------------------------------


def test_registry_has_every_pass_with_a_contract():
    passes = registered_passes()
    assert set(passes) == set(PASS_NAMES)
    for graph_pass in passes.values():
        assert graph_pass.requires and graph_pass.ensures
    assert get_pass("fold") is get_pass("cleanup")


def test_unknown_pass_lists_the_known_ones(model):
    with pytest.raises(PassError, match=r"unknown pass 'nope'; known passes: cleanup \(fold\)"):
        run_passes(model, ["cleanup", "nope"])


@pytest.mark.parametrize("name", PASS_NAMES)
def test_pass_output_is_valid_and_input_untouched(model, name):
    before = model.SerializeToString()
    out, [result] = run_passes(model, [name])
    onnx.checker.check_model(out, full_check=True)
    assert result.name == name and result.model is out
    assert model.SerializeToString() == before, "passes must not mutate their input"


def test_pipeline_of_several_passes(model, feeds, expected):
    out, results = run_passes(model, ["cleanup", "fp16", "to-plugins", "lint"])
    onnx.checker.check_model(out, full_check=True)
    assert [r.name for r in results] == ["cleanup", "fp16", "to-plugins", "lint"]
    assert [r.modified for r in results] == [True, True, True, False]
    assert results[2].counts["plugins"] == 1
    assert results[3].report is not None and results[3].report.totals()[PLUGIN] == 1
    got = run_reference(out, feeds)
    np.testing.assert_allclose(got["probs"], expected["probs"], rtol=0, atol=ATOL_FP16)
    np.testing.assert_array_equal(got["size_out"], expected["size_out"])


# --------------------------------------------------------------------------------------------
# inline, cleanup
# --------------------------------------------------------------------------------------------


def test_inline_equals_original(model, feeds, expected):
    out, [result] = run_passes(model, ["inline"])
    assert not nodes_of(out, DOMAIN) and not out.functions
    assert DOMAIN not in {o.domain for o in out.opset_import}
    assert result.counts == {"calls_inlined": 1, "functions_removed": 1}
    assert_outputs_close(run_ort(out, feeds), expected, ATOL_FP32)


def test_cleanup_after_inline_folds_the_body(model, feeds, expected):
    # The inlined body has Constant(value_floats=...) nodes, which graphsurgeon alone would
    # fold to float64; cleanup must keep them float32.
    out, [_, result] = run_passes(model, ["inline", "cleanup"])
    assert result.counts["constants_folded"] > 1
    assert_outputs_close(run_ort(out, feeds), expected, ATOL_FP32)


def test_inline_refuses_a_call_without_definition(model):
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.functions[:]
    with pytest.raises(PassError, match="no function definition"):
        run_passes(bare, ["inline"])


def test_cleanup_equals_original(model, feeds, expected):
    out, [result] = run_passes(model, ["fold"])
    names = {n.name for n in out.graph.node}
    assert "dead" not in names and "fold_me" not in names
    assert "w2" in {t.name for t in out.graph.initializer}
    assert result.counts["nodes_removed"] == 2 and result.counts["constants_folded"] == 1
    assert nodes_of(out, DOMAIN) and out.functions == model.functions  # our op is never folded
    assert any(v.name == "merged" for v in out.graph.value_info)  # shapes inferred
    assert_outputs_close(run_ort(out, feeds), expected, ATOL_FP32)


# --------------------------------------------------------------------------------------------
# to-plugins and the plugin references
# --------------------------------------------------------------------------------------------


def _inputs(rng, second: tuple[int, ...]) -> list[np.ndarray]:
    return [
        rng.standard_normal((2, TOKENS, CHANNELS)).astype(np.float32),
        rng.standard_normal((2, TOKENS, *second)).astype(np.float32),
        rng.uniform(1, 3, (2, TOKENS, 1)).astype(np.float32),
    ]


# Per op: (attributes, shape of the second input after [B, N]) for a one-node plugin round trip.
PLUGIN_CASES = {
    "BipartiteMerge": [({"r": 4, "protected": 1}, (6,)), ({"r": 8, "protected": 0}, (3,))],
    "TopKSelect": [
        ({"k": 5, "protected": 1, "fuse": 1}, ()),
        ({"k": TOKENS, "protected": 0, "fuse": 0}, ()),
    ],
    "DiverseSelect": [({"k": 5, "protected": 1}, (6,)), ({"k": 1, "protected": 0}, (3,))],
}


def call_model(op_name: str, arrays: list[np.ndarray], attrs: dict) -> onnx.ModelProto:
    """A model with one call of ``op_name``; inputs and outputs named as in the op's spec."""
    spec = get_op(op_name)
    node = helper.make_node(op_name, spec.inputs, spec.outputs, domain=DOMAIN, **attrs)
    graph = helper.make_graph(
        [node],
        op_name,
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", *a.shape[1:]])
            for name, a in zip(spec.inputs, arrays, strict=True)
        ],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "M", None])
            for n in spec.outputs
        ],
    )
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", OPSET),
            helper.make_opsetid(DOMAIN, domain_version()),
        ],
        functions=[spec.onnx_function(OPSET)],
        ir_version=10,
    )


def test_every_registered_op_has_a_reference_and_a_case():
    assert set(references()) == set(registered_ops()), (
        "every registered op needs a plugin reference in trimformer/graph_passes/reference.py"
    )
    assert set(PLUGIN_CASES) == set(registered_ops()), "add the op to PLUGIN_CASES"


@pytest.mark.parametrize(
    ("op_name", "attrs", "second"),
    [(name, attrs, second) for name, cases in PLUGIN_CASES.items() for attrs, second in cases],
)
def test_plugin_reference_equals_the_function(op_name, attrs, second):
    spec = get_op(op_name)
    arrays = _inputs(np.random.default_rng(len(attrs)), second)
    feeds = dict(zip(spec.inputs, arrays, strict=True))
    model = call_model(op_name, arrays, attrs)
    out, [result] = run_passes(model, ["to-plugins"])
    [plugin] = nodes_of(out, PLUGIN_DOMAIN)
    assert plugin.op_type == spec.trt_plugin_name and result.counts["plugins"] == 1
    assert_outputs_close(run_reference(out, feeds), run_ort(model, feeds), ATOL_FP32)


def test_to_plugins_graph(model, feeds, expected):
    out, [result] = run_passes(model, ["to-plugins"])
    [plugin] = nodes_of(out, PLUGIN_DOMAIN)
    assert plugin.op_type == BIPARTITE_MERGE.trt_plugin_name
    assert attrs_of(plugin) == {
        "plugin_version": str(BIPARTITE_MERGE.version),
        "plugin_namespace": "trimformer",
        "r": R,
        "protected": PROTECTED,
    }
    assert list(plugin.input) == ["hn", "hn", "size"] and plugin.name == "merge"
    assert not nodes_of(out, DOMAIN) and not out.functions
    domains = {o.domain for o in out.opset_import}
    assert PLUGIN_DOMAIN in domains and DOMAIN not in domains
    assert result.counts == {"plugins": 1, "functions_removed": 1}
    # Semantics: the plugin graph, run through the references, equals the original in ORT.
    assert_outputs_close(run_reference(out, feeds), expected, ATOL_FP32)


def test_to_plugins_inside_a_local_function(feeds):
    body = [
        helper.make_node(
            "BipartiteMerge", ["a", "a", "s"], ["y", "ys"], domain=DOMAIN, r=3, protected=1
        ),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    block = helper.make_function(
        "custom",
        "Block",
        ["a", "s"],
        ["z", "ys"],
        body,
        [helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, domain_version())],
    )
    graph = helper.make_graph(
        [helper.make_node("Block", ["x", "size"], ["out", "size_out"], domain="custom")],
        "with_function",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", TOKENS, CHANNELS]),
            helper.make_tensor_value_info("size", TensorProto.FLOAT, ["B", TOKENS, 1]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "M", CHANNELS]),
            helper.make_tensor_value_info("size_out", TensorProto.FLOAT, ["B", "M", 1]),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", OPSET),
            helper.make_opsetid(DOMAIN, domain_version()),
            helper.make_opsetid("custom", 1),
        ],
        functions=[BIPARTITE_MERGE.onnx_function(OPSET), block],
        ir_version=10,
    )
    want = run_ort(model, feeds)
    out, _ = run_passes(model, ["to-plugins", "lint"])
    [function] = out.functions
    assert [n.domain for n in function.node] == [PLUGIN_DOMAIN, ""]
    assert PLUGIN_DOMAIN in {o.domain for o in function.opset_import}
    assert_outputs_close(run_reference(out, feeds), want, ATOL_FP32)
    inlined, _ = run_passes(model, ["inline"])
    assert_outputs_close(run_ort(inlined, feeds), want, ATOL_FP32)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda n: setattr(n, "op_type", "NoSuchOp"), "not a registered op"),
        (lambda n: n.attribute[1].__setattr__("i", -1), "r=-1 is below its minimum"),
        (lambda n: n.attribute[1].__setattr__("i", 9), "r=9 exceeds the maximum 8"),
        (lambda n: n.attribute.append(helper.make_attribute("ratio", 0.5)), "unknown attr"),
    ],
)
def test_to_plugins_refuses(model, edit, match):
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    [node] = nodes_of(bad, DOMAIN)
    assert [a.name for a in node.attribute] == ["protected", "r"]
    edit(node)
    with pytest.raises(PassError, match=match):
        run_passes(bad, ["to-plugins"])


def test_reference_runner_fails_loudly_on_a_missing_op(model, feeds):
    out, _ = run_passes(model, ["to-plugins"])
    nodes_of(out, PLUGIN_DOMAIN)[0].op_type = "NoSuchPlugin"
    with pytest.raises(MissingReferenceError, match="NoSuchPlugin match no registered op"):
        run_reference(out, feeds)


def test_reference_runner_refuses_an_unknown_plugin_version(model, feeds):
    out, _ = run_passes(model, ["to-plugins"])
    [version] = [a for a in nodes_of(out, PLUGIN_DOMAIN)[0].attribute if a.name == "plugin_version"]
    version.s = b"7"
    with pytest.raises(MissingReferenceError, match="version '7' has no reference"):
        run_reference(out, feeds)


def test_reference_runner_runs_call_graphs_too(model, feeds, expected):
    assert_outputs_close(run_reference(model, feeds), expected, ATOL_FP32)


# --------------------------------------------------------------------------------------------
# lint
# --------------------------------------------------------------------------------------------


def test_lint_report_says_what_runs_where(model):
    report = lint_model(model)
    assert report.ok
    assert report.totals()[ONNX] == 6 and report.totals()[FUNCTION] == 1
    rows = {(r["place"], r["op_type"]): r["count"] for r in report.rows()}
    assert rows[ONNX, "MatMul"] == 2 and rows[FUNCTION, "BipartiteMerge"] == 1
    plugins, _ = run_passes(model, ["to-plugins"])
    assert lint_model(plugins).totals()[PLUGIN] == 1


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        (None, None, "plugin NoSuchOp is not a registered op"),
        ("r", -1, "r=-1 is below its minimum"),
        ("r", 9, "r=9 exceeds the maximum 8"),
        ("plugin_version", "1", "plugin_version '1', but BipartiteMerge is version 2"),
        ("plugin_namespace", "other", "plugin_namespace 'other'"),
        ("input", None, "2 inputs and 2 outputs, but BipartiteMerge takes 3 (x, metric, size)"),
    ],
)
def test_lint_flags_bad_plugin_nodes(model, attr, value, match):
    out, _ = run_passes(model, ["to-plugins"])
    [plugin] = nodes_of(out, PLUGIN_DOMAIN)
    if attr is None:
        plugin.op_type = "NoSuchOp"
    elif attr == "input":
        del plugin.input[-1]
    else:
        [target] = [a for a in plugin.attribute if a.name == attr]
        target.CopyFrom(helper.make_attribute(attr, value))
    [problem] = lint_model(out).problems
    assert "node 'merge'" in problem and match in problem
    with pytest.raises(PassError, match="lint: 1 problem"):
        run_passes(out, ["lint"])


def test_lint_flags_bad_call_nodes(model):
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    nodes_of(bad, DOMAIN)[0].attribute[0].i = -2  # protected
    del bad.functions[:]
    [problem] = lint_model(bad).problems
    assert "no function definition" in problem
    bad.functions.append(BIPARTITE_MERGE.onnx_function(OPSET))
    [problem] = lint_model(bad).problems
    assert "protected=-2 is below its minimum" in problem


# --------------------------------------------------------------------------------------------
# fp16
# --------------------------------------------------------------------------------------------


def test_fp16_runs_in_ort_within_tolerance(model, feeds, expected):
    out, [result] = run_passes(model, ["fp16"])
    types = {t.name: t.data_type for t in out.graph.initializer}
    assert types["w"] == TensorProto.FLOAT16 and types["head"] == TensorProto.FLOAT16
    assert types["gamma"] == TensorProto.FLOAT  # used only by LayerNormalization: stays FP32
    assert result.counts["fp32_nodes"] == 3 and result.counts["cast_pairs_bypassed"] >= 1
    # The merge reads LayerNorm's FP32 output directly, not a round trip through FP16.
    producers = {o: n for n in out.graph.node for o in n.output}
    [merge] = nodes_of(out, DOMAIN)
    assert [producers[name].op_type for name in merge.input[:2]] == ["LayerNormalization"] * 2
    assert merge.input[2] == "size"  # the FP32 graph input, not Cast(Cast(size))
    got = run_ort(out, feeds)
    assert {k: v.dtype for k, v in got.items()} == {k: np.float32 for k in expected}
    error = np.abs(got["probs"] - expected["probs"]).max()
    assert error <= ATOL_FP16, f"fp16 max abs error {error:.2e} on probabilities"
    np.testing.assert_array_equal(got["size_out"], expected["size_out"])  # same tokens merged


def test_fp16_with_value_info_for_initializers(model, feeds, expected):
    # torch's exporter writes value_info for initializers, also for those kept FP32.
    typed = onnx.ModelProto()
    typed.CopyFrom(model)
    typed.graph.value_info.extend(
        helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in model.graph.initializer
    )
    out, _ = run_passes(typed, ["fp16"])
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_allclose(run_ort(out, feeds)["probs"], expected["probs"], atol=ATOL_FP16)


def test_fp16_keeps_plugins_in_fp32(model, feeds, expected):
    plugins, _ = run_passes(model, ["to-plugins"])
    out, _ = run_passes(plugins, ["fp16"])
    [plugin] = nodes_of(out, PLUGIN_DOMAIN)
    producers = {o: n for n in out.graph.node for o in n.output}
    consumers = [n for n in out.graph.node if plugin.output[0] in n.input]
    assert producers[plugin.input[0]].op_type == "LayerNormalization"
    assert [n.op_type for n in consumers] == ["Cast"]  # FP32 plugin output cast to FP16
    got = run_reference(out, feeds)
    np.testing.assert_allclose(got["probs"], expected["probs"], rtol=0, atol=ATOL_FP16)


def test_fp16_refuses_what_it_cannot_convert(model):
    inlined, _ = run_passes(model, ["inline"])
    with pytest.raises(PassError, match=r"BipartiteMerge were inlined.*run fp16 before inline"):
        run_passes(inlined, ["fp16"])
    with pytest.raises(PassError, match="already has FP16 weights"):
        run_passes(model, ["fp16", "fp16"])


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_runs_passes_on_a_model_with_external_data(model, tmp_path: Path):
    source = tmp_path / "bundle" / "model.onnx"
    source.parent.mkdir()
    save_copy(model, source, save_as_external_data=True, location="weights.bin", size_threshold=0)
    target = tmp_path / "out" / "plugins.onnx"
    result = CliRunner().invoke(
        passes_command,
        [
            str(source),
            "-o",
            str(target),
            "--pass",
            "cleanup",
            "--pass",
            "to-plugins",
            "--pass",
            "lint",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "to-plugins" in result.output and "what runs where" in result.output
    assert sorted(p.name for p in target.parent.iterdir()) == ["plugins.onnx"]  # self-contained
    written = onnx.load(target)
    onnx.checker.check_model(written, full_check=True)
    assert len(nodes_of(written, PLUGIN_DOMAIN)) == 1


def test_cli_unknown_pass_is_a_one_line_usage_error(model, tmp_path: Path):
    source = tmp_path / "model.onnx"
    save_copy(model, source)
    target = tmp_path / "out.onnx"
    result = CliRunner().invoke(passes_command, [str(source), "-o", str(target), "--pass", "x"])
    assert isinstance(result.exception, UsageError)
    assert result.exception.exit_code == 2
    message = str(result.exception)
    assert "\n" not in message and "unknown pass 'x'" in message and "to-plugins" in message
    assert not target.exists()


def test_main_cli_exits_2_with_one_line(model, tmp_path: Path, monkeypatch, capsys):
    from trimformer import cli

    monkeypatch.setitem(cli.cli.commands, "passes", passes_command)  # as cli.add_command does
    source = tmp_path / "model.onnx"
    save_copy(model, source)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["passes", str(source), "-o", str(tmp_path / "out.onnx"), "--pass", "nope"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown pass 'nope'" in lines[0]


def _invalid_model() -> bytes:
    """A model that loads but fails onnx.checker: a node of a domain it imports no opset for."""
    node = helper.make_node("Relu", ["x"], ["y"], domain="foo")
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "g", [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])]
    )
    return helper.make_model(graph).SerializeToString()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "is not a file"),
        (b"junk", "cannot load"),
        (_invalid_model(), "is not a valid ONNX model (No opset import for domain 'foo')"),
    ],
)
def test_cli_refuses_an_unreadable_input(tmp_path: Path, content, match):
    source = tmp_path / "in.onnx"
    if content is not None:
        source.write_bytes(content)
    result = CliRunner().invoke(
        passes_command, [str(source), "-o", str(tmp_path / "o.onnx"), "--pass", "lint"]
    )
    assert isinstance(result.exception, UsageError) and match in str(result.exception)
    assert "\n" not in str(result.exception)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["in.onnx"] if content else [])


def test_save_model_with_external_data_over_the_limit(model, tmp_path: Path, monkeypatch):
    from trimformer import cli_passes as cli
    from trimformer.graph_passes import model_io

    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 0)  # as if the model were over 2 GiB
    big = onnx.ModelProto()
    big.CopyFrom(model)
    big.graph.initializer.append(_tensor("big", np.arange(4096, dtype=np.float32)))
    want = {t.name: numpy_helper.to_array(t).copy() for t in big.graph.initializer}
    cli.save_model(big, tmp_path / "big.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    loaded = onnx.load(tmp_path / "big.onnx")
    got = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value)
    monkeypatch.undo()  # the same path, now self-contained: the old data file goes
    cli.save_model(loaded, tmp_path / "big.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"]


def test_passes_run_past_the_protobuf_limit_through_files(model, feeds, monkeypatch):
    from trimformer.graph_passes import model_io

    names = ["cleanup", "fp16", "to-plugins", "lint"]
    want, _ = run_passes(model, names)
    big = onnx.ModelProto()
    big.CopyFrom(model)
    big.graph.initializer.append(_tensor("big", np.arange(4096, dtype=np.float32)))
    before = big.SerializeToString()
    # as over 2 GiB: protobuf refuses to serialise the model for onnx's in-memory calls
    check, infer = onnx.checker.check_model, onnx.shape_inference.infer_shapes

    def refuse(call):
        def refused(model, *args, **kwargs):
            if isinstance(model, onnx.ModelProto):
                raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")
            return call(model, *args, **kwargs)

        return refused

    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 0)
    monkeypatch.setattr(onnx.checker, "check_model", refuse(check))
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuse(infer))
    got, _ = run_passes(big, names)
    assert big.SerializeToString() == before  # the weights went to a file and came back
    assert [n.op_type for n in got.graph.node] == [n.op_type for n in want.graph.node]
    with pytest.raises(PassError, match="over protobuf's 2 GiB, which onnx's inliner cannot"):
        run_passes(big, ["inline"])
    monkeypatch.undo()
    assert_outputs_close(run_reference(got, feeds), run_reference(want, feeds), 0)


def test_saved_onnx_gives_back_weights_a_cut_short_save_had_not_moved(model, monkeypatch):
    from onnx import external_data_helper

    from trimformer.graph_passes.model_io import saved_onnx

    big = onnx.ModelProto()
    big.CopyFrom(model)
    for name in ("a", "b"):
        big.graph.initializer.append(_tensor(name, np.arange(4096, dtype=np.float32) + ord(name)))
    before = big.SerializeToString()
    save = external_data_helper.save_external_data
    written: list[str] = []

    def disk_full_on_the_second(tensor, base_path):
        if written:
            raise OSError(28, "No space left on device")
        written.append(tensor.name)
        save(tensor, base_path)

    monkeypatch.setattr(external_data_helper, "save_external_data", disk_full_on_the_second)
    with pytest.raises(OSError, match="No space left"), saved_onnx(big):
        pytest.fail("the save fails before the body runs")
    assert written and big.SerializeToString() == before  # moved ones read back, the rest kept


# --------------------------------------------------------------------------------------------
# A real exported bundle
# --------------------------------------------------------------------------------------------


def check_passes_on_exported(model: onnx.ModelProto) -> None:
    """Every pass on a real export: ORT equality (fp16 within tolerance), plugins via references."""
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    feeds = {model.graph.input[0].name: np.random.default_rng(0).standard_normal(shape, np.float32)}
    want = run_ort(model, feeds)
    for names in (["inline"], ["cleanup"], ["fp16"], ["cleanup", "fp16"]):
        out, _ = run_passes(model, names)
        atol = ATOL_FP16 if "fp16" in names else 1e-4
        assert_outputs_close(run_ort(out, feeds), want, atol)
    out, results = run_passes(model, ["cleanup", "to-plugins", "lint"])
    calls = len(nodes_of(model, DOMAIN))
    assert calls and results[1].counts["plugins"] == calls
    assert results[2].report.totals()[PLUGIN] == calls
    assert_outputs_close(run_reference(out, feeds), want, 1e-4)


@pytest.mark.slow
def test_passes_on_the_session_bundle(tome_bundle: Path, tmp_path: Path):
    # DeiT-Ti exported with ToMe (conftest): its weights live in weights.bin beside model.onnx.
    check_passes_on_exported(onnx.load(tome_bundle / "model.onnx"))
    target = tmp_path / "plugins.onnx"
    result = CliRunner().invoke(
        passes_command,
        [
            str(tome_bundle / "model.onnx"),
            "-o",
            str(target),
            "--pass",
            "fp16",
            "--pass",
            "to-plugins",
        ],
    )
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(target), full_check=True)

"""Agreement of every registered op's faces: torch op == ONNX function (onnxruntime) == naive.

The naive references below are written independently of trimformer, in plain Python loops over
numpy arrays, straight from each op's documented semantics. Every registered op must have one
(see ``test_every_registered_op_has_a_naive_reference``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from tome_reference import tome_merge

from trimformer.ops import (
    MAX_OPSET,
    MIN_OPSET,
    OpValidationError,
    domain_version,
    get_op,
    registered_ops,
)

ATOL = 1e-5
SIZE_RTOL = 1e-6  # a merged size is an fp32 sum of up to ~100 positive terms: relative error
OPSET = 20


# --------------------------------------------------------------------------------------------
# Naive references
# --------------------------------------------------------------------------------------------

# BipartiteMerge's is ToMe's own rule, written from it in tome_reference.py (tome_merge).


def naive_topk_select(
    x: np.ndarray, scores: np.ndarray, size: np.ndarray, k: int, protected: int, fuse: int
) -> tuple[np.ndarray, np.ndarray]:
    """TopKSelect, one batch item and one token at a time, in float64."""
    batch, n_tokens, channels = x.shape
    x_rows, s_rows = [], []
    for b in range(batch):
        # Rank the unprotected tokens: highest score first, equal scores by the lower index.
        ranked = sorted(range(protected, n_tokens), key=lambda t, b=b: (-float(scores[b, t]), t))
        kept, dropped = sorted(ranked[:k]), ranked[k:]
        out_x = [[float(v) for v in x[b, t]] for t in [*range(protected), *kept]]
        out_s = [[float(size[b, t, 0])] for t in [*range(protected), *kept]]
        if fuse:
            fused = [0.0] * channels
            fused_size = 0.0
            for t in dropped:
                for c in range(channels):
                    fused[c] += float(scores[b, t]) * float(x[b, t, c])
                fused_size += float(size[b, t, 0])
            out_x.append(fused)
            out_s.append([fused_size])
        x_rows.append(out_x)
        s_rows.append(out_s)
    n_out = protected + k + fuse
    x_out = np.array(x_rows, dtype=np.float64).reshape(batch, n_out, channels)
    s_out = np.array(s_rows, dtype=np.float64).reshape(batch, n_out, 1)
    return x_out, s_out


def naive_diverse_select(
    x: np.ndarray, features: np.ndarray, size: np.ndarray, k: int, protected: int
) -> tuple[np.ndarray, np.ndarray]:
    """DiverseSelect, one batch item and one token at a time, in float64, on D = 1 - cos."""
    batch, n_tokens, channels = x.shape
    x_rows, s_rows = [], []
    for b in range(batch):
        candidates = list(range(protected, n_tokens))
        units = {}
        for t in candidates:
            v = [float(value) for value in features[b, t]]
            norm = max(math.sqrt(sum(value * value for value in v)), 1e-12)
            units[t] = [value / norm for value in v]

        distance = {
            (t, u): 1.0 - sum(p * q for p, q in zip(units[t], units[u], strict=True))
            for t in candidates
            for u in candidates
        }

        # First pick: the token whose nearest other token is farthest (first maximum wins).
        first, best = -1, -math.inf
        for t in candidates:
            nearest = min((distance[t, u] for u in candidates if u != t), default=math.inf)
            if first < 0 or nearest > best:
                first, best = t, nearest
        selected = [first]
        # Then the token farthest from the selected set, k - 1 times (first maximum wins).
        while len(selected) < k:
            pick, best = -1, -math.inf
            for t in candidates:
                if t in selected:
                    continue
                gap = min(distance[s, t] for s in selected)
                if pick < 0 or gap > best:
                    pick, best = t, gap
            selected.append(pick)
        kept = [*range(protected), *sorted(selected)]
        x_rows.append([[float(v) for v in x[b, t]] for t in kept])
        s_rows.append([[float(size[b, t, 0])] for t in kept])
    n_out = protected + k
    x_out = np.array(x_rows, dtype=np.float64).reshape(batch, n_out, channels)
    s_out = np.array(s_rows, dtype=np.float64).reshape(batch, n_out, 1)
    return x_out, s_out


NAIVE_REFERENCES = {
    "BipartiteMerge": tome_merge,
    "TopKSelect": naive_topk_select,
    "DiverseSelect": naive_diverse_select,
}

SPEC = get_op("BipartiteMerge")


def test_every_registered_op_has_a_naive_reference():
    assert set(registered_ops()) == set(NAIVE_REFERENCES), (
        "every registered op needs a naive reference and agreement tests in this module"
    )


# --------------------------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------------------------


def torch_face(x, metric, size, r, protected):
    outs = torch.ops.trimformer.bipartite_merge(
        torch.from_numpy(x), torch.from_numpy(metric), torch.from_numpy(size), r, protected
    )
    return tuple(t.numpy() for t in outs)


def op_model(name: str, attrs: dict, input_dims: dict[str, list], opset: int = OPSET):
    """A one-node model calling op ``name``'s function; outputs are [B,M,C] and [B,M,1]."""
    spec = get_op(name)
    node = helper.make_node(
        spec.name, list(spec.inputs), list(spec.outputs), domain=spec.domain, **attrs
    )
    x_out, size_out = spec.outputs
    graph = helper.make_graph(
        [node],
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, input_dims[n]) for n in spec.inputs],
        [
            helper.make_tensor_value_info(
                x_out, TensorProto.FLOAT, ["B", "M", input_dims["x"][-1]]
            ),
            helper.make_tensor_value_info(size_out, TensorProto.FLOAT, ["B", "M", 1]),
        ],
    )
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", opset),
            helper.make_opsetid("trimformer", domain_version()),
        ],
        functions=[spec.onnx_function(opset)],
        ir_version=10,
    )


@functools.cache
def session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_function(name: str, attrs: dict, inputs: dict[str, np.ndarray], opset: int = OPSET):
    """Run op ``name``'s ONNX function in onnxruntime on inputs shaped [B,N,...]."""
    dims = {n: ["B", "N", *a.shape[2:]] for n, a in inputs.items()}
    model = op_model(name, attrs, dims, opset)
    return tuple(session(model.SerializeToString()).run(None, inputs))


def merge_model(r: int, protected: int, channels: int, metric_channels: int, opset: int = OPSET):
    dims = {"x": ["B", "N", channels], "metric": ["B", "N", metric_channels], "size": ["B", "N", 1]}
    return op_model("BipartiteMerge", {"r": r, "protected": protected}, dims, opset)


def onnx_face(x, metric, size, r, protected, opset: int = OPSET):
    inputs = {"x": x, "metric": metric, "size": size}
    return run_function("BipartiteMerge", {"r": r, "protected": protected}, inputs, opset)


@functools.cache
def openvino_core():
    """An OpenVINO core with trimformer's fused ops (built into the user cache on first use), or
    None where openvino is not installed (the fused face is then not compared)."""
    try:
        import openvino
    except ImportError:
        return None
    from trimformer.runtime.openvino_ext import add_extensions

    core = openvino.Core()
    add_extensions(core, "fused")
    return core


@functools.cache
def openvino_compiled(name: str, attrs: tuple, dims: tuple):
    """The one-node model of op ``name`` read by OpenVINO's ONNX frontend (the node mapped to
    the fused op) and compiled for its CPU at fp32; cached per attributes and input dims."""
    import openvino

    proto = op_model(name, dict(attrs), {n: list(d) for n, d in dims}).SerializeToString()
    model = openvino_core().read_model(proto, openvino.Tensor(np.zeros(0, np.uint8)))
    assert [op.get_type_name() for op in model.get_ordered_ops()].count(name) == 1
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    return openvino_core().compile_model(model, "CPU", config)


def openvino_face(name: str, attrs: dict, inputs: dict[str, np.ndarray]):
    """Op ``name``'s fused OpenVINO face on inputs shaped [B,N,...]."""
    dims = tuple((n, ("B", "N", *a.shape[2:])) for n, a in inputs.items())
    compiled = openvino_compiled(name, tuple(sorted(attrs.items())), dims)
    results = compiled.create_infer_request().infer(inputs)
    return tuple(results[port] for port in compiled.outputs)


def assert_faces_agree(x, metric, size, r, protected):
    """torch == ONNX (ORT) == OpenVINO's fused op == naive, and the output count is the spec's
    static count."""
    n_out = SPEC.output_tokens(x.shape[1], {"r": r, "protected": protected})
    want_x, want_s = tome_merge(x, metric, size, r, protected)
    faces = {
        "torch": torch_face(x, metric, size, r, protected),
        "onnx": onnx_face(x, metric, size, r, protected),
    }
    if openvino_core() is not None:
        inputs = {"x": x, "metric": metric, "size": size}
        faces["openvino"] = openvino_face(
            "BipartiteMerge", {"r": r, "protected": protected}, inputs
        )
    for face, (got_x, got_s) in faces.items():
        assert got_x.shape == (x.shape[0], n_out, x.shape[2]), face
        assert got_s.shape == (x.shape[0], n_out, 1), face
        np.testing.assert_allclose(got_x, want_x, rtol=0, atol=ATOL, err_msg=f"{face} x_out")
        np.testing.assert_allclose(
            got_s, want_s, rtol=SIZE_RTOL, atol=ATOL, err_msg=f"{face} size_out"
        )
    return want_x, want_s


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def make_inputs(rng, batch, n_tokens, channels, metric_channels):
    x = rng.standard_normal((batch, n_tokens, channels)).astype(np.float32)
    metric = rng.standard_normal((batch, n_tokens, metric_channels)).astype(np.float32)
    size = rng.uniform(0.5, 4.0, (batch, n_tokens, 1)).astype(np.float32)
    return x, metric, size


def one_hot_metric(rng, batch, n_tokens, metric_channels, signed=False, zeros=False):
    """Rows ±2^k·e_i (or 0): normalisation is exact, so scores are exactly -1, 0 or 1."""
    metric = np.zeros((batch, n_tokens, metric_channels), dtype=np.float32)
    for b in range(batch):
        for t in range(n_tokens):
            if zeros and rng.random() < 0.2:
                continue
            sign = rng.choice([-1.0, 1.0]) if signed else 1.0
            metric[b, t, rng.integers(metric_channels)] = sign * 2.0 ** int(rng.integers(-3, 4))
    return metric


# --------------------------------------------------------------------------------------------
# Property test: all three faces agree
# --------------------------------------------------------------------------------------------


@st.composite
def merge_cases(draw):
    batch = draw(st.integers(1, 3))
    n_tokens = draw(st.integers(2, 40))
    channels = draw(st.integers(1, 8))
    metric_channels = draw(st.integers(1, 8))
    protected = draw(st.integers(0, min(3, n_tokens - 2)))
    r = draw(st.integers(0, (n_tokens - protected) // 2))
    metric_kind = draw(st.sampled_from(["normal", "normal", "one_hot", "signed_one_hot"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return batch, n_tokens, channels, metric_channels, protected, r, metric_kind, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(merge_cases())
def test_bipartite_merge_faces_agree(case):
    batch, n_tokens, channels, metric_channels, protected, r, metric_kind, seed = case
    rng = np.random.default_rng(seed)
    x, metric, size = make_inputs(rng, batch, n_tokens, channels, metric_channels)
    if metric_kind != "normal":
        signed = metric_kind == "signed_one_hot"
        metric = one_hot_metric(rng, batch, n_tokens, metric_channels, signed=signed, zeros=True)
    assert_faces_agree(x, metric, size, r, protected)


# --------------------------------------------------------------------------------------------
# Explicit edge cases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_tokens", "protected"), [(2, 0), (4, 2), (5, 2), (17, 1)])
def test_r_zero_groups_a_before_b(n_tokens, protected):
    # With nothing merged the op only regroups: protected, then the unprotected tokens at even
    # indices (A), then those at odd indices (B).
    rng = np.random.default_rng(n_tokens * 10 + protected)
    x, metric, size = make_inputs(rng, 2, n_tokens, 3, 4)
    unprotected = range(protected, n_tokens)
    layout = [
        *range(protected),
        *(t for t in unprotected if t % 2 == 0),
        *(t for t in unprotected if t % 2 == 1),
    ]
    want_x, want_s = assert_faces_agree(x, metric, size, 0, protected)
    np.testing.assert_allclose(want_x, x[:, layout], atol=1e-6)
    np.testing.assert_array_equal(want_s, size[:, layout])


@pytest.mark.parametrize(("n_tokens", "protected"), [(1, 0), (2, 1), (3, 2), (4, 3), (2, 3)])
def test_fewer_than_two_unprotected_tokens_is_rejected(n_tokens, protected):
    with pytest.raises(OpValidationError, match="at least 2 unprotected"):
        SPEC.validate({"r": 0, "protected": protected}, n_tokens)


@pytest.mark.parametrize(("n_tokens", "protected"), [(2, 0), (3, 0), (10, 1), (11, 1), (12, 3)])
def test_r_maximum(n_tokens, protected):
    r = (n_tokens - protected) // 2
    rng = np.random.default_rng(100 + n_tokens)
    x, metric, size = make_inputs(rng, 2, n_tokens, 5, 3)
    assert_faces_agree(x, metric, size, r, protected)
    # With every A token merged the size mass of the unprotected tokens is conserved.
    _, got_s = torch_face(x, metric, size, r, protected)
    np.testing.assert_allclose(got_s.sum(axis=1), size.sum(axis=1), rtol=1e-6)
    assert got_s.shape[1] == n_tokens - r


@pytest.mark.parametrize("protected", [0, 1, 2, 3])
@pytest.mark.parametrize("n_tokens", [9, 10, 13, 14])
def test_odd_and_even_unprotected_counts(n_tokens, protected):
    rng = np.random.default_rng(n_tokens * 7 + protected)
    x, metric, size = make_inputs(rng, 2, n_tokens, 4, 4)
    for r in range((n_tokens - protected) // 2 + 1):
        assert_faces_agree(x, metric, size, r, protected)


def test_batch_items_merge_different_tokens():
    # One CLS token (A[0], masked), then A = tokens 2, 4, 6 and B = tokens 1, 3, 5, as ToMe
    # splits them. Item 0: token 2 matches token 3 exactly; item 1: token 6 matches token 5
    # exactly. Every other best score is lower.
    n_tokens, protected = 7, 1
    metric = np.zeros((2, n_tokens, 4), dtype=np.float32)
    metric[0] = [
        [1, 1, 1, 1],
        [1, 0, 0, 0],
        [0, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
        [0, 0, 1, 0.5],
    ]
    metric[1] = [
        [1, 1, 1, 1],
        [1, 0, 0, 0],
        [0, 0.5, 1, 0],
        [0, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 0],
        [0, 0, 1, 0],
    ]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, n_tokens, 3)).astype(np.float32)
    size = np.array([1, 1, 2, 1, 3, 1, 2], dtype=np.float32)[None, :, None].repeat(2, axis=0)
    want_x, want_s = assert_faces_agree(x, metric, size, 1, protected)
    # Layout: CLS, unmerged A tokens, then B tokens 1, 3, 5.
    np.testing.assert_allclose(want_s[0, :, 0], [1, 3, 2, 1, 3, 1])  # 0, 4, 6, 1, 3+2, 5
    np.testing.assert_allclose(want_s[1, :, 0], [1, 2, 3, 1, 1, 3])  # 0, 2, 4, 1, 3, 5+6
    np.testing.assert_allclose(want_x[0, 4], (x[0, 2] * 2 + x[0, 3] * 1) / 3, atol=ATOL)
    np.testing.assert_allclose(want_x[1, 5], (x[1, 5] * 1 + x[1, 6] * 2) / 3, atol=ATOL)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("n_tokens", "protected"), [(8, 0), (13, 1), (24, 2), (31, 3)])
def test_exact_score_ties(seed, n_tokens, protected):
    rng = np.random.default_rng(seed)
    metric_channels = int(rng.integers(1, 4))  # few directions: many exactly equal scores
    x, _, size = make_inputs(rng, 3, n_tokens, 4, metric_channels)
    metric = one_hot_metric(rng, 3, n_tokens, metric_channels, signed=seed % 2 == 1)
    for r in sorted({1, 2, (n_tokens - protected) // 4, (n_tokens - protected) // 2}):
        assert_faces_agree(x, metric, size, r, protected)


@pytest.mark.parametrize("signed", [False, True])
def test_exact_score_ties_vit_sized(signed):
    # ViT-B/16 at 224: 197 tokens with a CLS token; ties among ~98 A tokens in the ranking.
    n_tokens, protected = 197, 1
    rng = np.random.default_rng(197 + signed)
    x, _, size = make_inputs(rng, 2, n_tokens, 4, 3)
    metric = one_hot_metric(rng, 2, n_tokens, 3, signed=signed, zeros=True)
    for r in (1, 13, 60, 98):
        assert_faces_agree(x, metric, size, r, protected)


def test_ties_break_to_first_maximum_and_lower_a_index():
    # Every metric row is e_0: all scores are exactly 1. Each A token's match is the first B
    # token, and the first r A tokens (lowest index) merge.
    n_tokens, r = 8, 2
    metric = np.zeros((1, n_tokens, 2), dtype=np.float32)
    metric[..., 0] = 1
    x = np.arange(n_tokens, dtype=np.float32).reshape(1, n_tokens, 1)
    size = np.ones((1, n_tokens, 1), dtype=np.float32)
    want_x, want_s = assert_faces_agree(x, metric, size, r, 0)
    # A = tokens 0, 2, 4, 6; B = 1, 3, 5, 7; tokens 0 and 2 merge into 1.
    np.testing.assert_allclose(want_x[0, :, 0], [4.0, 6, 1, 3, 5, 7])
    np.testing.assert_allclose(want_s[0, :, 0], [1.0, 1, 3, 1, 1, 1])


@pytest.mark.parametrize("identical_x", [False, True])
@pytest.mark.parametrize("row", [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [-2.0, 0.0, 0.0, 0.0]])
def test_all_equal_tokens(row, identical_x):
    n_tokens, protected = 12, 1
    rng = np.random.default_rng(3)
    x, _, size = make_inputs(rng, 2, n_tokens, 3, 4)
    if identical_x:
        x[:] = x[:, :1]
    metric = np.broadcast_to(np.array(row, dtype=np.float32), (2, n_tokens, 4)).copy()
    for r in range((n_tokens - protected) // 2 + 1):
        want_x, _ = assert_faces_agree(x, metric, size, r, protected)
        if identical_x:
            np.testing.assert_allclose(want_x, x[:, : n_tokens - r], atol=ATOL)


def test_all_equal_random_metric_rows():
    # Identical rows whose normalisation is not exact: every score is the same float, still a tie.
    n_tokens = 15
    rng = np.random.default_rng(11)
    x, metric, size = make_inputs(rng, 2, n_tokens, 3, 5)
    metric[:] = metric[:, :1]
    for r in range(n_tokens // 2 + 1):
        assert_faces_agree(x, metric, size, r, 0)


# --------------------------------------------------------------------------------------------
# ONNX model validity and opset retargeting
# --------------------------------------------------------------------------------------------


def test_function_has_no_more_nodes_than_version_1():
    # At batch 1 on ONNX Runtime CPU a merge costs mostly per-node overhead: 53 was v1's count.
    assert len(SPEC.onnx_function(OPSET).node) <= 53


@pytest.mark.parametrize("opset", [MIN_OPSET, OPSET, MAX_OPSET])
def test_model_passes_full_check(opset):
    onnx.checker.check_model(merge_model(3, 1, 4, 2, opset), full_check=True)


@pytest.mark.parametrize("opset", [18, 23])
def test_function_retargets(opset):
    rng = np.random.default_rng(opset)
    x, metric, size = make_inputs(rng, 2, 21, 4, 3)
    fn = SPEC.onnx_function(opset)
    assert [(e.domain, e.version) for e in fn.opset_import if e.domain in ("", "ai.onnx")] == [
        ("", opset)
    ]
    onnx.checker.check_model(merge_model(5, 1, 4, 3, opset), full_check=True)
    got = onnx_face(x, metric, size, 5, 1, opset=opset)
    base = onnx_face(x, metric, size, 5, 1, opset=OPSET)
    want = tome_merge(x, metric, size, 5, 1)
    for g, b, w in zip(got, base, want, strict=True):
        np.testing.assert_allclose(g, b, rtol=0, atol=ATOL)
        np.testing.assert_allclose(g, w, rtol=0, atol=ATOL)


@pytest.mark.parametrize("opset", [17, 24])
def test_function_rejects_unsupported_opset(opset):
    with pytest.raises(OpValidationError):
        SPEC.onnx_function(opset)


# --------------------------------------------------------------------------------------------
# Spec validation
# --------------------------------------------------------------------------------------------


def test_validate_accepts_valid_attributes():
    SPEC.validate({"r": 0, "protected": 0})
    SPEC.validate({"r": 98, "protected": 1}, n_tokens=197)
    SPEC.validate({"r": 0, "protected": 3}, n_tokens=5)


@pytest.mark.parametrize(
    ("attrs", "n_tokens"),
    [
        ({"r": -1, "protected": 1}, None),
        ({"r": 1, "protected": -1}, None),
        ({"r": 99, "protected": 1}, 197),  # max r is (197 - 1) // 2 = 98
        ({"r": 3, "protected": 0}, 5),
        ({"r": 0, "protected": 6}, 5),
        ({"r": 1, "protected": 0, "ratio": 0.5}, None),
        ({"r": True, "protected": 0}, None),
        ({"r": 1, "protected": False}, None),
        ({"r": 1.0, "protected": 0}, None),
        ({"r": 1}, None),
    ],
)
def test_validate_rejects(attrs, n_tokens):
    with pytest.raises(OpValidationError):
        SPEC.validate(attrs, n_tokens=n_tokens)


def test_output_tokens():
    assert SPEC.output_tokens(197, {"r": 13, "protected": 1}) == 184
    assert SPEC.output_tokens(197, {"r": 0, "protected": 1}) == 197
    assert SPEC.output_tokens(197, {"r": 98, "protected": 1}) == 99


# --------------------------------------------------------------------------------------------
# TopKSelect
# --------------------------------------------------------------------------------------------

TOPK = get_op("TopKSelect")
FUSED_RTOL = 1e-6


def topk_faces_agree(x, scores, size, k, protected, fuse):
    """TopKSelect: torch == ONNX (ORT) == OpenVINO's fused op == naive, and the output count is
    the spec's static count."""
    attrs = {"k": k, "protected": protected, "fuse": fuse}
    TOPK.validate(attrs, x.shape[1])
    n_out = TOPK.output_tokens(x.shape[1], attrs)
    want_x, want_s = naive_topk_select(x, scores, size, k, protected, fuse)
    torch_out = torch.ops.trimformer.topk_select(
        torch.from_numpy(x), torch.from_numpy(scores), torch.from_numpy(size), k, protected, fuse
    )
    faces = {
        "torch": tuple(t.numpy() for t in torch_out),
        "onnx": run_function("TopKSelect", attrs, {"x": x, "scores": scores, "size": size}),
    }
    if openvino_core() is not None:
        inputs = {"x": x, "scores": scores, "size": size}
        faces["openvino"] = openvino_face("TopKSelect", attrs, inputs)
    for face, (got_x, got_s) in faces.items():
        assert got_x.shape == (x.shape[0], n_out, x.shape[2]), face
        assert got_s.shape == (x.shape[0], n_out, 1), face
        # The fused token sums up to N float32 terms: allow their rounding (rtol) on top of ATOL.
        np.testing.assert_allclose(got_x, want_x, rtol=FUSED_RTOL, atol=ATOL, err_msg=f"{face} x")
        np.testing.assert_allclose(got_s, want_s, rtol=FUSED_RTOL, atol=ATOL, err_msg=f"{face} s")
    return want_x, want_s


def make_scores(rng, batch, n_tokens, kind):
    """normal; probs (softmax rows, as CLS attention); ties (few distinct values); equal."""
    if kind == "normal":
        return rng.standard_normal((batch, n_tokens)).astype(np.float32)
    if kind == "probs":
        logits = rng.standard_normal((batch, n_tokens)) * 2
        return (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    if kind == "ties":
        return (rng.integers(0, 3, (batch, n_tokens)) / 4).astype(np.float32)
    return np.full((batch, n_tokens), 0.25, dtype=np.float32)


@st.composite
def topk_cases(draw):
    batch = draw(st.integers(1, 3))
    n_tokens = draw(st.integers(1, 40))
    protected = draw(st.integers(0, min(3, n_tokens - 1)))
    k = draw(st.integers(1, n_tokens - protected))
    fuse = draw(st.integers(0, 1))
    channels = draw(st.integers(1, 8))
    kind = draw(st.sampled_from(["normal", "probs", "ties", "equal"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return batch, n_tokens, protected, k, fuse, channels, kind, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topk_cases())
def test_topk_select_faces_agree(case):
    batch, n_tokens, protected, k, fuse, channels, kind, seed = case
    rng = np.random.default_rng(seed)
    x, _, size = make_inputs(rng, batch, n_tokens, channels, 1)
    topk_faces_agree(x, make_scores(rng, batch, n_tokens, kind), size, k, protected, fuse)


@pytest.mark.parametrize("fuse", [0, 1])
@pytest.mark.parametrize(("n_tokens", "protected"), [(1, 0), (5, 1), (17, 2), (197, 1)])
def test_topk_keep_all(n_tokens, protected, fuse):
    # k = N - p keeps every token in order; the fused token is then empty: zeros, size 0.
    rng = np.random.default_rng(n_tokens)
    x, _, size = make_inputs(rng, 2, n_tokens, 4, 1)
    want_x, want_s = topk_faces_agree(
        x, make_scores(rng, 2, n_tokens, "probs"), size, n_tokens - protected, protected, fuse
    )
    np.testing.assert_allclose(want_x[:, :n_tokens], x, atol=1e-6)
    np.testing.assert_array_equal(want_s[:, :n_tokens], size)
    if fuse:
        np.testing.assert_array_equal(want_x[:, -1], 0)
        np.testing.assert_array_equal(want_s[:, -1], 0)


@pytest.mark.parametrize("fuse", [0, 1])
@pytest.mark.parametrize(("n_tokens", "protected"), [(1, 0), (2, 1), (9, 0), (197, 1)])
def test_topk_keep_one(n_tokens, protected, fuse):
    rng = np.random.default_rng(10 + n_tokens)
    x, _, size = make_inputs(rng, 3, n_tokens, 3, 1)
    scores = make_scores(rng, 3, n_tokens, "normal")
    want_x, want_s = topk_faces_agree(x, scores, size, 1, protected, fuse)
    best = protected + scores[:, protected:].argmax(axis=1)
    np.testing.assert_allclose(want_x[:, protected], x[np.arange(3), best], atol=1e-6)
    if fuse:  # the mass of all unprotected sizes is conserved
        np.testing.assert_allclose(
            want_s[:, protected:].sum(axis=(1, 2)), size[:, protected:].sum(axis=(1, 2)), rtol=1e-6
        )


def test_topk_layout_and_fused_token():
    # Protected tokens stay whatever their score; kept tokens keep their order; the fused token is
    # the score-weighted sum of the dropped ones (not renormalised), its size their size sum.
    x = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
    scores = np.array([[0.0, 0.1, 0.4, 0.05, 0.3, 0.15]], dtype=np.float32)
    size = np.array([1, 1, 2, 3, 1, 4], dtype=np.float32).reshape(1, 6, 1)
    want_x, want_s = topk_faces_agree(x, scores, size, 3, 1, 1)
    # Unprotected 1..5 ranked: 2 (0.4), 4 (0.3), 5 (0.15), 1 (0.1), 3 (0.05).
    fused = 0.1 * x[0, 1] + 0.05 * x[0, 3]
    np.testing.assert_allclose(want_x[0], [x[0, 0], x[0, 2], x[0, 4], x[0, 5], fused], atol=1e-6)
    np.testing.assert_allclose(want_s[0, :, 0], [1, 2, 1, 4, 4])


@pytest.mark.parametrize("fuse", [0, 1])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("n_tokens", "protected"), [(8, 0), (13, 1), (50, 2), (197, 1)])
def test_topk_exact_score_ties(n_tokens, protected, seed, fuse):
    rng = np.random.default_rng(seed)
    x, _, size = make_inputs(rng, 3, n_tokens, 4, 1)
    scores = make_scores(rng, 3, n_tokens, "ties")
    m = n_tokens - protected
    for k in sorted({1, 2, m // 3, m // 2, m - 1, m} - {0}):
        topk_faces_agree(x, scores, size, k, protected, fuse)


def test_topk_ties_keep_the_lower_index():
    x = np.arange(8, dtype=np.float32).reshape(1, 8, 1)
    scores = np.array([[9, 1, 2, 2, 1, 2, 1, 2]], dtype=np.float32)
    size = np.ones((1, 8, 1), dtype=np.float32)
    want_x, _ = topk_faces_agree(x, scores, size, 3, 1, 0)
    np.testing.assert_array_equal(want_x[0, :, 0], [0, 2, 3, 5])
    want_x, _ = topk_faces_agree(x, scores, size, 5, 1, 1)
    np.testing.assert_array_equal(want_x[0, :, 0], [0, 1, 2, 3, 5, 7, 1 * 4 + 1 * 6])


@pytest.mark.parametrize("fuse", [0, 1])
@pytest.mark.parametrize("score", [0.0, 0.3, -1.0])
def test_topk_all_equal_tokens(score, fuse):
    # Identical tokens and scores: the first k unprotected tokens are kept.
    n_tokens, protected = 12, 1
    rng = np.random.default_rng(5)
    x, _, size = make_inputs(rng, 2, n_tokens, 3, 1)
    x[:] = x[:, :1]
    scores = np.full((2, n_tokens), score, dtype=np.float32)
    for k in range(1, n_tokens - protected + 1):
        _, want_s = topk_faces_agree(x, scores, size, k, protected, fuse)
        np.testing.assert_allclose(want_s[:, : protected + k], size[:, : protected + k])


def test_topk_batch_items_select_different_tokens():
    rng = np.random.default_rng(21)
    x, _, size = make_inputs(rng, 2, 6, 3, 1)
    scores = np.array([[0, 5, 4, 3, 2, 1], [0, 1, 2, 3, 4, 5]], dtype=np.float32)
    want_x, want_s = topk_faces_agree(x, scores, size, 2, 1, 1)
    np.testing.assert_allclose(want_x[0, :3], x[0, [0, 1, 2]], atol=1e-6)
    np.testing.assert_allclose(want_x[1, :3], x[1, [0, 4, 5]], atol=1e-6)
    np.testing.assert_allclose(want_s[0, 3, 0], size[0, 3:, 0].sum(), rtol=1e-6)
    np.testing.assert_allclose(want_s[1, 3, 0], size[1, 1:4, 0].sum(), rtol=1e-6)


@pytest.mark.parametrize("fuse", [0, 1])
@pytest.mark.parametrize("opset", [MIN_OPSET, OPSET, MAX_OPSET])
def test_topk_model_passes_full_check_and_retargets(opset, fuse):
    dims = {"x": ["B", "N", 4], "scores": ["B", "N"], "size": ["B", "N", 1]}
    attrs = {"k": 5, "protected": 1, "fuse": fuse}
    onnx.checker.check_model(op_model("TopKSelect", attrs, dims, opset), full_check=True)
    rng = np.random.default_rng(opset)
    x, _, size = make_inputs(rng, 2, 21, 4, 1)
    scores = make_scores(rng, 2, 21, "probs")
    got = run_function("TopKSelect", attrs, {"x": x, "scores": scores, "size": size}, opset)
    want = naive_topk_select(x, scores, size, 5, 1, fuse)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    ("attrs", "n_tokens"),
    [
        ({"k": 0, "protected": 1, "fuse": 0}, None),
        ({"k": 1, "protected": -1, "fuse": 0}, None),
        ({"k": 1, "protected": 0, "fuse": 2}, None),
        ({"k": 1, "protected": 0, "fuse": -1}, None),
        ({"k": 197, "protected": 1, "fuse": 0}, 197),  # at most 196 unprotected tokens
        ({"k": 1, "protected": 1, "fuse": 1}, 1),  # no unprotected token to keep
        ({"k": 1, "protected": 0, "fuse": 0, "r": 1}, None),
        ({"k": 1.0, "protected": 0, "fuse": 0}, None),
        ({"k": 1, "protected": 0, "fuse": True}, None),
        ({"k": 1, "protected": 0}, None),
    ],
)
def test_topk_validate_rejects(attrs, n_tokens):
    with pytest.raises(OpValidationError):
        TOPK.validate(attrs, n_tokens=n_tokens)


def test_topk_output_tokens():
    TOPK.validate({"k": 196, "protected": 1, "fuse": 1}, n_tokens=197)
    assert TOPK.output_tokens(197, {"k": 138, "protected": 1, "fuse": 1}) == 140
    assert TOPK.output_tokens(197, {"k": 138, "protected": 1, "fuse": 0}) == 139
    assert TOPK.output_tokens(197, {"k": 1, "protected": 1, "fuse": 0}) == 2


# --------------------------------------------------------------------------------------------
# DiverseSelect
# --------------------------------------------------------------------------------------------

DIVERSE = get_op("DiverseSelect")


def diverse_faces_agree(x, features, size, k, protected):
    """DiverseSelect: torch == ONNX (ORT) == OpenVINO's fused op == naive, and the output
    count is the static count."""
    attrs = {"k": k, "protected": protected}
    DIVERSE.validate(attrs, x.shape[1])
    n_out = DIVERSE.output_tokens(x.shape[1], attrs)
    want_x, want_s = naive_diverse_select(x, features, size, k, protected)
    torch_out = torch.ops.trimformer.diverse_select(
        torch.from_numpy(x), torch.from_numpy(features), torch.from_numpy(size), k, protected
    )
    inputs = {"x": x, "features": features, "size": size}
    faces = {
        "torch": tuple(t.numpy() for t in torch_out),
        "onnx": run_function("DiverseSelect", attrs, inputs),
    }
    if openvino_core() is not None:
        faces["openvino"] = openvino_face("DiverseSelect", attrs, inputs)
    for face, (got_x, got_s) in faces.items():
        assert got_x.shape == (x.shape[0], n_out, x.shape[2]), face
        assert got_s.shape == (x.shape[0], n_out, 1), face
        # Selection only copies rows: exact.
        np.testing.assert_array_equal(got_x, want_x.astype(np.float32), err_msg=f"{face} x")
        np.testing.assert_array_equal(got_s, want_s.astype(np.float32), err_msg=f"{face} s")
    return want_x, want_s


@st.composite
def diverse_cases(draw):
    batch = draw(st.integers(1, 3))
    n_tokens = draw(st.integers(1, 40))
    protected = draw(st.integers(0, min(3, n_tokens - 1)))
    k = draw(st.integers(1, n_tokens - protected))
    channels = draw(st.integers(1, 6))
    feature_channels = draw(st.integers(1, 8))
    kind = draw(st.sampled_from(["normal", "normal", "one_hot", "signed_one_hot"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return batch, n_tokens, protected, k, channels, feature_channels, kind, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(diverse_cases())
def test_diverse_select_faces_agree(case):
    batch, n_tokens, protected, k, channels, feature_channels, kind, seed = case
    rng = np.random.default_rng(seed)
    x, features, size = make_inputs(rng, batch, n_tokens, channels, feature_channels)
    if kind != "normal":
        signed = kind == "signed_one_hot"
        features = one_hot_metric(rng, batch, n_tokens, feature_channels, signed, zeros=True)
    diverse_faces_agree(x, features, size, k, protected)


@pytest.mark.parametrize(("n_tokens", "protected"), [(1, 0), (2, 1), (9, 0), (50, 1)])
def test_diverse_keep_all_and_keep_one(n_tokens, protected):
    rng = np.random.default_rng(n_tokens)
    x, features, size = make_inputs(rng, 2, n_tokens, 3, 8)
    m = n_tokens - protected
    want_x, want_s = diverse_faces_agree(x, features, size, m, protected)
    np.testing.assert_array_equal(want_x, x)  # k = N - p keeps every token, in order
    np.testing.assert_array_equal(want_s, size)
    want_x, _ = diverse_faces_agree(x, features, size, 1, protected)
    assert want_x.shape[1] == protected + 1


def test_diverse_first_pick_and_greedy_order():
    # Unit features at 0, 10, 20, 180 and 90 degrees, after a protected token. The most isolated
    # token is 180° (token 4: its nearest is 90° away), then the farthest from it is 0° (token 1),
    # then 90° (token 5, 90° from the set), then 20° (token 3).
    angles = np.radians([45.0, 0.0, 10.0, 20.0, 180.0, 90.0])
    features = np.stack([np.cos(angles), np.sin(angles)], axis=-1)[None].astype(np.float32)
    features[0, 0] = 0  # the protected token's feature is never looked at
    x = np.arange(6, dtype=np.float32).reshape(1, 6, 1)
    size = np.ones((1, 6, 1), dtype=np.float32)
    for k, kept in [(1, [4]), (2, [1, 4]), (3, [1, 4, 5]), (4, [1, 3, 4, 5])]:
        want_x, _ = diverse_faces_agree(x, features, size, k, 1)
        np.testing.assert_array_equal(want_x[0, :, 0], [0, *kept])


def test_diverse_ties_pick_the_lower_index():
    # The four axis directions: every nearest neighbour is 90° away, so token 0 is picked first;
    # 180° (token 2) is farthest from it; 90° and 270° then tie: token 1 wins.
    features = np.array([[[1, 0], [0, 1], [-1, 0], [0, -1]]], dtype=np.float32)
    x = np.arange(4, dtype=np.float32).reshape(1, 4, 1)
    size = np.ones((1, 4, 1), dtype=np.float32)
    for k, kept in [(1, [0]), (2, [0, 2]), (3, [0, 1, 2])]:
        want_x, _ = diverse_faces_agree(x, features, size, k, 0)
        np.testing.assert_array_equal(want_x[0, :, 0], kept)


@pytest.mark.parametrize(
    ("n_tokens", "protected", "seed"),
    [(n, p, seed) for n, p in [(8, 0), (13, 1), (50, 2)] for seed in range(4)]
    + [(197, 1, 0), (197, 1, 1)],
)
def test_diverse_exact_ties(n_tokens, protected, seed):
    # Few one-hot directions: many tokens at exactly equal distances (197: a ViT-B/16's count).
    rng = np.random.default_rng(seed)
    feature_channels = int(rng.integers(1, 5))
    x, _, size = make_inputs(rng, 3, n_tokens, 4, 1)
    features = one_hot_metric(rng, 3, n_tokens, feature_channels, signed=seed % 2 == 1, zeros=True)
    m = n_tokens - protected
    for k in sorted({1, 2, m // 3, m // 2, m} - {0}):
        diverse_faces_agree(x, features, size, k, protected)


@pytest.mark.parametrize("row", [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [-2.0, 0.0, 0.0, 0.0]])
def test_diverse_all_equal_tokens_keep_the_first_k(row):
    n_tokens, protected = 12, 1
    rng = np.random.default_rng(5)
    x, _, size = make_inputs(rng, 2, n_tokens, 3, 1)
    features = np.broadcast_to(np.array(row, dtype=np.float32), (2, n_tokens, 4)).copy()
    for k in range(1, n_tokens - protected + 1):
        want_x, _ = diverse_faces_agree(x, features, size, k, protected)
        np.testing.assert_array_equal(want_x, x[:, : protected + k])


def test_diverse_batch_items_select_different_tokens():
    # Item 0: tokens 1 and 2 point one way, 3 and 4 the other; item 1: 1 and 3 are isolated.
    features = np.array(
        [
            [[0, 0], [1, 0], [1, 0.1], [-1, 0], [-1, 0.1]],
            [[0, 0], [1, 0], [0, 1], [-1, 0], [0, 1.1]],
        ],
        dtype=np.float32,
    )
    x = np.arange(10, dtype=np.float32).reshape(2, 5, 1)
    size = np.ones((2, 5, 1), dtype=np.float32)
    want_x, _ = diverse_faces_agree(x, features, size, 2, 1)
    np.testing.assert_array_equal(want_x[:, :, 0], [[0, 1, 3], [5, 6, 8]])


@pytest.mark.parametrize("opset", [MIN_OPSET, OPSET, MAX_OPSET])
def test_diverse_model_passes_full_check_and_retargets(opset):
    dims = {"x": ["B", "N", 4], "features": ["B", "N", 3], "size": ["B", "N", 1]}
    attrs = {"k": 5, "protected": 1}
    onnx.checker.check_model(op_model("DiverseSelect", attrs, dims, opset), full_check=True)
    rng = np.random.default_rng(opset)
    x, features, size = make_inputs(rng, 2, 21, 4, 3)
    inputs = {"x": x, "features": features, "size": size}
    got = run_function("DiverseSelect", attrs, inputs, opset)
    for g, w in zip(got, naive_diverse_select(x, features, size, 5, 1), strict=True):
        np.testing.assert_array_equal(g, w.astype(np.float32))


@pytest.mark.parametrize(
    ("attrs", "n_tokens"),
    [
        ({"k": 0, "protected": 1}, None),
        ({"k": 1, "protected": -1}, None),
        ({"k": 197, "protected": 1}, 197),  # at most 196 unprotected tokens
        ({"k": 1, "protected": 1}, 1),  # no unprotected token to keep
        ({"k": 1, "protected": 0, "fuse": 0}, None),
        ({"k": 1.0, "protected": 0}, None),
        ({"k": 1}, None),
    ],
)
def test_diverse_validate_rejects(attrs, n_tokens):
    with pytest.raises(OpValidationError):
        DIVERSE.validate(attrs, n_tokens=n_tokens)


def test_diverse_output_tokens():
    DIVERSE.validate({"k": 196, "protected": 1}, n_tokens=197)
    assert DIVERSE.output_tokens(197, {"k": 98, "protected": 1}) == 99
    assert DIVERSE.output_tokens(577, {"k": 64, "protected": 1}) == 65

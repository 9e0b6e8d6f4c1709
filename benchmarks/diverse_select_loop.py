"""DiverseSelect in ONNX Runtime: the shipped ONNX ``Loop`` body vs the same steps unrolled.

The op's function body runs its k-1 greedy steps in a Loop. This script builds, for each token
count, a one-call model with that body and a variant whose Loop is replaced by k-1 unrolled
copies of its body, checks that both give the same tokens, and times them (batch 1, one
thread, median of ``--runs``). The op's docstring quotes the result.

    python benchmarks/diverse_select_loop.py [--tokens 197 577] [--k 64] [--runs 200]

Writes benchmarks/results/diverse_select_loop.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from trimformer.ops import get_op

RESULTS = Path(__file__).parent / "results"
OPSET = 20
CHANNELS = 384  # DeiT-S


def _call_model(fn: onnx.FunctionProto, k: int) -> onnx.ModelProto:
    spec = get_op("DiverseSelect")
    node = helper.make_node(
        spec.name, list(spec.inputs), list(spec.outputs), domain=spec.domain, k=k, protected=1
    )
    dims = {"x": CHANNELS, "features": CHANNELS, "size": 1}
    graph = helper.make_graph(
        [node],
        "diverse_select",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "N", c]) for n, c in dims.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in spec.outputs],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(spec.domain, 1)],
        functions=[fn],
        ir_version=10,
    )


def unrolled(fn: onnx.FunctionProto, k: int) -> onnx.FunctionProto:
    """The function with its Loop replaced by k-1 renamed copies of the Loop body."""
    out = onnx.FunctionProto()
    out.CopyFrom(fn)
    del out.node[:]
    for node in fn.node:
        if node.op_type != "Loop":
            out.node.append(node)
            continue
        body = next(a.g for a in node.attribute if a.name == "body")
        _, _, carried_in = (i.name for i in body.input)
        carried_out = body.output[1].name
        current = node.input[2]
        for step in range(k - 1):
            names = {carried_in: current}
            for body_node in body.node:
                if body_node.op_type == "Identity":  # the loop condition
                    continue
                copy = onnx.NodeProto()
                copy.CopyFrom(body_node)
                copy.name = f"{body_node.name}_{step}"
                copy.input[:] = [names.get(n, n) for n in body_node.input]
                for j, name in enumerate(body_node.output):
                    names[name] = copy.output[j] = f"{name}_{step}"
                out.node.append(copy)
            current = names[carried_out]
        out.node.append(helper.make_node("Identity", [current], [node.output[0]]))
    return out


def _interleaved_median_ms(sessions: dict, feeds: dict, runs: int) -> dict[str, float]:
    """Median time of each session, run alternately so that machine noise hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for i in range(runs + 10):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            if i >= 10:  # warm-up
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[197, 577])
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    fn = get_op("DiverseSelect").onnx_function(OPSET)
    forms = {"loop": fn, "unrolled": unrolled(fn, args.k)}
    rows = []
    for n in args.tokens:
        rng = np.random.default_rng(n)
        tokens = rng.standard_normal((1, n, CHANNELS)).astype(np.float32)
        feeds = {"x": tokens, "features": tokens, "size": np.ones((1, n, 1), np.float32)}
        row: dict = {"tokens": n, "k": args.k}
        sessions = {
            form: ort.InferenceSession(
                _call_model(body, args.k).SerializeToString(),
                options,
                providers=["CPUExecutionProvider"],
            )
            for form, body in forms.items()
        }
        outputs = [session.run(None, feeds)[0] for session in sessions.values()]
        for form, ms in _interleaved_median_ms(sessions, feeds, args.runs).items():
            row[f"{form}_ms"] = round(ms, 4)
            row[f"{form}_nodes"] = sum(1 for node in forms[form].node if node.op_type != "Constant")
        np.testing.assert_array_equal(*outputs)
        rows.append(row)
        print(row)
    RESULTS.mkdir(exist_ok=True)
    meta = {"onnxruntime": ort.__version__, "threads": 1, "batch": 1, "channels": CHANNELS}
    (RESULTS / "diverse_select_loop.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()

"""BipartiteMerge's ONNX function body, today's vs version 1's: what a merge costs on ONNX Runtime.

Version 1's body is the genuine one kept in tests/data/bipartite_merge_v1.onnx. Both bodies have
the same inputs, outputs and shapes, so swapping one for the other in the same graph times the
body alone (which tokens merge differs, what is computed does not). Timed interleaved in one
process, ORT CPU with thread spinning off, batch 1 and 8:

- one merge alone, at a DeiT-S layer's shape (197 tokens, C=384, keys of 64, r=13, CLS);
- DeiT-S with ToMe r=13 (random weights) with each body, beside the slice control of
  tome_speedup.py (the same token counts reached by slicing): reduced minus control is what the
  12 merges cost.

    python benchmarks/merge_body.py [--runs 300] [--threads 2]

Writes benchmarks/results/merge_body.json.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tome_speedup import RESULTS, control_session, time_interleaved, tome_plan

from trimformer.exporter.onnx_export import export_onnx
from trimformer.models import GraphIO
from trimformer.ops import DOMAIN, domain_version, get_op
from trimformer.ops.registry import retarget_function

V1_MODEL = Path(__file__).resolve().parents[1] / "tests" / "data" / "bipartite_merge_v1.onnx"
MODEL = "deit_small_patch16_224"
OPSET = 20


def with_body(model: onnx.ModelProto, body: onnx.FunctionProto, version: int) -> onnx.ModelProto:
    """``model`` with its BipartiteMerge function replaced by ``body`` of op version ``version``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.functions[:]
    out.functions.append(retarget_function(body, OPSET))
    for entry in out.opset_import:
        if entry.domain == DOMAIN:
            entry.version = version
    return out


def one_merge(v1_model: onnx.ModelProto, r: int = 13) -> onnx.ModelProto:
    """The version-1 model of one call (CLS protected) with r=``r`` and free token and channel
    counts, so it takes a DeiT-S layer's tensors."""
    out = onnx.ModelProto()
    out.CopyFrom(v1_model)
    for value in (*out.graph.input, *out.graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim[1:], start=1):
            dim.dim_param = f"{value.name}_{axis}"
    [call] = out.graph.node
    next(a for a in call.attribute if a.name == "r").i = r
    return out


def reduced_model() -> onnx.ModelProto:
    """DeiT-S with ToMe r=13 (random weights), exported as the exporter does."""
    loaded, adapter, plan = tome_plan(MODEL, 13)
    module = adapter.insert(loaded.model, plan.reducer).eval()
    example = torch.randn(2, *loaded.preprocess["input_size"])
    with adapter.export_patches(module):
        graph, _ = export_onnx(module, GraphIO.image(example), OPSET)
    return graph


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.force_spinning_stop", "1")  # as bench
    return ort.InferenceSession(model.SerializeToString(), options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="timed rounds at batch 1")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    v1_model = onnx.load(V1_MODEL)
    v1, body = v1_model.functions[0], get_op("BipartiteMerge").onnx_function(OPSET)
    merge, reduced = one_merge(v1_model), reduced_model()
    today = get_op("BipartiteMerge").version
    body_nodes = {"v1": len(v1.node), f"v{today}": len(body.node)}
    alone = {"v1": session(with_body(merge, v1, 1), args.threads)}
    alone[f"v{today}"] = session(with_body(merge, body, domain_version()), args.threads)
    in_model = {"v1": session(with_body(reduced, v1, 1), args.threads)}
    in_model[f"v{today}"] = session(reduced, args.threads)
    in_model["slice control"] = control_session(MODEL, 13, args.threads)
    image_input = reduced.graph.input[0].name
    rows = []
    for batch in (1, 8):
        rng = np.random.default_rng(0)
        feeds = {
            "x": rng.standard_normal((batch, 197, 384)).astype(np.float32),
            "metric": rng.standard_normal((batch, 197, 64)).astype(np.float32),
            "size": rng.uniform(1, 3, (batch, 197, 1)).astype(np.float32),
        }
        image = {image_input: rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
        runs = args.runs if batch == 1 else max(args.runs // 10, 10)
        one = time_interleaved(
            {k: partial(s.run, None, feeds) for k, s in alone.items()}, runs * 10
        )
        model = time_interleaved(
            {k: partial(s.run, None, image) for k, s in in_model.items()}, runs
        )
        control = model.pop("slice control")
        row = {
            "batch": batch,
            "threads": args.threads,
            "body_nodes": body_nodes,
            "one_merge_ms_p50": one,
            "deit_small_tome_r13_ms_p50": model,
            "slice_control_ms_p50": control,
            "merges_cost_ms": {k: v - control for k, v in model.items()},
        }
        rows.append(row)
        print(
            f"batch {batch}: one merge "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in one.items())
            + "; DeiT-S r=13 "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in model.items())
            + f", slice control {control:.2f} ms; 12 merges cost "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in row["merges_cost_ms"].items())
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "merge_body.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

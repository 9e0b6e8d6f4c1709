"""Write bipartite_merge_v1.onnx and bipartite_merge_v1.npz with trimformer BEFORE BipartiteMerge
version 2 (commit 8b42c0e): a model calling the version-1 op, its function body as that code
made it, and inputs with the outputs its torch face gave. They test that models exported then
still run. Regenerate only from that code, e.g.

    git archive 8b42c0e | tar -x -C /tmp/v1
    PYTHONPATH=/tmp/v1 python tests/data/make_bipartite_merge_v1.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from trimformer.ops import DOMAIN, get_op

HERE = Path(__file__).parent
TOKENS, CHANNELS, METRIC_CHANNELS, OPSET = 17, 8, 4, 18
ATTRS = {"r": 4, "protected": 1}  # an odd protected count: where version 2 differs


def main() -> None:
    spec = get_op("BipartiteMerge")
    if spec.version != 1:
        raise SystemExit(f"this is BipartiteMerge version {spec.version}; run the version-1 code")
    node = helper.make_node(
        spec.name, list(spec.inputs), list(spec.outputs), domain=DOMAIN, name="merge0", **ATTRS
    )
    dims = {"x": CHANNELS, "metric": METRIC_CHANNELS, "size": 1}
    out_tokens = TOKENS - ATTRS["r"]
    graph = helper.make_graph(
        [node],
        "bipartite_merge_v1",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", TOKENS, c])
            for n, c in dims.items()
        ],
        [
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["B", out_tokens, CHANNELS]),
            helper.make_tensor_value_info("size_out", TensorProto.FLOAT, ["B", out_tokens, 1]),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
        functions=[spec.onnx_function(OPSET)],
        ir_version=10,
        producer_name="trimformer (BipartiteMerge version 1)",
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, HERE / "bipartite_merge_v1.onnx")

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, TOKENS, CHANNELS)).astype(np.float32)
    metric = rng.standard_normal((2, TOKENS, METRIC_CHANNELS)).astype(np.float32)
    size = rng.uniform(0.5, 4.0, (2, TOKENS, 1)).astype(np.float32)
    x_out, size_out = spec.torch_op(
        torch.from_numpy(x), torch.from_numpy(metric), torch.from_numpy(size), **ATTRS
    )
    np.savez(
        HERE / "bipartite_merge_v1.npz",
        x=x,
        metric=metric,
        size=size,
        x_out=x_out.numpy(),
        size_out=size_out.numpy(),
    )


if __name__ == "__main__":
    main()

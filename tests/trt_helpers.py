"""Shared by the TensorRT tests: a small bundle with one reduction call, and device profiles."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from onnx import TensorProto, helper

from trimformer.bundle import write_bundle
from trimformer.ops import DOMAIN, domain_version, get_op
from trimformer.profiles.device_profiles import DeviceProfile, load_device_profile

__all__ = ["BANK", "CHANNELS", "TOKENS", "make_bank_bundle", "make_bundle", "profile"]

TOKENS, CHANNELS = 17, 8


def profile(name: str = "jetson-agx-orin", **changes: Any) -> DeviceProfile:
    """A packaged device profile with some fields changed."""
    return replace(load_device_profile(name), **changes)


BANK = {"tome-r4": "model", "fast": "cfg-fast", "none": "full"}
"""The configs of ``make_bank_bundle`` (name -> graph), default first."""


def make_bank_bundle(dest: Path) -> Path:
    """A config bank of three configs whose graphs are all the BipartiteMerge model."""
    return make_bundle(dest, bank=True)


def make_bundle(dest: Path, bank: bool = False) -> Path:
    """A bundle whose model is one BipartiteMerge call: x [B,17,8], size [B,17,1]."""
    spec = get_op("BipartiteMerge")
    node = helper.make_node(
        "BipartiteMerge", ["x", "x", "size"], ["x_out", "size_out"], domain=DOMAIN, r=4, protected=1
    )
    out_tokens = TOKENS - 4
    graph = helper.make_graph(
        [node],
        "merge",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", TOKENS, CHANNELS]),
            helper.make_tensor_value_info("size", TensorProto.FLOAT, ["batch", TOKENS, 1]),
        ],
        [
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["batch", out_tokens, 8]),
            helper.make_tensor_value_info("size_out", TensorProto.FLOAT, ["batch", out_tokens, 1]),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, domain_version())],
        functions=[spec.onnx_function(18)],
        ir_version=10,
    )

    def entry(name: str, tokens: int, channels: int) -> dict[str, Any]:
        return {"name": name, "shape": ["batch", tokens, channels], "dtype": "float32"}

    io = {
        "inputs": [entry("x", TOKENS, CHANNELS), entry("size", TOKENS, 1)],
        "outputs": [entry("x_out", out_tokens, CHANNELS), entry("size_out", out_tokens, 1)],
    }
    names = BANK.values() if bank else ["model"]
    manifest: dict[str, Any] = {"graphs": {g: {"file": f"{g}.onnx", **io} for g in names}}
    if bank:
        manifest["configs"] = {c: {"method": "tome", "graph": g} for c, g in BANK.items()}
        manifest["default_config"] = "tome-r4"
    write_bundle(dest, dict.fromkeys(names, model), manifest, force=False)
    return dest

"""The trimformer runtime: load an exported bundle and run or benchmark it with ONNX Runtime.

It depends only on numpy, onnxruntime, PIL and rich (never torch or timm), so applications can
embed it: ``load(bundle)`` checks the bundle's hashes and returns a ``Session`` whose ``run``
validates inputs against the manifest and switches between the bundle's reduction configs
(``use``); ``load_image`` reproduces the model's timm eval preprocessing; ``benchmark`` times
the reduced graph, optionally against the full one, ``benchmark_configs`` each config.
"""

from __future__ import annotations

from trimformer.runtime.bench import BankBenchResult, BenchResult, benchmark, benchmark_configs
from trimformer.runtime.preprocess import load_image
from trimformer.runtime.session import Session, TensorSpec, load

__all__ = [
    "BankBenchResult",
    "BenchResult",
    "Session",
    "TensorSpec",
    "benchmark",
    "benchmark_configs",
    "load",
    "load_image",
]

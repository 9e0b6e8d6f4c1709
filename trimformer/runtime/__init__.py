"""The trimformer runtime: load an exported bundle and run or benchmark it with ONNX Runtime.

It depends only on numpy, onnxruntime, PIL and rich (never torch or timm), so applications can
embed it: ``load(bundle)`` checks the bundle's hashes and returns a ``Session`` whose ``run``
validates inputs against the manifest; ``load_image`` reproduces the model's timm eval
preprocessing; ``benchmark`` times the reduced graph, optionally against the full one.
"""

from __future__ import annotations

from trimformer.runtime.bench import BenchResult, benchmark
from trimformer.runtime.preprocess import load_image
from trimformer.runtime.session import Session, TensorSpec, load

__all__ = ["BenchResult", "Session", "TensorSpec", "benchmark", "load", "load_image"]

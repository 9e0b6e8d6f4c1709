"""Triton Python-backend model: encoded images (BYTES) -> the bundle's float32 model input.

``trimformer triton --preprocess`` copies this file as ``preprocess/1/model.py`` and, beside it,
the part of trimformer it imports (``trimformer/runtime/preprocess.py`` and ``errors.py``, the
same files, not a rewrite), so Triton's Python environment needs numpy and Pillow only: no
torch, no onnxruntime, no trimformer install. The preprocessing (timm's eval transform, from the
bundle's manifest) is the model config's ``preprocess`` parameter, as JSON.

Triton calls ``initialize`` once per instance with the model config as JSON and ``execute`` with
a list of requests; each request's ``IMAGE`` is a [batch, 1] array of encoded images. An image
that does not decode fails its own request with a one-line error; the others go on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TritonPythonModel"]


class TritonPythonModel:
    """The interface Triton's Python backend loads from model.py."""

    def initialize(self, args: dict[str, str]) -> None:
        here = Path(args["model_repository"]) / args["model_version"]
        if str(here) not in sys.path:
            sys.path.insert(0, str(here))  # the copied trimformer files
        import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend

        from trimformer.errors import UsageError
        from trimformer.runtime.preprocess import decode_image

        config = json.loads(args["model_config"])
        self._utils = pb_utils
        self._decode = decode_image
        self._refused = UsageError
        self._preprocess = json.loads(config["parameters"]["preprocess"]["string_value"])
        self._input = config["input"][0]["name"]
        self._output = config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        pb_utils = self._utils
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, self._input).as_numpy()
            try:
                pixels = np.stack(
                    [self._decode(bytes(image), self._preprocess) for image in images.reshape(-1)]
                )
            except self._refused as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            tensor = pb_utils.Tensor(self._output, pixels)
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self) -> None:
        """Nothing to release: the model holds no device memory or open files."""

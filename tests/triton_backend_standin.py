"""A stand-in for ``triton_python_backend_utils``, which only Triton's Python backend provides.

Triton cannot be installed here, so the preprocessing model's ``model.py`` runs against this
module instead: the subset of the documented API it uses (Tensor, InferenceResponse,
TritonError, get_input_tensor_by_name) with the documented behaviour, plus a request type to
build calls with. The tests copy it onto the path of a clean interpreter as
``triton_python_backend_utils.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "InferenceRequest",
    "InferenceResponse",
    "Tensor",
    "TritonError",
    "get_input_tensor_by_name",
]


class Tensor:
    """A named tensor; ``as_numpy`` returns its array (an object array of bytes for BYTES)."""

    def __init__(self, name: str, array: np.ndarray) -> None:
        if not isinstance(array, np.ndarray):
            raise TypeError("pb_utils.Tensor takes a numpy array")
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class InferenceResponse:
    def __init__(
        self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None
    ) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class InferenceRequest:
    """What Triton hands ``execute``: the request's input tensors."""

    def __init__(self, inputs: list[Tensor]) -> None:
        self.inputs = inputs


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Any:
    return next((t for t in request.inputs if t.name() == name), None)

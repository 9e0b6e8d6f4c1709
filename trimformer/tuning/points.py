"""The configs a sweep or a search visits: one method's knob over values, mildest first.

Each method with a strength knob is described once (``KNOBS``): its param, whether a larger
value reduces more, and the default values a search tries. Sweep grids come from the user's
``--r 0:16:2`` (a range, stop included) or ``--keep 1.0,0.9,0.7`` (a list).
"""

from __future__ import annotations

from dataclasses import dataclass

from trimformer.errors import UsageError
from trimformer.profiles import ReductionConfig

__all__ = ["KNOBS", "Grid", "Knob", "knob_of", "parse_values"]


@dataclass(frozen=True)
class Knob:
    """A method's strength param: larger values reduce more when ``increasing``."""

    param: str
    increasing: bool
    search: tuple[float, ...]  # the values tune searches, mildest first

    def mildest_first(self, values: list[float]) -> list[float]:
        return sorted(values, reverse=not self.increasing)

    def reduces_nothing(self, value: float) -> bool:
        return value == 0 if self.increasing else value >= 1


KNOBS: dict[str, Knob] = {
    "tome": Knob("r", True, tuple(range(0, 33, 2))),
    "evit": Knob("keep", False, (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)),
    "divprune": Knob("keep", False, (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)),
    "hired": Knob("keep", False, (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)),
    "tail_drop": Knob("keep", False, (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)),
}


def knob_of(method: str) -> Knob:
    """The strength knob of ``method``, or a UsageError listing the methods that have one."""
    try:
        return KNOBS[method]
    except KeyError:
        raise UsageError(
            f"method {method} has no strength knob to sweep or tune; choose from {', '.join(KNOBS)}"
        ) from None


def parse_values(option: str, text: str) -> list[float]:
    """``0:16:2`` (start:stop:step, stop included) or ``1.0,0.9,0.7`` as numbers."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = round((stop - start) / step) + 1
            values = [start + i * step for i in range(count)]
        else:
            values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: give start:stop:step (0:16:2) or a list (1.0,0.9,0.7)"
        ) from None
    return [int(v) if float(v).is_integer() and option == "--r" else v for v in values]


@dataclass(frozen=True)
class Grid:
    """One method's knob over values, mildest first, as reduction configs."""

    method: str
    values: tuple[float, ...]
    fixed: tuple[tuple[str, object], ...] = ()  # other params, the same at every point

    @property
    def knob(self) -> Knob:
        return knob_of(self.method)

    @classmethod
    def search(cls, method: str) -> Grid:
        """The values ``tune`` searches for ``method``."""
        return cls(method, knob_of(method).search)

    def configs(self) -> list[ReductionConfig]:
        """One config per value; a value that reduces nothing is method none."""
        knob = self.knob
        out = []
        for value in knob.mildest_first(list(self.values)):
            label = f"{self.method} {knob.param}={value}"
            if knob.reduces_nothing(value):
                out.append(ReductionConfig("none", {}, label))
            else:
                params = {**dict(self.fixed), knob.param: value}
                out.append(ReductionConfig(self.method, params, label))
        return out

"""Planning shared by methods that keep some of the unprotected tokens at chosen blocks.

``KeepBudget`` is the params part they share (a share ``keep`` or a count ``k``: ``KeepCount``,
and the zero-based ``layers``, by default the middle block), validated once for all of them;
``plan_kept`` turns a per-layer count into the static token counts and per-layer op records of a
``MethodPlan``. A layer asked to keep every token is skipped: its op would change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from trimformer.methods.base import ConfigError, ModelGeometry
from trimformer.methods.evit import kept_tokens
from trimformer.ops import OpSpec

__all__ = ["KeepBudget", "KeepCount", "KeptPlan", "check_layers", "plan_kept"]


def check_layers(method: str, key: str, layers: tuple[int, ...], num_layers: int) -> None:
    """ConfigError naming ``key`` unless ``layers`` are distinct zero-based blocks of the model."""
    if not layers:
        raise ConfigError(f"{method}: key {key!r} must name at least one layer (zero-based)")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"{method}: key {key!r} repeats a layer: {list(layers)}")
    out_of_range = [i for i in layers if not 0 <= i < num_layers]
    if out_of_range:
        raise ConfigError(
            f"{method}: key {key!r} has {out_of_range} outside the model's zero-based layers "
            f"0..{num_layers - 1}"
        )


@dataclass(frozen=True)
class KeepCount:
    """How many unprotected tokens to keep: ``keep`` (a share) or ``k`` (a count).

    Neither given: ``default_keep``.
    """

    keep: float | None = None
    k: int | None = None

    method: ClassVar[str] = ""
    default_keep: ClassVar[float] = 0.5

    def __post_init__(self) -> None:
        if self.keep is not None and self.k is not None:
            raise ConfigError(
                f"{self.method}: give key 'keep' (a share) or 'k' (a count), not both"
            )
        if self.keep is not None and not 0 < self.keep <= 1:
            raise ConfigError(f"{self.method}: key 'keep' must be in (0, 1], got {self.keep}")
        if self.k is not None and self.k < 1:
            raise ConfigError(f"{self.method}: key 'k' must be >= 1, got {self.k}")

    def kept(self, candidates: int) -> int:
        """Unprotected tokens kept out of ``candidates`` (all of them when k exceeds them)."""
        if self.k is not None:
            return min(self.k, candidates)
        return kept_tokens(self.keep if self.keep is not None else self.default_keep, candidates)

    def count_record(self) -> dict[str, Any]:
        """keep and k as the manifest records them: valid params again, the default explicit."""
        keep = self.keep if self.keep is not None or self.k is not None else self.default_keep
        return {"keep": keep, "k": self.k}


@dataclass(frozen=True)
class KeepBudget(KeepCount):
    """A KeepCount and where: ``layers`` (zero-based), None: the middle block (num_layers // 2)."""

    layers: tuple[int, ...] | None = None

    def resolved_layers(self, num_layers: int) -> tuple[int, ...]:
        """The zero-based reducing blocks, checked against the model's depth."""
        layers = self.layers if self.layers is not None else (num_layers // 2,)
        check_layers(self.method, "layers", layers, num_layers)
        return tuple(sorted(layers))

    def record(self, num_layers: int) -> dict[str, Any]:
        """The budget as the manifest records it: valid params again, defaults made explicit."""
        return {**self.count_record(), "layers": list(self.resolved_layers(num_layers))}


@dataclass(frozen=True)
class KeptPlan:
    """Per layer: unprotected tokens kept (0: not reduced), tokens leaving it, op record."""

    k_per_layer: tuple[int, ...]
    tokens_per_layer: tuple[int, ...]
    layers: tuple[dict[str, Any], ...]


def plan_kept(
    op: OpSpec,
    geometry: ModelGeometry,
    kept: Callable[[int, int], int],
    attrs: Mapping[str, Any] | None = None,
) -> KeptPlan:
    """Call ``op`` (attributes k, protected and ``attrs``) where ``kept(layer, candidates)`` keeps
    fewer than all candidates; ``kept`` returns 0 for layers that do not reduce."""
    p, tokens = geometry.protected, geometry.num_tokens
    ks, counts, records = [], [], []
    for layer in range(geometry.num_layers):
        k = kept(layer, tokens - p)
        if 0 < k < tokens - p:
            record = {"k": k, "protected": p, **(attrs or {})}
            tokens = op.output_tokens(tokens, record)
            records.append({"op": op.name, **record})
        else:
            k = 0
            records.append({})
        ks.append(k)
        counts.append(tokens)
    return KeptPlan(tuple(ks), tuple(counts), tuple(records))

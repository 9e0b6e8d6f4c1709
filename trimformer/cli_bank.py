"""The config-bank parts of ``trimformer export`` and ``bench`` (several configs, one bundle)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trimformer.errors import UsageError

if TYPE_CHECKING:
    from trimformer.profiles import ReductionConfig
    from trimformer.runtime.options import RuntimeOptions

__all__ = ["bank_configs", "bench_configs"]


def bank_configs(
    configs: tuple[str, ...], rs: tuple[str, ...], method: str | None, overrides: dict[str, Any]
) -> tuple[tuple[str, ReductionConfig], ...]:
    """The named configs of ``export --config A --config B ...`` or ``--r 0 --r 8 ...``."""
    from trimformer.cli import _chosen_reduction, _parse_r
    from trimformer.profiles import ReductionConfig

    if len(configs) > 1:
        if rs or method or overrides:
            raise UsageError(
                "--method/--r/--keep/--k/--layers/--set shape one config; with several --config "
                "put each config's params in its YAML file"
            )
        named = []
        for spec in configs:
            path = Path(spec)
            name = path.stem if path.suffix in (".yaml", ".yml") else path.name
            named.append((name, _chosen_reduction(spec, None) or ReductionConfig("none")))
        return tuple(named)
    base = _chosen_reduction(configs[0] if configs else None, method)
    if base is None or base.method == "none":
        raise UsageError("several --r need a method; add --method tome")
    return tuple(
        (
            f"{base.method}-r{value.replace(',', '.')}",
            ReductionConfig(
                base.method,
                {**base.params, **overrides, "r": _parse_r(value)},
                base.source,
                base.description,
            ),
        )
        for value in rs
    )


def bench_configs(
    bundle: Path,
    configs: tuple[str, ...],
    batch: int,
    threads: int | None,
    runs: int,
    warmup: int,
    json_path: Path | None,
    engine_profile: str | None = None,
    runtime: RuntimeOptions | None = None,
) -> None:
    """``bench --config`` / ``--engine``: time the named configs (all, or none named: every one;
    with an engine profile, every one with an engine) and print one row each."""
    from rich.markup import escape

    from trimformer.cli import _write_json, console, out
    from trimformer.runtime import benchmark_configs
    from trimformer.runtime.bench import render_bank_table

    names = None if not configs or "all" in configs else configs
    if engine_profile is not None:  # a profile name or file, as build --device takes it
        from trimformer.profiles.device_profiles import load_device_profile

        engine_profile = load_device_profile(engine_profile).name
    result = benchmark_configs(
        bundle,
        names,
        batch=batch,
        threads=threads,
        runs=runs,
        warmup=warmup,
        engine_profile=engine_profile,
        **({"runtime": runtime} if runtime is not None else {}),
    )
    out.print(render_bank_table(result))
    for note in result.telemetry_notes:
        console.print(f"[dim]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if json_path is not None:
        _write_json(json_path, result.to_json())

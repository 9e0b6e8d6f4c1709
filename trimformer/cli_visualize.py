"""``trimformer visualize BUNDLE_OR_MODEL IMAGE -o out.png``: draw a reduction on an image.

A thin shell over ``trimformer.visualize``: the reduction comes from the bundle's manifest, or
from --method / --config with the export command's overrides. Imports are lazy so that
``--help`` is instant.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["visualize_command"]


@click.command("visualize")
@click.argument("source", metavar="BUNDLE_OR_MODEL")
@click.argument("image", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="PNG file to write."
)
@click.option(
    "--layers",
    default=None,
    help="Zero-based blocks to show: 3,6,9 (default: up to 4 of the reducing blocks).",
)
@click.option("--method", default=None, help="Reduction method (default: the bundle's).")
@click.option("--config", "config", default=None, help="Reduction profile name or YAML file.")
@click.option("--r", "r", default=None, help="ToMe tokens merged per layer: 13, or 8,8,...")
@click.option(
    "--schedule", type=click.Choice(["constant", "decreasing"]), default=None, help="ToMe schedule."
)
@click.option("--keep", type=float, default=None, help="Share of tokens kept, in (0, 1].")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="Weights: .safetensors or a torch state dict (default: random weights).",
)
@click.option("--pretrained", is_flag=True, help="Download timm's pretrained weights.")
@click.option(
    "--image-size", type=int, default=None, help="Input resolution (default: the model's)."
)
def visualize_command(
    source: str,
    image: Path,
    output: Path,
    layers: str | None,
    method: str | None,
    config: str | None,
    r: str | None,
    schedule: str | None,
    keep: float | None,
    checkpoint: Path | None,
    pretrained: bool,
    image_size: int | None,
) -> None:
    """Draw IMAGE with the patches each block kept, merged (one colour per group) or pruned.

    BUNDLE_OR_MODEL is an exported bundle (its model and reduction are rebuilt in torch, with
    random weights unless --checkpoint is given) or a timm model name with --method/--config.
    """
    from rich.console import Console

    from trimformer.cli import _chosen_reduction, _overrides, _parse_ints
    from trimformer.visualize import VisualizeRequest, visualize

    reduction = _chosen_reduction(config, method)
    overrides = _overrides(r, schedule, keep)
    shown = _parse_ints("--layers", layers, "zero-based blocks (3,6,9)")
    request = VisualizeRequest(
        source=source,
        image=image,
        output=output,
        reduction=reduction,
        overrides=overrides,
        layers=tuple(shown) if shown is not None else None,
        checkpoint=checkpoint,
        pretrained=pretrained,
        image_size=image_size,
    )
    result = visualize(request)
    blocks = ", ".join(map(str, result.layers))
    weights = result.weights
    if weights == "random":
        weights = "random weights (pass --checkpoint FILE to see the trained model's choices)"
    Console().print(
        f"wrote {output} ({result.size[0]}x{result.size[1]}): {result.model} with "
        f"{result.method}, after blocks {blocks} (zero-based); {weights}",
        highlight=False,
        soft_wrap=True,
    )

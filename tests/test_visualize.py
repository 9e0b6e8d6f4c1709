"""``trimformer visualize``: source tracking, patch classes, the drawn panel, the PNG, the CLI."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BUNDLE_MODEL, TINY_BUNDLE_SIZE
from PIL import Image
from test_cli import assert_one_line_error, cli
from test_methods import deit_96, images, plan

from trimformer.methods import ModelGeometry
from trimformer.models import adapter_for
from trimformer.visualize import (
    FUSED,
    KEPT,
    MERGED,
    PRUNED,
    LayerView,
    compose_panel,
    figure_size,
    group_colour,
    layer_view,
    track_sources,
)

PATCHES = 36  # DeiT-Ti at 96 px: CLS + 6 x 6 patches


def tracked(method: str, **params):
    """Source tracking of ``method`` on DeiT-Ti at 96 px, for a batch of two images."""
    model = deit_96(fused=True)
    p = plan(method, params, ModelGeometry(12, PATCHES + 1, 1))
    return p, track_sources(model, adapter_for(model), p, images(), 1)


def natural_image(path: Path, size: tuple[int, int] = (150, 120)) -> Path:
    """A photo-like test image: a sky gradient, a green hill, a red disc, and some noise."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    rgb = np.stack([0.3 + 0.3 * y, 0.5 + 0.3 * y, 0.9 - 0.2 * y], axis=-1)
    hill = y > 0.6 + 0.15 * np.sin(6 * x)
    rgb[hill] = np.stack([0.2 + 0.1 * x, 0.55 - 0.2 * y, 0.15 + 0 * x], axis=-1)[hill]
    disc = (x - 0.3) ** 2 + (y - 0.35) ** 2 < 0.02
    rgb[disc] = [0.85, 0.2, 0.15]
    rgb += np.random.default_rng(0).normal(0, 0.03, rgb.shape)
    Image.fromarray((rgb.clip(0, 1) * 255).astype(np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------------------------
# Source tracking and patch classes
# --------------------------------------------------------------------------------------------


def test_merging_conserves_every_patch_in_exactly_one_group():
    p, layers = tracked("tome", r=3)
    assert [s.sources.shape[1] for s in layers] == list(p.tokens_per_layer)
    for snapshot in layers:
        sources, sizes = snapshot.sources, snapshot.sizes
        assert (sources[:, :1] == 0).all()  # the CLS token stands for no patch
        held = (sources > 0).sum(dim=1)
        assert (held == 1).all(), f"block {snapshot.layer}: a patch in no or several tokens"
        # Each token is the mean of its patches: sources * size is their indicator.
        torch.testing.assert_close((sources * sizes).sum(dim=1), torch.ones(2, PATCHES))
        torch.testing.assert_close(
            (sources > 0).sum(dim=2, keepdim=True)[:, 1:].float(), sizes[:, 1:]
        )
        for item in range(2):
            view = layer_view(snapshot, item)
            assert set(np.unique(view.kind)) <= {KEPT, MERGED}
            groups = np.unique(view.owner[view.kind == MERGED])
            kept = int((view.kind == KEPT).sum())
            assert 1 + kept + len(groups) == p.tokens_per_layer[snapshot.layer]


@pytest.mark.parametrize(
    ("method", "params", "kept", "other"),
    [
        ("evit", {"keep": 0.5, "layers": [2]}, 18, FUSED),
        ("evit", {"keep": 0.5, "layers": [2], "fuse": False}, 18, PRUNED),
        ("divprune", {"k": 10, "layers": [2]}, 10, PRUNED),
        ("tail_drop", {"k": 7, "layers": [2]}, 7, PRUNED),
    ],
)
def test_selection_keeps_k_patches_and_prunes_or_fuses_the_rest(method, params, kept, other):
    _, layers = tracked(method, **params)
    for snapshot in layers:
        view = layer_view(snapshot, 1)
        if snapshot.layer < 2:
            assert (view.kind == KEPT).all()
            continue
        assert (view.kind == KEPT).sum() == kept
        assert (view.kind == other).sum() == PATCHES - kept
        if other == FUSED:  # every dropped patch is in the one fused token (the last)
            assert set(view.owner[view.kind == FUSED]) == {snapshot.sources.shape[1] - 1}


def test_tail_drop_keeps_the_first_patches():
    _, layers = tracked("tail_drop", k=7, layers=[0])
    view = layer_view(layers[-1], 0)
    np.testing.assert_array_equal(view.kind[:7], KEPT)
    np.testing.assert_array_equal(view.kind[7:], PRUNED)


# --------------------------------------------------------------------------------------------
# The drawn panel
# --------------------------------------------------------------------------------------------


def test_panel_colours_groups_apart_and_dims_pruned_patches():
    # A 4 x 4 grid of 8 px patches: two merged groups (tokens 1 and 2), a kept patch (token 3),
    # a fused token (4) and pruned patches.
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (32, 32, 3))
    owner = np.array([1, 1, 2, 2, 1, 1, 2, 2, 3, -1, -1, 4, -1, -1, -1, 4])
    kind = np.array([MERGED] * 8 + [KEPT, PRUNED, PRUNED, FUSED] + [PRUNED] * 3 + [FUSED])
    kind[12] = PRUNED
    out = compose_panel(image, LayerView(5, 5, owner, kind), border=1)
    assert out.shape == image.shape
    # Group 1 (top-left 16 x 16) and group 2 (top-right): inner pixels are the group's mean
    # colour, edge pixels the group's own colour, and the two differ.
    np.testing.assert_allclose(out[4, 4], image[:16, :16].reshape(-1, 3).mean(axis=0))
    np.testing.assert_allclose(out[4, 20], image[:16, 16:].reshape(-1, 3).mean(axis=0))
    np.testing.assert_allclose(out[0, 0], group_colour(1))
    np.testing.assert_allclose(out[0, 31], group_colour(2))
    assert not np.allclose(group_colour(1), group_colour(2), atol=0.1)
    assert len({tuple(np.round(group_colour(t), 3)) for t in range(200)}) == 200
    np.testing.assert_array_equal(out[16:24, :8], image[16:24, :8])  # kept: the image itself
    pruned, fused = out[17, 9], out[17, 25]
    assert pruned.max() < 0.35 and fused[2] > fused[0]  # dark grey; dark blue
    assert not np.allclose(pruned, fused)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def test_cli_draws_a_model_with_a_method(tmp_path, capsys):
    from skimage.data import chelsea  # a real photo (a cat), shipped with scikit-image

    image = tmp_path / "cat.png"
    Image.fromarray(chelsea()).save(image)
    out = tmp_path / "figs" / "evit.png"
    args = ["visualize", TINY_BUNDLE_MODEL, str(image), "-o", str(out), "--image-size", "96"]
    code, stdout, err = cli(capsys, *args, "--method", "evit", "--keep", "0.5")
    assert code == 0, err
    with Image.open(out) as png:
        assert png.size == figure_size(1 + 3)  # the input and EViT's blocks 3, 6, 9
        pixels = np.asarray(png.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # an image, not a blank page
    assert "random weights" in stdout and "3, 6, 9" in stdout
    assert [p.name for p in out.parent.iterdir()] == ["evit.png"]  # no temporary left over


def test_cli_draws_a_bundle_with_chosen_layers(tome_bundle, tmp_path, capsys):
    image = natural_image(tmp_path / "scene.png", (96, 96))
    out = tmp_path / "tome.png"
    code, stdout, err = cli(
        capsys, "visualize", str(tome_bundle), str(image), "-o", str(out), "--layers", "0,11"
    )
    assert code == 0, err
    with Image.open(out) as png:
        assert png.size == figure_size(3)
    assert f"{TINY_BUNDLE_MODEL} with tome" in stdout and "random weights" in stdout
    assert TINY_BUNDLE_SIZE == 96


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["MODEL", "IMAGE"], ["name a reduction", "--method"]),
        (["MODEL", "IMAGE", "--method", "nope"], ["unknown method 'nope'"]),
        (["MODEL", "IMAGE", "--method", "tome", "--layers", "12"], ["--layers [12]", "0..11"]),
        (["MODEL", "IMAGE", "--config", "evit-keep0.5", "--method", "tome"], ["contradicts"]),
        (["MODEL", "IMAGE", "--method", "evit", "--keep", "2"], ["'keep' must be in (0, 1]"]),
        (["MODEL", "missing.png", "--method", "tome"], ["missing.png is not a file"]),
        (["MODEL", "TEXT", "--method", "tome"], ["is not an image"]),
        (["DIR", "IMAGE"], ["is not a trimformer bundle"]),
    ],
)
def test_cli_errors_are_one_line_with_exit_2(args, needles, tmp_path, capsys):
    image = natural_image(tmp_path / "scene.png", (32, 32))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    names = {
        "MODEL": TINY_BUNDLE_MODEL,
        "IMAGE": str(image),
        "DIR": str(tmp_path / "empty"),
        "missing.png": str(tmp_path / "missing.png"),
        "TEXT": str(tmp_path / "notes.txt"),
    }
    argv = [names.get(a, a) for a in args]
    out = tmp_path / "out.png"
    code, _, err = cli(capsys, "visualize", *argv, "-o", str(out), "--image-size", "32")
    assert_one_line_error(code, err, 2, *needles)
    assert not out.exists()


def test_cli_without_matplotlib_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    image = natural_image(tmp_path / "scene.png", (32, 32))
    args = [TINY_BUNDLE_MODEL, str(image), "-o", str(tmp_path / "o.png"), "--image-size", "32"]
    code, _, err = cli(capsys, "visualize", *args, "--method", "tome")
    assert_one_line_error(code, err, 2, "viz extra", "pip install matplotlib")

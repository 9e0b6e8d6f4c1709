"""sweep and tune: grids, the Pareto front, the bisection search, and both commands end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from test_cli import assert_one_line_error, cli

from trimformer.errors import UsageError
from trimformer.evaluation.fashion_mnist import DEFAULT_ROOT
from trimformer.profiles import load_reduction_config
from trimformer.tuning.measure import Point
from trimformer.tuning.points import Grid, parse_values
from trimformer.tuning.sweep import pareto_front
from trimformer.tuning.tune import Budget, best_within

SHIPPED = Path(__file__).resolve().parents[1] / "samples" / "models" / "fashion-mnist-vit"
needs_data = pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="Fashion-MNIST is missing")


def point(label: str, speedup: float, value: float) -> Point:
    return Point(label, "tome", {}, 1, 1, 1.0, 1.0, speedup, "top-1", value, 0.9, 1.0)


def test_values_parse_as_ranges_or_lists():
    assert parse_values("--r", "0:16:4") == [0, 4, 8, 12, 16]
    assert parse_values("--keep", "1.0,0.7,0.5") == [1.0, 0.7, 0.5]
    for bad in ("0:16", "a,b", "8:0:2", "0:8:0"):
        with pytest.raises(UsageError, match="give start:stop:step"):
            parse_values("--r", bad)


def test_grid_orders_mildest_first_and_maps_no_reduction_to_none():
    configs = Grid("evit", (0.5, 1.0, 0.7), (("layers", [1]),)).configs()
    assert [(c.method, c.params) for c in configs] == [
        ("none", {}),
        ("evit", {"layers": [1], "keep": 0.7}),
        ("evit", {"layers": [1], "keep": 0.5}),
    ]
    assert [c.source for c in Grid("tome", (8, 0)).configs()] == ["tome r=0", "tome r=8"]
    with pytest.raises(UsageError, match="has no strength knob"):
        Grid("keep_subset", (1,)).configs()


def test_pareto_front_keeps_only_undominated_points():
    points = [
        point("a", 1.0, 0.9),
        point("b", 1.5, 0.85),
        point("c", 1.2, 0.80),
        point("d", 2, 0.5),
    ]
    assert [p.label for p in pareto_front(points)] == ["d", "b", "a"]


def test_bisection_finds_the_mildest_value_in_log_steps():
    values = list(range(0, 33, 2))  # 17 values, speed grows with the value
    asked: list[int] = []

    def meets(v: int) -> bool:
        asked.append(v)
        return v >= 11

    assert best_within(values, meets) == 12
    assert len(asked) <= 1 + math.ceil(math.log2(len(values)))
    assert best_within(values, lambda v: False) is None
    assert best_within(values, lambda v: True) == 0


def test_budget_needs_exactly_one_positive_figure():
    with pytest.raises(UsageError, match="give one budget"):
        Budget()
    with pytest.raises(UsageError, match="give one budget"):
        Budget(latency_ms=5, speedup=1.2)
    with pytest.raises(UsageError, match="must be positive"):
        Budget(speedup=-1)
    assert Budget(speedup=1.2).met(point("x", 1.25, 0.5))
    assert not Budget(latency_ms=0.5).met(point("x", 1.25, 0.5))


@needs_data
def test_sweep_command_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, err = cli(
        capsys,
        *("sweep", str(SHIPPED), "--method", "tome", "--r", "0,16"),
        *("--data", "fashion-mnist", "--limit", "64", "--runs", "3", "-o", str(out)),
    )
    assert code == 0, err
    data = json.loads((out / "sweep.json").read_text())
    labels = [p["label"] for p in data["points"]]
    assert labels == ["tome r=0", "tome r=16"]
    first, second = data["points"]
    assert first["speedup"] == 1.0 and first["flops_ratio"] == 1.0
    assert second["flops_ratio"] > 1.1 and 0.0 <= second["value"] <= 1.0
    assert (out / "sweep.png").stat().st_size > 10_000
    assert "Pareto front" in stdout


@needs_data
def test_tune_writes_a_profile_export_accepts(tmp_path, capsys):
    out = tmp_path / "tuned.yaml"
    code, stdout, err = cli(
        capsys,
        *("tune", str(SHIPPED), "--device", "cpu-ort", "--speedup", "0.01"),
        *("--methods", "tome", "--data", "fashion-mnist", "--limit", "64", "--runs", "3"),
        *("-o", str(out)),
    )
    assert code == 0, err
    profile = yaml.safe_load(out.read_text())
    # Any config meets a 0.01x budget, so the mildest one wins: r=0, the full model.
    assert profile["method"] == "none" and profile["measured"]["speedup"] == 1.0
    assert load_reduction_config(str(out)).method == "none"
    # Bisection over tome's 17 values: the most aggressive, then log2 steps, then the scoring run.
    timed = int(re.search(r"timed (\d+) configs", stdout).group(1))
    assert timed <= 2 + math.ceil(math.log2(17)) < 17


@needs_data
def test_sweep_int8_quantizes_each_point_and_scores_against_ort_fp32(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, err = cli(
        capsys,
        *("sweep", str(SHIPPED), "--method", "tome", "--r", "0,16", "--precision", "int8"),
        *("--data", "fashion-mnist", "--limit", "64", "--runs", "3", "-o", str(out)),
    )
    assert code == 0, err
    assert "ort int8" in stdout
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [p["runtime"] for p in points] == ["ort int8", "ort int8"]
    # r=0 is the full model quantized: its agreement is int8's cost alone, with ort fp32
    full_int8, reduced_int8 = points
    assert 0.9 <= full_int8["agreement"] <= 1.0
    assert 0.8 <= reduced_int8["agreement"] <= 1.0 and reduced_int8["flops_ratio"] > 1.1


@needs_data
def test_tune_on_an_openvino_profile_times_on_openvino(tmp_path, capsys):
    pytest.importorskip("openvino")
    out = tmp_path / "tuned.yaml"
    code, stdout, err = cli(
        capsys,
        *("tune", str(SHIPPED), "--device", "cpu-openvino", "--speedup", "0.01"),
        *("--methods", "tome", "--data", "fashion-mnist", "--limit", "32", "--runs", "3"),
        *("-o", str(out)),
    )
    assert code == 0, err
    assert "on cpu-openvino" in stdout
    assert yaml.safe_load(out.read_text())["method"] == "none"


def test_tune_and_sweep_refuse_bad_requests(tmp_path, capsys):
    code, _, err = cli(
        capsys,
        "tune",
        str(SHIPPED),
        "--device",
        "jetson-orin-nano",
        "--speedup",
        "1.2",
        "--data",
        "fashion-mnist",
    )
    assert_one_line_error(code, err, 2, "is for tensorrt engines")
    code, _, err = cli(
        capsys,
        "sweep",
        str(SHIPPED),
        "--method",
        "tome",
        "--set",
        "keep=0.5",
        "--data",
        "fashion-mnist",
        "-o",
        str(tmp_path / "s"),
    )
    assert_one_line_error(code, err, 2, "--set keep: no method given takes it")
    assert not (tmp_path / "s").exists()

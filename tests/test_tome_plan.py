"""ToMe's parameters and plans: schedules, static token counts, clamping, validation."""

from __future__ import annotations

import pytest

from trimformer.methods import ConfigError, ModelGeometry, get_method, parse_params

DEIT = ModelGeometry(num_layers=12, num_tokens=197, protected=1)


def plan(geometry: ModelGeometry = DEIT, **params):
    method = get_method("tome")
    return method.plan(parse_params("tome", method.params_type, params), geometry)


def test_constant_r_like_the_paper():
    p = plan(r=13)
    assert p.tokens_per_layer[-1] == 197 - 12 * 13
    assert p.params["r_per_layer"] == [13] * 12
    assert all(layer == {"op": "BipartiteMerge", "r": 13, "protected": 1} for layer in p.layers)


def test_per_layer_list():
    p = plan(r=[0, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 0])
    assert p.layers[0] == {} and p.layers[-1] == {}
    assert p.tokens_per_layer[-1] == 197 - 80


def test_decreasing_schedule_keeps_the_total_and_starts_at_2r():
    p = plan(r=8, schedule="decreasing")
    applied = p.params["r_per_layer"]
    assert applied[0] == 16 and applied[-1] == 0
    assert applied == sorted(applied, reverse=True)
    assert abs(sum(applied) - 8 * 12) <= 12


def test_clamping_never_merges_below_two_unprotected_tokens():
    p = plan(ModelGeometry(num_layers=4, num_tokens=10, protected=1), r=5)
    assert p.params["r_per_layer"] == [4, 2, 1, 1]
    assert p.tokens_per_layer == (6, 4, 3, 2)


def test_r_zero_plans_no_reduction():
    assert not plan(r=0).reduces


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"r": -1}, "r must be >= 0"),
        ({"r": [1, 2]}, "12 layers"),
        ({"r": 1.5}, "key 'r' must be"),
        ({"ratio": 0.5}, "unknown key"),
        ({"r": 13, "schedule": "cosine"}, "key 'schedule'"),
        ({"r": [1] * 12, "schedule": "decreasing"}, "takes no schedule"),
        ({"proportional_attention": "yes"}, "proportional_attention"),
    ],
)
def test_invalid_params_name_the_key(params, message):
    with pytest.raises(ConfigError, match=message):
        plan(**params)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match="tome"):
        get_method("tomato")

"""Cost-balanced band plans: always a valid plan, and bands of about equal estimated cost."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fractal_app import bandplan
from fractal_app.bands import check_plan, plan_bands
from fractal_app.scene import parse_scene


@settings(max_examples=300, deadline=None)
@given(
    costs=st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=400),
    count=st.integers(1, 400),
)
def test_cut_by_cost_is_always_a_valid_plan(costs, count):
    costs = np.array(costs) + 1e-3  # the planner's floor keeps real costs above zero
    count = min(count, costs.shape[0])
    plan = bandplan.cut_by_cost(costs, count)
    assert len(plan) == count
    check_plan(plan, costs.shape[0])


def test_even_costs_give_even_bands():
    plan = bandplan.cut_by_cost(np.ones(100), 4)
    assert plan == [(0, 25), (25, 50), (50, 75), (75, 100)]


def test_a_costly_stretch_gets_short_bands():
    costs = np.ones(1000)
    costs[100:200] = 100.0  # 10,000 of 10,900 units of work in 100 rows
    plan = bandplan.cut_by_cost(costs, 10)
    sums = [costs[a:b].sum() for a, b in plan]
    assert max(sums) / np.mean(sums) < 1.1
    assert sum(1 for a, b in plan if b <= 200 and a >= 100) >= 7


def test_cut_by_cost_refuses_more_bands_than_rows():
    with pytest.raises(ValueError, match="non-empty"):
        bandplan.cut_by_cost(np.ones(3), 4)


def test_sample_grid_respects_the_iteration_budget():
    rows, cols = bandplan.sample_grid(4320, 7680, 20_000)
    samples = rows.size * cols.size
    assert bandplan.MIN_SAMPLES <= samples
    assert samples * 20_000 <= bandplan.ITERATION_BUDGET * 1.05
    assert rows.min() >= 0 and rows.max() < 4320 and cols.max() < 7680
    rows, cols = bandplan.sample_grid(3, 5, 10)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [0, 1, 2, 3, 4]


def test_the_set_at_the_top_gets_the_short_bands():
    # The main cardioid fills the top of this view; the bottom is far outside the set.
    scene = parse_scene(
        {
            "fractal": "mandelbrot",
            "resolution": [96, 256],
            "center": [-0.3, -0.9],
            "width": 1.0,
            "max_iter": 2000,
        }
    )
    plan = bandplan.plan_bands_by_cost(scene, 4)
    check_plan(plan, 256)
    heights = [b - a for a, b in plan]
    assert heights[0] < 64 < heights[-1]
    costs = bandplan.row_costs(scene)
    assert bandplan.plan_cost_spread(costs, plan) < bandplan.plan_cost_spread(
        costs, plan_bands(256, 4)
    )
    assert bandplan.plan_cost_spread(costs, plan) < 1.15


def test_bands_of_cheap_rows_stay_bounded():
    costs = np.full(1000, 1.0)
    costs[:100] = 1000.0
    share = bandplan.MIN_ROW_COST_SHARE
    floored = np.maximum(costs, share * costs.mean())
    plan = bandplan.cut_by_cost(floored, 10)
    even = 1000 / 10
    tallest = max(b - a for a, b in plan)
    assert even < tallest <= even * (1 + 1 / share) + 1


def test_3d_scenes_and_tiny_images_get_the_even_plan():
    bulb = parse_scene({"fractal": "mandelbulb", "resolution": [16, 40]})
    assert bandplan.plan_bands_by_cost(bulb, 4) == plan_bands(40, 4)
    flat = parse_scene({"fractal": "mandelbrot", "resolution": [16, 3]})
    assert bandplan.plan_bands_by_cost(flat, 8) == plan_bands(3, 8)
    assert bandplan.plan_bands_by_cost(flat, 1) == [(0, 3)]

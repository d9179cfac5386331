"""The band plan: every row exactly once, as many bands as allowed, none empty."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fractal_app.bands import band_memory_mib, check_plan, plan_bands


@given(height=st.integers(1, 70_000), max_bands=st.integers(1, 5_000))
def test_plan_covers_every_row_once_with_as_many_bands_as_allowed(height, max_bands):
    bands = plan_bands(height, max_bands)
    check_plan(bands, height)
    assert len(bands) == min(height, max_bands)
    sizes = [stop - start for start, stop in bands]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1


def test_plan_examples():
    assert plan_bands(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert plan_bands(2, 8) == [(0, 1), (1, 2)]
    assert plan_bands(5, 1) == [(0, 5)]


@pytest.mark.parametrize(("height", "max_bands"), [(0, 1), (5, 0), (5, -2)])
def test_plan_rejects_impossible_requests(height, max_bands):
    with pytest.raises(ValueError):
        plan_bands(height, max_bands)


@pytest.mark.parametrize(
    "bands",
    [[(0, 4), (5, 10)], [(0, 4), (4, 4), (4, 10)], [(0, 9)], [(1, 10)], [(0, 6), (3, 10)]],
)
def test_check_plan_rejects_gaps_overlaps_and_empty_bands(bands):
    with pytest.raises(ValueError):
        check_plan(bands, 10)


def test_memory_estimate_grows_with_the_band():
    small = band_memory_mib(10, 100, "image", 8, 1)
    assert band_memory_mib(1000, 100, "image", 8, 1) > small
    assert band_memory_mib(10, 100, "image", 16, 1) > small
    assert band_memory_mib(10, 100, "image", 8, 4) > small

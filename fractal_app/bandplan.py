"""Band boundaries with equal estimated cost, so every provider stays busy to the end.

Rows near the set cost far more than rows far from it (an interior pixel runs all
``max_iter`` iterations, an outside one a handful), so equal-height bands can leave one
provider grinding through the band that holds the set while the others are done. At
CreateTask the requestor therefore renders escape counts for a coarse grid of the image's own
pixels (a few thousand, sized to a fixed iteration budget), turns them into a cost per row,
and cuts the rows where the running cost crosses equal shares.

The plan keeps the contract of :func:`fractal_app.bands.plan_bands`: exactly
``min(height, max_bands)`` bands covering every row, none empty. It is computed once and
stored with the task, so the estimate never has to be reproducible.

A row's cost also has a part that does not depend on iterations (colouring, PNG encode and
decode, verification, merging): every sample costs at least ``PIXEL_OVERHEAD_ITERATIONS``,
and every row at least ``MIN_ROW_COST_SHARE`` of the mean row. The floor also bounds how tall
a band of cheap rows can grow (about ``1 + 1 / MIN_ROW_COST_SHARE`` times the even height at
most, while no single row costs more than a band's share), and so a provider's memory.
"""

from __future__ import annotations

import math

import numpy as np

from fractal_app.bands import Band, bands_between, check_plan, plan_bands
from fractal_app.outputs import COUNTS

# Escape-time iterations the estimate may spend at most (all samples inside the set): about
# 50 ms on two cores with the scalar kernel, a few ms with the block kernels.
ITERATION_BUDGET = 50_000_000
MIN_SAMPLES = 1024
MAX_SAMPLES = 16_384
# Deep views (perturbation against an arbitrary-precision orbit) cost about 20x more per
# iteration, plus the orbit itself: a smaller budget keeps CreateTask under a second.
DEEP_ITERATION_BUDGET = 4_000_000
DEEP_MIN_SAMPLES = 256
# Sample columns per sampled row: enough to average a row's cost, the rest go to rows.
MAX_SAMPLE_COLUMNS = 64
# What a sample costs beyond its iterations (colouring, encode/decode, copies), in iterations.
PIXEL_OVERHEAD_ITERATIONS = 32.0
# No row is estimated below this share of the mean row cost.
MIN_ROW_COST_SHARE = 0.25


def plan_bands_by_cost(scene, max_bands: int) -> list[Band]:
    """Cut ``scene`` into ``min(height, max_bands)`` row bands of about equal estimated cost.

    3D scenes (no escape counts to estimate from) and images with too few rows to gain
    anything get the even plan of :func:`fractal_app.bands.plan_bands`.
    """
    height = scene.height_px
    count = min(height, max_bands)
    if scene.is_3d or count < 2 or count == height:
        return plan_bands(height, max_bands)
    plan = cut_by_cost(row_costs(scene), count)
    check_plan(plan, height)
    return plan


def sample_grid(height: int, width: int, max_iter: int, deep: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """The rows and columns the estimate samples: centres of equal strata of the image.

    The number of samples is ITERATION_BUDGET / max_iter, clamped to
    [MIN_SAMPLES, MAX_SAMPLES]; columns get at most MAX_SAMPLE_COLUMNS, rows the rest.
    """
    budget, least = (DEEP_ITERATION_BUDGET, DEEP_MIN_SAMPLES) if deep else (
        ITERATION_BUDGET, MIN_SAMPLES)
    samples = min(MAX_SAMPLES, max(least, budget // max(1, max_iter)))
    n_cols = min(width, MAX_SAMPLE_COLUMNS, max(1, math.isqrt(samples)))
    n_rows = min(height, max(1, samples // n_cols))
    rows = ((np.arange(n_rows) + 0.5) * height / n_rows).astype(np.int64)
    cols = ((np.arange(n_cols) + 0.5) * width / n_cols).astype(np.int64)
    return rows, cols


def estimate_max_iter(max_iter: int, deep: bool = False) -> int:
    """The iteration cap of the estimate: the scene's own, unless that would blow the budget
    even at MIN_SAMPLES (very deep zooms); then interior rows are underestimated a little."""
    if deep:
        return max(1, min(max_iter, DEEP_ITERATION_BUDGET // DEEP_MIN_SAMPLES))
    return max(1, min(max_iter, ITERATION_BUDGET // MIN_SAMPLES))


def row_costs(scene) -> np.ndarray:
    """Estimated cost of every row of a 2D scene, in escape-time iterations (float64, (H,))."""
    from fractal_app import render

    height, width = scene.height_px, scene.width_px
    deep = bool(getattr(scene, "deep", False))
    rows, cols = sample_grid(height, width, scene.max_iter, deep)
    # Escape counts of the image's own pixel centres: same geometry, no colouring.
    probe = scene.model_copy(
        update={
            "output": COUNTS.name,
            "supersample": 1,
            "max_iter": estimate_max_iter(scene.max_iter, deep),
        }
    )
    grid_rows = np.repeat(rows, cols.shape[0])
    grid_cols = np.tile(cols, rows.shape[0])
    counts = render.render_pixels(probe, grid_rows, grid_cols, "cpu")
    per_sample = counts.reshape(rows.shape[0], cols.shape[0]).astype(np.float64)
    sampled = per_sample.mean(axis=1) + PIXEL_OVERHEAD_ITERATIONS
    sampled = np.maximum(sampled, MIN_ROW_COST_SHARE * sampled.mean())
    # Each image row takes the cost of the sampled row of its stratum.
    stratum = (np.arange(height) * rows.shape[0]) // height
    return sampled[stratum] * (scene.supersample**2)


def cut_by_cost(costs: np.ndarray, count: int) -> list[Band]:
    """``count`` bands of consecutive rows whose summed ``costs`` are as equal as rows allow.

    Cuts fall where the running cost crosses k/count of the total; each band keeps at least
    one row.
    """
    height = costs.shape[0]
    if not 1 <= count <= height:
        raise ValueError(f"cannot cut {height} rows into {count} non-empty bands")
    cumulative = np.cumsum(costs, dtype=np.float64)
    targets = cumulative[-1] * np.arange(1, count) / count
    # Cut after the row where the running cost is closest to each target.
    after = np.searchsorted(cumulative, targets, side="left")
    before = np.maximum(after - 1, 0)
    closer_before = np.abs(cumulative[before] - targets) <= np.abs(cumulative[after] - targets)
    cuts = np.where(closer_before & (after > 0), before, after) + 1
    bounds = [0, *(int(c) for c in cuts), height]
    # Every band at least one row: push cuts forward, then back from the end.
    for k in range(1, count):
        bounds[k] = max(bounds[k], bounds[k - 1] + 1)
    for k in range(count - 1, 0, -1):
        bounds[k] = min(bounds[k], bounds[k + 1] - 1)
    return bands_between(bounds)


def plan_cost_spread(costs: np.ndarray, plan: list[Band]) -> float:
    """The costliest band's estimated cost over the mean band's (1.0 = perfectly even)."""
    cumulative = np.concatenate([[0.0], np.cumsum(costs, dtype=np.float64)])
    band_costs = np.array([cumulative[stop] - cumulative[start] for start, stop in plan])
    return float(band_costs.max() / band_costs.mean())

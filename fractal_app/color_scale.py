"""The "auto" colour scale: palette positions that follow the view's own distribution of
escape counts, resolved once per scene.

On the "iterations" scale a sample's palette position is log(1 + count) / log(1 + max_iter):
a deep view, whose counts all sit in a narrow band far from zero, gets a sliver of the
palette and comes out nearly one colour (nearly black with the classic palette). On the
"auto" scale the position is the share of the view's samples that escape with a lower count
(histogram equalisation, over SPAN_CYCLES turns of the palette): a coarse preview of the
view's own pixels (a fixed grid, whatever the resolution or max_iter) gives the empirical
distribution, and ``color_knots`` keeps it as a few (count, position) points; the kernels
interpolate between them linearly in log(1 + count) (kernels/color.py ``knot_position``).

Positions are shares of *all* the preview's samples, inside ones included, so they do not
depend on max_iter: raising max_iter from 5,000 to 20,000 turns some inside samples into
escaped ones with counts above 5,000, and leaves every knot below 5,000 where it was. A pixel
keeps its colour where its count stays the same.

Providers and the verifier must colour with the very same knots, so they are resolved once
(:func:`resolve`: the requestor at CreateTask, which every way of rendering a task goes
through) and travel inside the scene every provider receives. A scene rendered on its own,
outside a task (tests, the explorer's tiles), is resolved on first use, by the same function.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# The preview: at most PREVIEW_SIDE x PREVIEW_SIDE pixel centres, one per equal stratum of
# the image, iterated to at most PREVIEW_ITERATION_BUDGET iterations in all (1024 samples:
# counts up to 31,250 are seen; a deep preview at that cap, all inside, about 1 s here).
PREVIEW_SIDE = 32
PREVIEW_ITERATION_BUDGET = 32_000_000
# Knots at every 1/SEGMENTS of the samples (plus one where the escaped ones end): 32 samples
# a segment, enough to smooth the preview's noise, few enough to follow the distribution.
SEGMENTS = 32

# Palette cycles the auto scale spans over all the view's samples (palette_cycles multiplies
# it): over one cycle, the top eighth of the counts (the structure around the set, what a
# deep view is about) fell on the classic palette's dark end and merged with the inside;
# three (measured against 1, 2, 5 and 8 at 1e-10 and 1e-50) keep the bands wide and the
# edge of the set lit.
SPAN_CYCLES = 3.0

# The kernels' "no knots" table: the iterations scale.
NO_KNOTS = np.zeros((0, 2), dtype=np.float64)
NO_KNOTS.flags.writeable = False


def needs_knots(scene) -> bool:
    """Whether ``scene`` colours on the auto scale and its knots are not resolved yet."""
    return (
        getattr(scene, "color_scale", None) == "auto"
        and scene.color_knots is None
        and scene.output_format.coloured
    )


def resolve(scene):
    """``scene`` with its auto scale's knots filled in from a preview of the view (the same
    scene when it needs none). The requestor calls this once per task, before it writes the
    scene the providers get."""
    if not needs_knots(scene):
        return scene
    return scene.model_copy(update={"color_knots": _remembered_knots(scene)})


def kernel_knots(scene) -> np.ndarray:
    """The (K, 2) float64 table the colouring kernel takes: rows (log(1 + count), position),
    or NO_KNOTS for the iterations scale."""
    if getattr(scene, "color_scale", None) != "auto":
        return NO_KNOTS
    knots = scene.color_knots
    if knots is None:
        knots = _remembered_knots(scene)
    return np.array([(math.log(1.0 + count), position) for count, position in knots],
                    dtype=np.float64)


def _remembered_knots(scene) -> tuple[tuple[float, float], ...]:
    """preview_knots of ``scene``, computed once per scene for the last few scenes (from the
    scene its JSON describes: a copy nudged for verification previews the view itself)."""
    return _knots_of_json(scene.to_json())


@functools.lru_cache(maxsize=8)
def _knots_of_json(scene_json: str) -> tuple[tuple[float, float], ...]:
    from fractal_app.scene import parse_scene

    return preview_knots(parse_scene(scene_json))


def preview_knots(scene) -> tuple[tuple[float, float], ...]:
    """The auto scale's knots of a 2D scene, from the escape counts of its preview."""
    counts, cap = preview_counts(scene)
    return knots_from_counts(counts, cap, bool(scene.smooth))


def preview_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the preview: centres of equal strata of the image."""
    n_rows, n_cols = min(height, PREVIEW_SIDE), min(width, PREVIEW_SIDE)
    rows = ((np.arange(n_rows) + 0.5) * height / n_rows).astype(np.int64)
    cols = ((np.arange(n_cols) + 0.5) * width / n_cols).astype(np.int64)
    return rows, cols


def preview_cap(max_iter: int, samples: int) -> int:
    """The preview's iteration limit: max_iter, or less when the budget runs out."""
    return max(1, min(max_iter, PREVIEW_ITERATION_BUDGET // max(1, samples)))


def preview_counts(scene) -> tuple[np.ndarray, int]:
    """Escape counts of the preview's pixel centres (1-D uint32) and the limit they ran to:
    a count at the limit is inside as far as the preview knows."""
    from fractal_app import render
    from fractal_app.outputs import COUNTS

    rows, cols = preview_grid(scene.height_px, scene.width_px)
    cap = preview_cap(scene.max_iter, rows.size * cols.size)
    probe = scene.model_copy(update={"output": COUNTS.name, "supersample": 1, "max_iter": cap})
    counts = render.render_pixels(probe, np.repeat(rows, cols.size), np.tile(cols, rows.size))
    return counts, cap


def knots_from_counts(
    counts: np.ndarray, cap: int, smooth: bool, segments: int = SEGMENTS
) -> tuple[tuple[float, float], ...]:
    """Knots (count, position) of the equalising scale of these preview counts.

    Each sample stands for a unit interval of continuous counts, [n + 0.5, n + 1.5) when
    smooth (where the smooth count of a sample escaping at n mostly lies) or [n, n + 1):
    so ties spread out and the distribution function F rises strictly. Knot k sits at the
    count where F reaches k / segments of *all* samples, for as long as the escaped ones
    reach; one more marks where they end. Positions are SPAN_CYCLES times those shares.
    Samples at ``cap`` are inside: they have no count.
    """
    counts = np.asarray(counts).reshape(-1)
    n = counts.size
    escaped = np.sort(counts[counts < cap]).astype(np.float64)
    m = escaped.size
    if m == 0:
        # Nothing escaped in the preview: fall back to a log scale over [0, cap].
        return ((0.0, 0.0), (float(cap), SPAN_CYCLES))
    start = 0.5 if smooth else 0.0

    def count_at(j: float) -> float:
        """The continuous count below which j of the n samples lie (0 <= j <= m)."""
        i = min(int(j), m - 1)
        value = escaped[i]
        below = int(np.searchsorted(escaped, value, side="left"))
        same = int(np.searchsorted(escaped, value, side="right")) - below
        return start + value + (j - below) / same

    shares = [k * n / segments for k in range(segments + 1) if k * n / segments <= m]
    if m - shares[-1] >= 0.5:
        shares.append(m)
    knots = []
    for j in shares:
        count = float(count_at(j))
        # The kernel interpolates in log(1 + count): keep those strictly rising too.
        if not knots or math.log(1.0 + count) > math.log(1.0 + knots[-1][0]):
            knots.append((count, SPAN_CYCLES * j / n))
    return tuple(knots)

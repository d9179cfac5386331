"""The spot check: is a provider's band what an honest render would have produced?

Our pixels are deterministic, so the requestor recomputes sampled pixels itself (the CPU
kernels, :func:`fractal_app.render.render_pixels`) and compares. Steps, cheapest first:

1. Structure: the result folder holds exactly one regular file, and that file is a band PNG
   of exactly this band's size, mode and bit depth naming this task, subtask and rows
   (:func:`fractal_app.bandfile.read_band`, which treats the file as hostile).
2. Samples, drawn with a CSPRNG only now, after the result exists, so a provider cannot know
   them: ``UNIFORM_SAMPLES`` stratified uniformly over the band, plus ``WEIGHTED_SAMPLES``
   drawn in proportion to the requestor's own cheap low-resolution estimate of each region's
   cost (a provider that skips only the expensive pixels is sampled where it cheated). A band
   of at most ``FULL_CHECK_PIXELS`` pixels is checked in full (with the fast band kernels).
3. Recompute and compare: escape counts exactly, colours to within the output format's
   ``tolerance`` (a few quantisation steps, measured; ``outputs.py``).
4. Excuse honest floating-point differences. A GPU contracts multiply-adds (FMA), and that
   changes the escape count of pixels whose orbit is chaotic: measured with an
   FMA-contracted variant of our kernels, 0.003% of the pixels of the classic Mandelbrot
   view, 0.3% of a seahorse-valley zoom, 2.5% of the burning ship's default view and 5% of
   a float32 Julia set. A differing sample is *floating-point sensitive*, and excused, when
   the requestor's own recomputation shows that its value is not pinned down by the input:
   nudging the view by ``PERTURBATION_ULPS`` units in the last place (four directions, two
   sizes) moves it by more than half the tolerance; or (2D) it looks inside the set but is
   at its edge: a neighbour escapes, or it escapes itself within ``SLOW_ESCAPE_FACTOR``
   times max_iter (a wandering orbit, whose escape time rounding decides). A pixel the
   recompute sees escape must be matched, so "inside" never excuses skipped iterations.
   Any other difference is a *hard* mismatch. Only differing samples are re-rendered here.
5. Accept when at most ``HARD_TOLERANCE`` samples are hard mismatches.

The guarantee (:func:`pass_probability`): call a pixel *wrong* when its value differs from
the recomputed one by more than the tolerance and it is not floating-point sensitive. A band
in which a fraction f of the pixels is wrong, arranged in any way and whatever their cost,
is accepted with probability at most ``binom_cdf(HARD_TOLERANCE; UNIFORM_SAMPLES, f)``: with
1,000 uniform samples and 2 tolerated hard mismatches, 3.9e-7 for f = 2% (the issue asks
<= 1e-3) and 2.7e-3 for f = 1%; a band checked in full with f >= 2% is never accepted.
Stratified sampling never raises this (Hoeffding 1956, Theorem 4: among independent trials
with a given mean number of successes, the chance of at most c < mean - 1 successes is
largest when all trials are alike, i.e. for independent uniform samples). The cost-weighted
samples only add rejections; they catch a provider that cheats only on expensive pixels
even when those are few: if its wrong pixels carry a share g of the estimated cost, it passes
with probability at most ``binom_cdf(HARD_TOLERANCE; WEIGHTED_SAMPLES, g)``.
Honest bands: over 40 looks at the test suite's ten 2D views (320x180 each, 2.3 million
pixels, 8/16-bit, counts, float32), the FMA variant changed 57,958 pixels (2.5%; up to 29%
in a float32 burning-ship zoom) and the sensitivity tests excused all but 1 of them. So an
honest band meets the tolerance of 2 hard mismatches in 1,200 samples with overwhelming
probability; the tests check 200+ honest bands.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fractal_app import errors
from fractal_app.bandfile import BandFileError, BandMeta, read_band
from fractal_app.bands import row_pieces, worst_pixel_cost
from fractal_app.outputs import COUNTS

# --------------------------------------------------------------------------- the plan
WRONG_FRACTION = 0.02  # the issue: a band with >= 2% wrong pixels ...
MAX_PASS_PROBABILITY = 1e-3  # ... passes with probability at most 1 in 1,000
UNIFORM_SAMPLES = 1000
WEIGHTED_SAMPLES = 200
# Bands this small are checked pixel by pixel.
FULL_CHECK_PIXELS = UNIFORM_SAMPLES + WEIGHTED_SAMPLES
# Hard mismatches accepted: more than zero so that one unlucky sensitivity test cannot reject
# an honest band; small so that bands with only 1% wrong pixels are caught as well.
HARD_TOLERANCE = 2
# The view is nudged by these many units in the last place to test a pixel's sensitivity.
PERTURBATION_ULPS = (8, 512)
# An "inside" pixel that escapes within this many times max_iter iterations (at most 2^24, at
# least 4 times) has a wandering orbit: where it escapes depends on rounding.
SLOW_ESCAPE_FACTOR = 64
# Pixels recomputed per render_pixels call: about CHUNK_STEPS inner-loop steps (some tens of
# milliseconds), so the cancel flag, checked between calls, is seen quickly.
CHUNK_STEPS = 1 << 24
MIN_CHUNK = 8
MAX_CHUNK = 4096
# A render call with less work than this (inner-loop steps, an upper estimate) runs on one
# thread.
SERIAL_STEPS = 1 << 23
# The same for a 2D pixel list: render_pixels runs the block kernels there (about 8x more
# steps a second than the scalar loop SERIAL_STEPS was set with, 2.8 G steps/s on one core
# measured for verification's samples), so a call is worth a second thread only when it is
# this large; smaller ones lost more to waking the threads (10-30 ms a call when loaded).
SERIAL_STEPS_2D = 1 << 27
# Differing samples tested for sensitivity per round (stops once the verdict is certain).
CLASSIFY_BATCH = 64
# The low-resolution cost estimate: at most this grid of points per band, iterations capped.
ESTIMATE_ROWS = 8
ESTIMATE_COLS = 32
ESTIMATE_MAX_ITER = 2048
# Mismatches described in a reason string.
REASON_EXAMPLES = 3


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed exactly in log space."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    return min(1.0, sum(
        math.exp(base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        for i in range(k + 1)
    ))


def pass_probability(wrong_fraction: float, samples: int = UNIFORM_SAMPLES,
                     tolerance: int = HARD_TOLERANCE, band_pixels: int | None = None) -> float:
    """Upper bound on the chance that a band with this fraction of wrong pixels is accepted.

    ``samples`` uniform (stratified) samples with at most ``tolerance`` mismatches accepted:
    the binomial lower tail. A band of ``band_pixels`` <= FULL_CHECK_PIXELS is checked in
    full, so the answer is exact: 1 if its wrong pixels fit within the tolerance, else 0.
    """
    if band_pixels is not None and band_pixels <= FULL_CHECK_PIXELS:
        wrong = math.ceil(wrong_fraction * band_pixels - 1e-9)
        return 1.0 if wrong <= full_check_tolerance(band_pixels) else 0.0
    return binom_cdf(tolerance, samples, wrong_fraction)


def full_check_tolerance(band_pixels: int) -> int:
    """Hard mismatches allowed when every pixel is checked: fewer than WRONG_FRACTION of them,
    and never more than HARD_TOLERANCE."""
    return max(0, min(HARD_TOLERANCE, math.ceil(WRONG_FRACTION * band_pixels) - 1))


# The bound the code promises, checked at import so a change to the plan that breaks it
# fails loudly (not an assert: those vanish under python -O).
if pass_probability(WRONG_FRACTION) > MAX_PASS_PROBABILITY:
    raise RuntimeError("the sampling plan no longer meets the stated bound")


# --------------------------------------------------------------------------- the verdict
@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # a person can read it: what was checked, what failed, where
    values: np.ndarray | None = field(default=None, repr=False)  # the band, when accepted


def verify_band(scene, meta: BandMeta, result_dir: Path, cancel: threading.Event) -> Verdict:
    """Check a provider's band (see the module docstring); synchronous, run it in a thread.

    Raises errors.FailedPrecondition when the result file does not exist yet and
    errors.Aborted when ``cancel`` is set (checked between steps and between chunks of
    recomputed pixels).
    """
    _check_cancel(cancel)
    try:
        path = _the_one_file(Path(result_dir))
        values = read_band(path, meta, scene.width_px, scene.bit_depth)
    except BandFileError as exc:
        return Verdict(False, f"rejected: {exc}")
    _check_cancel(cancel)
    rng = np.random.default_rng(secrets.randbits(128))
    report = check_values(scene, meta, values, rng, cancel)
    return Verdict(report.accepted, report.reason(), values if report.accepted else None)


def _check_cancel(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise errors.Aborted("verification stopped: the subtask or task was aborted")


def _the_one_file(result_dir: Path) -> Path:
    """The single regular file in the result folder (BandFileError for anything else)."""
    try:
        info = os.lstat(result_dir)
    except FileNotFoundError:
        raise errors.FailedPrecondition(
            f"no result yet: {result_dir.name}/ does not exist"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise BandFileError("the result folder is not a directory")
    # Read at most a few names: a folder stuffed with files costs no more than one with two.
    with os.scandir(result_dir) as scan:
        entries = sorted(entry.name for entry in itertools.islice(scan, 6))
    if not entries:
        raise errors.FailedPrecondition(f"no result yet: {result_dir.name}/ is empty")
    if len(entries) != 1:
        shown = ", ".join(repr(e[:40]) for e in entries[:5])
        count = f"{len(entries)}" if len(entries) < 6 else "6 or more"
        raise BandFileError(
            f"the result folder must hold exactly one file (the band PNG); it holds "
            f"{count}: {shown}"
        )
    return result_dir / entries[0]


# --------------------------------------------------------------------------- sampling
def stratified_indices(n_pixels: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` pixel indices (raster order), one uniform in each of ``count`` equal strata.

    Every pixel is hit with total probability count / n_pixels, so the expected number of
    wrong samples is exactly count * f, as for independent uniform samples.
    """
    offsets = rng.random(count)
    return np.minimum(((np.arange(count) + offsets) * n_pixels / count).astype(np.int64),
                      n_pixels - 1)


def _estimate_grid(rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid points (band-relative row and column of each cell's centre pixel) and cell edges."""
    n_rows, n_cols = min(rows, ESTIMATE_ROWS), min(width, ESTIMATE_COLS)
    row_edges = np.linspace(0, rows, n_rows + 1).round().astype(np.int64)
    col_edges = np.linspace(0, width, n_cols + 1).round().astype(np.int64)
    return row_edges, col_edges


def estimate_costs(scene, meta: BandMeta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The requestor's own cheap cost estimate: (row_edges, col_edges, cost per cell).

    2D: the escape count (capped at ESTIMATE_MAX_ITER) at each cell's centre pixel. 3D: the
    ray marcher's cost is not exposed, so every cell costs the same (weighted samples are
    then uniform too).
    """
    row_edges, col_edges = _estimate_grid(meta.rows, scene.width_px)
    n_rows, n_cols = len(row_edges) - 1, len(col_edges) - 1
    if scene.is_3d:
        return row_edges, col_edges, np.ones((n_rows, n_cols))
    from fractal_app.render import render_pixels

    centre_rows = (row_edges[:-1] + row_edges[1:] - 1) // 2 + meta.row_start
    centre_cols = (col_edges[:-1] + col_edges[1:] - 1) // 2
    grid_rows, grid_cols = np.meshgrid(centre_rows, centre_cols, indexing="ij")
    cheap = scene.model_copy(update={
        "output": COUNTS.name, "supersample": 1, "max_iter": min(scene.max_iter, ESTIMATE_MAX_ITER),
    })
    with _threads_for(grid_rows.size * cheap.max_iter, SERIAL_STEPS_2D):
        counts = render_pixels(cheap, grid_rows.ravel(), grid_cols.ravel())
    return row_edges, col_edges, counts.reshape(n_rows, n_cols).astype(np.float64) + 1.0


def weighted_indices(row_edges, col_edges, costs, width: int, count: int,
                     rng: np.random.Generator) -> np.ndarray:
    """``count`` pixel indices drawn with probability proportional to the estimated cost."""
    heights = np.diff(row_edges)[:, None]
    widths = np.diff(col_edges)[None, :]
    mass = (costs * heights * widths).ravel()
    cells = rng.choice(mass.size, size=count, p=mass / mass.sum())
    cell_row, cell_col = np.divmod(cells, costs.shape[1])
    rows = row_edges[cell_row] + (rng.random(count) * heights.ravel()[cell_row]).astype(np.int64)
    cols = col_edges[cell_col] + (rng.random(count) * widths.ravel()[cell_col]).astype(np.int64)
    return rows * width + cols


def sample_indices(n_pixels: int, width: int, estimate, rng: np.random.Generator) -> np.ndarray:
    """The pixels to recompute (band raster indices): UNIFORM_SAMPLES stratified uniform ones
    first, then WEIGHTED_SAMPLES drawn by ``estimate`` = (row_edges, col_edges, costs)."""
    uniform = stratified_indices(n_pixels, UNIFORM_SAMPLES, rng)
    weighted = weighted_indices(*estimate, width, WEIGHTED_SAMPLES, rng)
    return np.concatenate([uniform, weighted])


def accepts(hard_mismatches: int, tolerance: int = HARD_TOLERANCE) -> bool:
    """The decision: accepted when at most ``tolerance`` samples are hard mismatches."""
    return hard_mismatches <= tolerance


# --------------------------------------------------------------------------- comparing
@dataclass
class CheckReport:
    """What the pixel check found; ``reason()`` words it for a person."""

    band_pixels: int
    checked: int = 0
    full: bool = False
    weighted: int = 0
    tolerance: int = HARD_TOLERANCE
    hard: list = field(default_factory=list)  # (row, col, got, expected)
    soft: list = field(default_factory=list)
    differing: int = 0
    value_tol: int = 0  # the output format's tolerance: largest difference counted as equal
    comparison: str = ""  # how values were compared, in words

    @property
    def accepted(self) -> bool:
        return accepts(len(self.hard), self.tolerance)

    def _where(self, items) -> str:
        def value(v):
            return str(int(v)) if np.ndim(v) == 0 else "(" + ",".join(str(int(c)) for c in v) + ")"

        return "; ".join(f"row {r} col {c}: {value(g)} vs recomputed {value(e)}"
                         for r, c, g, e in items[:REASON_EXAMPLES])

    def reason(self) -> str:
        how = (f"all {self.checked:,} pixels recomputed" if self.full else
               f"{self.checked:,} of {self.band_pixels:,} pixels recomputed "
               f"({self.checked - self.weighted:,} stratified uniform, {self.weighted:,} "
               f"weighted to expensive pixels)")
        head = f"{how}, {self.comparison}: {self.differing:,} differ"
        hard, soft = len(self.hard), len(self.soft)
        examined = hard + soft
        parts = []
        if hard:
            of = f"{hard} of the {examined} examined" if examined < self.differing else f"{hard}"
            parts.append(f"{of} not at floating-point-sensitive pixels ({self._where(self.hard)})")
        if soft:
            parts.append(f"{soft} only at floating-point-sensitive pixels, excused "
                         f"({self._where(self.soft)})")
        detail = ("; " + "; ".join(parts)) if parts else ""
        limit = f"at most {self.tolerance} may differ outside floating-point-sensitive pixels"
        verdict = "accepted" if self.accepted else "rejected"
        return f"{verdict}: {head}{detail}; {limit}"


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample difference: |count difference|, or the largest channel difference."""
    d = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return d if d.ndim == 1 else d.max(axis=1)


def chunk_size(scene) -> int:
    """Pixels per render_pixels call: about CHUNK_STEPS of work, so cancel is seen quickly,
    but as many as that allows, since every call has a fixed cost (threads, colour set-up)."""
    return int(min(MAX_CHUNK, max(MIN_CHUNK, CHUNK_STEPS // worst_pixel_cost(scene))))


def _threads_for(steps: int, serial_steps: int = SERIAL_STEPS):
    """One thread for a small call: waking the kernel's thread team costs more than it
    saves there (measured: 30 ms a call on this loaded 2-core machine, 0.4 ms with one
    thread). Numba's thread count is per calling thread, so this touches no one else."""
    from fractal_app.kernels.threads import one_thread_if

    return one_thread_if(steps < serial_steps)


def _render_chunked(scene, rows: np.ndarray, cols: np.ndarray, cancel) -> np.ndarray:
    from fractal_app.render import render_pixels

    parts = []
    chunk = chunk_size(scene)
    serial_steps = SERIAL_STEPS if scene.is_3d else SERIAL_STEPS_2D
    for start in range(0, rows.size, chunk):
        _check_cancel(cancel)
        some_rows, some_cols = rows[start:start + chunk], cols[start:start + chunk]
        with _threads_for(some_rows.size * worst_pixel_cost(scene), serial_steps):
            parts.append(render_pixels(scene, some_rows, some_cols))
    _check_cancel(cancel)
    return np.concatenate(parts) if parts else render_pixels(scene, rows, cols)


def _render_rows(scene, meta: BandMeta, cancel) -> np.ndarray:
    """The whole band, a few rows per render_band call (cancel is checked between calls)."""
    from fractal_app.render import render_band

    step = max(1, chunk_size(scene) // scene.width_px)
    parts = []
    for start, stop in row_pieces(meta.row_start, meta.row_stop, step):
        _check_cancel(cancel)
        with _threads_for((stop - start) * scene.width_px * worst_pixel_cost(scene)):
            parts.append(render_band(scene, start, stop))
    _check_cancel(cancel)
    return np.concatenate(parts)


def perturbed_scenes(scene) -> list:
    """The scene with its view nudged by each of PERTURBATION_ULPS units in the last place,
    in four directions (2D: the centre; 3D: the camera position), in the scene's precision."""
    def nudges(magnitude: float) -> list[float]:
        m = np.float32(magnitude) if scene.precision == "float32" else np.float64(magnitude)
        return [ulps * float(np.spacing(abs(m))) for ulps in PERTURBATION_ULPS]

    out = []
    if scene.is_3d:
        position = scene.camera.position
        for d in nudges(max(max(abs(c) for c in position), 1.0)):
            for axis, sign in ((0, 1), (0, -1), (1, 1), (2, -1)):
                moved = list(position)
                moved[axis] += sign * d
                camera = scene.camera.model_copy(update={"position": tuple(moved)})
                out.append(scene.model_copy(update={"camera": camera}))
        return out
    if scene.deep:
        # Deep views: the pixels' offsets from the exact centre are what float64 holds.
        from fractal_app.deep.render import nudged

        return [nudged(scene, sign_re * u, sign_im * u) for u in PERTURBATION_ULPS
                for sign_re, sign_im in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    re, im = scene.center
    for d in nudges(max(abs(re), abs(im), scene.width)):
        for a, b in ((d, 0.0), (-d, 0.0), (0.0, d), (0.0, -d)):
            out.append(scene.model_copy(update={"center": (re + a, im + b)}))
    return out


def at_set_boundary(scene, rows: np.ndarray, cols: np.ndarray, cancel) -> np.ndarray:
    """2D: whether each pixel looks inside (count max_iter at its centre) but is at the set's
    edge: a neighbour escapes, or it escapes itself a little later. There an orbit can
    wander for thousands of iterations before it escapes, and when it does depends on every
    rounding, not on the input alone (the burning ship's edge is full of such pixels)."""
    if scene.is_3d:
        return np.zeros(rows.size, dtype=bool)
    plain = scene.model_copy(update={"output": COUNTS.name, "supersample": 1})
    dr, dc = np.meshgrid(np.arange(-1, 2), np.arange(-1, 2), indexing="ij")
    nr = np.clip(rows[:, None] + dr.ravel()[None, :], 0, scene.height_px - 1)
    nc = np.clip(cols[:, None] + dc.ravel()[None, :], 0, scene.width_px - 1)
    counts = _render_chunked(plain, nr.ravel(), nc.ravel(), cancel).reshape(rows.size, 9)
    inside = counts >= scene.max_iter
    # Only a pixel that looks inside counts: an honest GPU may see its orbit escape, but a
    # pixel that escapes must be matched (else "inside" would excuse skipped iterations).
    boundary = inside[:, 4] & ~inside.all(axis=1)
    # A pixel whose orbit stays bounded for max_iter iterations but escapes after many more
    # is not inside either: its orbit wanders chaotically, and when it leaves depends on
    # rounding (the burning ship has whole regions of these).
    check = np.flatnonzero(inside[:, 4] & ~boundary)
    if check.size:
        longer_iter = max(4 * scene.max_iter, min(SLOW_ESCAPE_FACTOR * scene.max_iter, 1 << 24))
        longer = plain.model_copy(update={"max_iter": longer_iter})
        slow = _render_chunked(longer, rows[check], cols[check], cancel)
        boundary[check] = slow < longer.max_iter
    return boundary


def check_values(scene, meta: BandMeta, values: np.ndarray, rng: np.random.Generator,
                 cancel: threading.Event) -> CheckReport:
    """Recompute sampled pixels of ``values`` (the decoded band) and compare."""
    width = scene.width_px
    n_pixels = meta.rows * width
    values_format = scene.output_format
    report = CheckReport(band_pixels=n_pixels,
                         value_tol=values_format.tolerance(scene.bit_depth),
                         comparison=values_format.comparison(scene.bit_depth))
    if n_pixels <= FULL_CHECK_PIXELS:
        index = np.arange(n_pixels, dtype=np.int64)
        report.full = True
        report.tolerance = full_check_tolerance(n_pixels)
    else:
        estimate = estimate_costs(scene, meta)
        _check_cancel(cancel)
        index = sample_indices(n_pixels, width, estimate, rng)
        report.weighted = WEIGHTED_SAMPLES
    report.checked = index.size
    band_rows, cols = np.divmod(index, width)
    rows = band_rows + meta.row_start
    got = values.reshape(n_pixels, -1)[index].reshape((index.size,) + values.shape[2:])
    if report.full:
        # The band kernels: whole rows, no passes or gathering; the same values.
        expected = _render_rows(scene, meta, cancel).reshape(got.shape)
    else:
        expected = _render_chunked(scene, rows, cols, cancel)
    differ = np.flatnonzero(_distance(got, expected) > report.value_tol)
    report.differing = differ.size
    _classify(scene, report, differ, rows, cols, got, expected, cancel)
    return report


def _classify(scene, report: CheckReport, differ, rows, cols, got, expected, cancel) -> None:
    """Split differing samples into hard and floating-point-sensitive (excused) ones.

    Only differing samples are re-rendered, a batch at a time, each test only for the samples
    no earlier test excused, and only until the verdict is certain: an honest band costs a
    call or two here, a cheat one batch.
    """
    sensitivity_tol = report.value_tol // 2
    # Largest nudge first: it excuses most, so the later tests see few samples.
    nudged = perturbed_scenes(scene)[::-1]
    # A small first batch: a cheat is usually certain after tolerance + 1 hard mismatches.
    size = 4 * (report.tolerance + 1)
    for start in itertools.chain([0], range(size, differ.size, CLASSIFY_BATCH)):
        if len(report.hard) > report.tolerance or start >= differ.size:
            break
        pending = differ[start:size if start == 0 else start + CLASSIFY_BATCH]
        soft = []
        for other in nudged:
            if not pending.size:
                break
            values = _render_chunked(other, rows[pending], cols[pending], cancel)
            moved = _distance(values, expected[pending]) > sensitivity_tol
            soft.extend(pending[moved])
            pending = pending[~moved]
        if pending.size:
            edge = at_set_boundary(scene, rows[pending], cols[pending], cancel)
            soft.extend(pending[edge])
            pending = pending[~edge]
        for k in sorted(soft):
            report.soft.append((int(rows[k]), int(cols[k]), got[k], expected[k]))
        for k in pending:
            report.hard.append((int(rows[k]), int(cols[k]), got[k], expected[k]))

"""The CPU lane code: one template, expanded for a fractal and a precision when Numba
compiles a kernel that calls ``iterate_row`` or ``iterate_points``.

Why lanes: LLVM's SLP vectorizer packs independent scalar operations into vector
instructions, and it only finds them when each sample of a group lives in its own scalar
variable (per-lane state in small arrays did not vectorize; see shared NUMBA-FACTS.md). So
``lane_count(precision)`` samples (with AVX-512, 32 float64 or 64 float32: 4 zmm vectors)
are iterated together, each as separate scalar variables, in source that
:func:`lane_source` writes.

Why at compile time: ``iterate_row`` and ``iterate_points`` are stubs whose Numba
implementation (``@overload``) is that source, written and ``exec``'d for the argument
types when a kernel calling them is compiled. The kernels calling them (kernels/cpu.py) are
ordinary functions in a real file, cached on disk by kernels/caching.py, whose key hashes
this file: a later process loads their machine code without writing any source, and an
edit of the template recompiles them. The fractal is told by the type of the first argument
(a :class:`LaneCode`), the precision by the arrays', so one hand-written kernel has one
specialisation (and cache entry) per fractal and precision.

The lanes compute exactly the scalar cores of ``kernels/escape.py`` (same operations in
the same order, no fastmath), so the counts and |z|^2 are bit-identical to them: a lane
whose |z|^2 exceeds escape2 stops ("running" is sticky) and keeps its values and count.
A group runs until its slowest lane stops, so kernels/cpu.py runs them in passes.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba.core import codegen, config, types
from numba.extending import (
    NativeValue,
    intrinsic,
    models,
    overload,
    register_model,
    typeof_impl,
    unbox,
)
from numba.np.numpy_support import as_dtype

from fractal_app.kernels import escape

# Samples iterated together, by the width of the target's vector registers and the float
# type. Measured per core on the Mandelbrot 960x540, max_iter 1000, each level compiled with
# its features spelled out (benchmarks/README.md, "Lanes per CPU level"): with 32 registers
# of 512 bits, 4 zmm vectors a variable win (32 float64, 64 float32); with 16 ymm registers
# the same counts spill to the stack on every iteration (AVX2: float64 16 lanes 1.4-1.5x
# faster than 32, float32 16 lanes 1.7x faster than 64), and with 16 xmm registers (plain
# x86-64) fewer still (8 and 8: 2.0x and 1.6x over 32 lanes). Counts that are not a whole
# number of vectors (12, 24, 48, 96) are not vectorised at all.
LANES_BY_VECTOR_BITS = {
    512: {"f64": 32, "f32": 64},
    256: {"f64": 16, "f32": 16},
    128: {"f64": 8, "f32": 8},
}
# Groups of lanes per parallel task of a packed list of points.
TASK_LANE_GROUPS = 4

# The fractals the template knows.
LANE_FRACTALS = ("mandelbrot", "julia", "burning_ship", "multibrot")


# --- which fractal: a value whose Numba type names it -----------------------------------------


class LaneCode:
    """Which fractal's lane code a kernel runs: pass it to a kernel that calls
    ``iterate_row``/``iterate_points``. Its Numba type carries the fractal's name, so each
    fractal gets its own compiled (and cached) specialisation of the kernel."""

    def __init__(self, fractal: str):
        self.fractal = fractal

    def __repr__(self) -> str:
        return f"LaneCode({self.fractal!r})"


class LaneCodeType(types.Dummy):
    """The Numba type of a LaneCode: the fractal, known at compile time; no data."""

    def __init__(self, fractal: str):
        self.fractal = fractal
        super().__init__(f"LaneCode({fractal})")


@typeof_impl.register(LaneCode)
def _typeof_lane_code(value, context):
    return LaneCodeType(value.fractal)


register_model(LaneCodeType)(models.OpaqueModel)


@unbox(LaneCodeType)
def _unbox_lane_code(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


_LANE_CODES = {fractal: LaneCode(fractal) for fractal in LANE_FRACTALS}
_FRACTAL_OF_KIND = {number: name for name, number in escape.KIND_OF_FRACTAL.items()}


def vector_bits() -> int:
    """The width of the widest vector registers of the CPU Numba compiles for: the host's,
    or the level cpu_levels pinned through NUMBA_CPU_FEATURES (the docker_cpu image bakes
    several levels on one machine, each with the lane counts of its own registers)."""
    features = config.CPU_FEATURES
    if features is None:
        features = codegen.get_host_cpu_features()
    enabled = set(features.split(","))
    if "+avx512f" in enabled:
        return 512
    if "+avx" in enabled:
        return 256
    return 128


def lane_count(precision: str) -> int:
    """Samples a lane group iterates together in ``precision`` ("f64" or "f32")."""
    return LANES_BY_VECTOR_BITS[vector_bits()][precision]


def points_per_task(precision: str) -> int:
    """Samples per parallel task of a packed list of points in ``precision``."""
    return lane_count(precision) * TASK_LANE_GROUPS


def lane_code(kind: int) -> LaneCode | None:
    """The LaneCode of a fractal kind (escape.MANDELBROT, ...), or None when the template
    has no lane code for it (its kernels then run the scalar cores)."""
    return _LANE_CODES.get(_FRACTAL_OF_KIND.get(kind))


# --- the stubs the kernels call ---------------------------------------------------------------


def iterate_row(lanes, re_cols, ci, params, counts, mag2, keep_z, zr_end, zi_end):
    """One row of samples from the start: Re at re_cols[k], Im at ci, up to
    params.max_iter iterations: counts, |z|^2 and, if keep_z, z (where a sample still
    running would resume). Compiled code only (see the module's docstring)."""
    raise NotImplementedError("lanes.iterate_row runs only inside a Numba kernel")


def iterate_points(lanes, re, im, zr_start, zi_start, n_start, params, counts, mag2, keep_z,
                   zr_end, zi_end):
    """A packed list of samples at (re[k], im[k]) that completed n_start iterations without
    escaping, continued from z = (zr_start[k], zi_start[k]); outputs as iterate_row.
    Compiled code only."""
    raise NotImplementedError("lanes.iterate_points runs only inside a Numba kernel")


# Each stub's implementation forwards to one separately compiled lane function per fractal,
# precision and entry (compiled_lanes). Numba builds an overload's implementation afresh for
# every set of compiler flags it is typed under, and a parallel kernel types its loop body
# twice (the kernel's own pipeline, then the parfor's gufunc): returning the lane function
# itself compiled its thousand-line body twice per kernel. The forwarding function is a
# single call, cheap to compile twice.
@overload(iterate_row)
def _iterate_row_lanes(lanes, re_cols, ci, params, counts, mag2, keep_z, zr_end, zi_end):
    if not isinstance(lanes, LaneCodeType):
        return None
    row = compiled_lanes(lanes.fractal, precision_of(re_cols.dtype), resume=False)

    def forward(lanes, re_cols, ci, params, counts, mag2, keep_z, zr_end, zi_end):
        row(lanes, re_cols, ci, params, counts, mag2, keep_z, zr_end, zi_end)

    return forward


@overload(iterate_points)
def _iterate_points_lanes(lanes, re, im, zr_start, zi_start, n_start, params, counts, mag2,
                          keep_z, zr_end, zi_end):
    if not isinstance(lanes, LaneCodeType):
        return None
    points = compiled_lanes(lanes.fractal, precision_of(re.dtype), resume=True)

    def forward(lanes, re, im, zr_start, zi_start, n_start, params, counts, mag2, keep_z,
                zr_end, zi_end):
        points(lanes, re, im, zr_start, zi_start, n_start, params, counts, mag2, keep_z,
               zr_end, zi_end)

    return forward


@intrinsic
def select(typingctx, cond, a, b):
    """``a if cond else b`` for a boolean cond and a, b of one type, without a branch.

    Written as ``a if cond else b``, each lane would add a branch to Numba's IR; with 64
    lanes and three updates per lane that made Numba's SSA pass take most of a minute and
    left the vectorizer diamonds to undo. An LLVM ``select`` is one instruction the SLP
    vectorizer packs directly (into masked vector moves / blends).
    """
    if not isinstance(cond, types.Boolean) or a != b:
        return None

    def codegen(context, builder, signature, args):
        c, x, y = args
        return builder.select(c, x, y)

    return a(cond, a, b), codegen


# --- the template -----------------------------------------------------------------------------


def precision_of(dtype) -> str:
    """"f32" or "f64": the lane code's precision for a NumPy or Numba float type."""
    if isinstance(dtype, types.Type):
        dtype = as_dtype(dtype)
    return "f32" if np.dtype(dtype) == np.float32 else "f64"


@functools.cache
def lane_function(fractal: str, precision: str, resume: bool):
    """The Python function of ``lane_source``, made once."""
    scope = {"numba": numba, "select": select,
             "tail_iterations": numba.njit(escape.tail_iterations)}
    name = "iterate_points" if resume else "iterate_row"
    exec(compile(lane_source(fractal, precision, resume), f"<lanes {fractal} {precision}>",
                 "exec"), scope)
    return scope[name]


@functools.cache
def compiled_lanes(fractal: str, precision: str, *, resume: bool):
    """``lane_function`` as one Numba function (what the stubs call), made once per process:
    its machine code is compiled once per signature and linked into every kernel calling it.
    Not cached on disk itself (exec'd code cannot be): the kernels calling it are."""
    return numba.njit(nogil=True)(lane_function(fractal, precision, resume))


_ROW_HEAD = '''def iterate_row(lanes, re_cols, ci, params, counts, mag2, keep_z, zr_end, zi_end):
    last = re_cols.shape[0] - 1
'''
_POINTS_HEAD = '''def iterate_points(lanes, re, im, zr_start, zi_start, n_start, params, counts,
                   mag2, keep_z, zr_end, zi_end):
    last = re.shape[0] - 1
'''
_PARAMS = '''    jr = params.jr
    ji = params.ji
    power = params.power
    max_iter = params.max_iter
    escape2 = params.escape2
    for k0 in range(0, last + 1, {lanes}):
'''


def lane_source(fractal: str, precision: str, resume: bool) -> str:
    """The source of ``iterate_points`` (``resume``) or ``iterate_row`` for ``fractal`` in
    ``precision`` ("f64" or "f32")."""
    if fractal not in LANE_FRACTALS:
        raise ValueError(f"no lane code for fractal {fractal!r}: the template knows "
                         f"{', '.join(LANE_FRACTALS)}")
    lanes = lane_count(precision)
    head = (_POINTS_HEAD if resume else _ROW_HEAD) + _PARAMS.format(lanes=lanes)
    return head + "\n".join(_group(fractal, precision, lanes, resume)) + "\n"


def _lanes(template: str, lanes: int, indent: str) -> list[str]:
    return [indent + template.format(l=lane) for lane in range(lanes)]


def _group(fractal: str, precision: str, lanes: int, resume: bool) -> list[str]:
    """The body of one group of lanes: load, iterate, store."""
    ind = " " * 8
    body = ind + "    "
    # Per-lane names: c/ci (the sample), zr/zi (z), rr/ii (squares), ri (product),
    # n (count), run (still iterating). Lanes past the end repeat the last sample and
    # store the same values into it, so no lane needs a branch.
    sample = "min(k0 + {l}, last)"
    if resume:
        lines = []
        if fractal != "julia":  # Julia's c is fixed; its samples live on in z
            lines += _lanes(f"c{{l}} = re[{sample}]", lanes, ind)
            lines += _lanes(f"ci{{l}} = im[{sample}]", lanes, ind)
        lines += _lanes(f"zr{{l}} = zr_start[{sample}]", lanes, ind)
        lines += _lanes(f"zi{{l}} = zi_start[{sample}]", lanes, ind)
        im_of = "ci{l}"
    else:
        lines = _lanes(f"c{{l}} = re_cols[{sample}]", lanes, ind)
        im_of = "ci"
        if fractal == "julia":  # z starts at the sample
            lines += _lanes("zr{l} = c{l}", lanes, ind)
            lines += _lanes("zi{l} = ci", lanes, ind)
        else:  # z starts at 0
            lines += _lanes("zr{l} = c{l} - c{l}", lanes, ind)
            lines += _lanes("zi{l} = ci - ci", lanes, ind)
    if fractal == "julia":  # c is the fixed (jr, ji)
        add_re, add_im = "jr", "ji"
    else:
        add_re, add_im = "c{l}", im_of
    # Counts as wide as the floats (int32 beside float32), so that recording a running
    # lane's count is one masked broadcast of the iteration number per vector.
    int_type = "numba.int32" if precision == "f32" else "numba.int64"
    start = "n_start" if resume else "0"
    lines += [ind + f"it = {start}"]
    lines += _lanes(f"n{{l}} = {int_type}(it)", lanes, ind)
    lines += [ind + "while it < max_iter:"]
    lines += _lanes("rr{l} = zr{l} * zr{l}", lanes, body)
    lines += _lanes("ii{l} = zi{l} * zi{l}", lanes, body)
    # A lane that escaped keeps its z (below), so its |z|^2 stays above escape2 and this
    # test stays false: "running" is sticky by construction, without carrying a mask
    # from one iteration to the next (that chained the lanes' masks into one and cost 30%).
    lines += _lanes("run{l} = rr{l} + ii{l} <= escape2", lanes, body)
    lines += [body + "if not ("]
    lines += [body + "    run0"] + _lanes("| run{l}", lanes, body + "    ")[1:]
    lines += [body + "):", body + "    break"]
    if fractal == "multibrot":
        # z^power as repeated products, one vectorised loop body for all lanes.
        lines += _lanes("pr{l} = zr{l}", lanes, body)
        lines += _lanes("pi{l} = zi{l}", lanes, body)
        lines += [body + "for _ in range(power - 1):"]
        lines += _lanes("t{l} = pr{l} * zr{l} - pi{l} * zi{l}", lanes, body + "    ")
        lines += _lanes("pi{l} = pr{l} * zi{l} + pi{l} * zr{l}", lanes, body + "    ")
        lines += _lanes("pr{l} = t{l}", lanes, body + "    ")
        new_zi = "pi{l} + " + add_im
        new_zr = "pr{l} + " + add_re
    else:
        product = "abs(zr{l} * zi{l})" if fractal == "burning_ship" else "zr{l} * zi{l}"
        lines += _lanes("ri{l} = " + product, lanes, body)
        new_zi = "ri{l} + ri{l} + " + add_im
        new_zr = "rr{l} - ii{l} + " + add_re
    lines += _lanes(f"zi{{l}} = select(run{{l}}, {new_zi}, zi{{l}})", lanes, body)
    lines += _lanes(f"zr{{l}} = select(run{{l}}, {new_zr}, zr{{l}})", lanes, body)
    lines += [body + f"done = {int_type}(it + 1)"]
    lines += _lanes("n{l} = select(run{l}, done, n{l})", lanes, body)
    lines += [body + "it += 1"]
    # Past escape, for smooth colouring: escape.colour_tail's float64 iterations, the same
    # operations in the same order, run for every lane together (vectorised: a call per
    # lane cost 17% of a whole Mandelbrot render, 80% of a zoomed-out one); lanes that did
    # not escape keep their |z|^2. "+ 0.0" as in colour_tail (it makes -0.0 +0.0).
    lines += _lanes("tr{l} = numba.float64(zr{l}) + 0.0", lanes, ind)
    lines += _lanes("ti{l} = numba.float64(zi{l}) + 0.0", lanes, ind)
    if fractal == "julia":
        lines += [ind + "tcr = numba.float64(jr) + 0.0", ind + "tci = numba.float64(ji) + 0.0"]
        c_re, c_im = "tcr", "tci"
    else:
        lines += _lanes("tcr{l} = numba.float64(c{l}) + 0.0", lanes, ind)
        lines += _lanes(f"tci{{l}} = numba.float64({im_of}) + 0.0", lanes, ind)
        c_re, c_im = "tcr{l}", "tci{l}"
    lines += [ind + "for _tail_step in range(tail_iterations(power)):"]
    if fractal == "multibrot":
        lines += _lanes("tp{l} = tr{l}", lanes, body)
        lines += _lanes("tq{l} = ti{l}", lanes, body)
        lines += [body + "for _tail_factor in range(power - 1):"]
        lines += _lanes("tt{l} = tp{l} * tr{l} - tq{l} * ti{l}", lanes, body + "    ")
        lines += _lanes("tq{l} = tp{l} * ti{l} + tq{l} * tr{l}", lanes, body + "    ")
        lines += _lanes("tp{l} = tt{l}", lanes, body + "    ")
        lines += _lanes(f"tr{{l}} = tp{{l}} + {c_re}", lanes, body)
        lines += _lanes(f"ti{{l}} = tq{{l}} + {c_im}", lanes, body)
    else:
        if fractal == "burning_ship":
            lines += _lanes("tr{l} = abs(tr{l})", lanes, body)
            lines += _lanes("ti{l} = abs(ti{l})", lanes, body)
        lines += _lanes(f"tt{{l}} = tr{{l}} * tr{{l}} - ti{{l}} * ti{{l}} + {c_re}", lanes, body)
        lines += _lanes(f"ti{{l}} = 2.0 * tr{{l}} * ti{{l}} + {c_im}", lanes, body)
        lines += _lanes("tr{l} = tt{l}", lanes, body)
    for lane in range(lanes):
        at = sample.format(l=lane)
        lines += [
            ind + f"counts[{at}] = n{lane}",
            ind + f"m{lane} = zr{lane} * zr{lane} + zi{lane} * zi{lane}",
            ind + f"mag2[{at}] = select(",
            ind + f"    m{lane} > escape2, tr{lane} * tr{lane} + ti{lane} * ti{lane},",
            ind + f"    numba.float64(m{lane}) + 0.0)",
        ]
    lines += [ind + "if keep_z:"]
    for lane in range(lanes):
        at = sample.format(l=lane)
        lines += [ind + f"    zr_end[{at}] = zr{lane}", ind + f"    zi_end[{at}] = zi{lane}"]
    return lines

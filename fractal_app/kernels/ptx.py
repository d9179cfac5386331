"""Every CUDA kernel with the argument types the host code launches it with, compiled to PTX
without a GPU or driver.

One list for the tests and for the GPU image's own check (``python -m
fractal_app.kernels.ptx 75 90``), so that a kernel whose arguments change is compiled under
its new signature everywhere: the argument types are taken from values built the way the
launchers build them, not written out by hand.
"""

import sys
from contextlib import contextmanager
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

PRECISIONS = ("float64", "float32")


class Kernel(NamedTuple):
    name: str  # e.g. "2d-grid-float32"
    python_function: object  # what cuda.jit compiles (compile_ptx takes it as it is)
    argument_types: tuple


def _types_of(*values):
    from numba import typeof

    return tuple(typeof(v) for v in values)


def _scene(fractal, precision):
    from fractal_app.scene import parse_scene

    return parse_scene({"fractal": fractal, "precision": precision, "resolution": [8, 8]})


def _escape_kernels():
    from fractal_app.kernels import cuda as k2d
    from fractal_app.render import escape_params

    for precision in PRECISIONS:
        dtype = np.dtype(precision).type
        params = escape_params(_scene("mandelbrot", precision))
        coords = np.zeros(0, dtype)
        grid, points = k2d.python_kernels[dtype]
        yield Kernel(f"2d-grid-{precision}", grid, _types_of(
            params, coords, coords, np.zeros((0, 0), np.uint32), np.zeros((0, 0))))
        yield Kernel(f"2d-points-{precision}", points, _types_of(
            params, coords, coords, np.zeros(0, np.uint32), np.zeros(0)))


def _raymarch_kernels():
    from fractal_app import render3d
    from fractal_app.kernels import cuda_raymarch, raymarch

    for precision in PRECISIONS:
        inputs = render3d.kernel_inputs(_scene("mandelbulb", precision))
        params = raymarch.as_record(inputs.p)
        index = np.zeros(0, np.int64)
        yield Kernel(f"3d-band-{precision}", cuda_raymarch.band_kernel, _types_of(
            np.zeros((0, 0, 3), np.uint8), 0, inputs.us, inputs.vs, params))
        yield Kernel(f"3d-pixels-{precision}", cuda_raymarch.pixels_kernel, _types_of(
            np.zeros((0, 3), np.uint16), index, index, inputs.us, inputs.vs, params))


def _deep_kernels():
    from fractal_app.deep import cuda as deep_cuda

    f8, i8 = np.zeros(0), np.zeros(0, np.int64)
    # the reference orbit and its BLA table, as deep.render hands them to the kernels:
    # zr, zi, mr, mi, e, bla_f, bla_e, bla_off, layout
    orbit = (f8, f8, f8, f8, i8, np.zeros((0, 0)), np.zeros((0, 0), np.int64),
             np.zeros((0, 0), np.int64), i8)
    yield Kernel("deep-grid-float64", deep_cuda.grid_kernel, _types_of(
        f8, f8, 0, *orbit, 0, np.zeros((0, 0), np.uint32), np.zeros((0, 0))))
    yield Kernel("deep-points-float64", deep_cuda.points_kernel, _types_of(
        f8, f8, 0, *orbit, 0, np.zeros(0, np.uint32), f8))


def kernels() -> list[Kernel]:
    """Every CUDA kernel the app launches: 2D escape, 3D ray marching, deep perturbation."""
    return [*_escape_kernels(), *_raymarch_kernels(), *_deep_kernels()]


@contextmanager
def _compiling_for(cc):
    """numba-cuda asks the current device for its compute capability when it compiles a
    forceinline device function (the 3D kernels'); with no driver, answer with ``cc``."""
    import numba.cuda.dispatcher

    asked = numba.cuda.dispatcher.get_current_device
    numba.cuda.dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    try:
        yield
    finally:
        numba.cuda.dispatcher.get_current_device = asked


def compile_ptx(kernel: Kernel, cc: tuple[int, int]) -> str:
    """The PTX of ``kernel`` for compute capability ``cc``."""
    from numba import cuda

    with _compiling_for(cc):
        ptx, _ = cuda.compile_ptx(kernel.python_function, kernel.argument_types, cc=cc)
    return ptx


def main(argv: list[str]) -> int:
    """Compile every kernel for each compute capability given (e.g. ``75 90``); print one
    line per kernel: ``PTX name sm_XY size``."""
    if not argv:
        print("usage: python -m fractal_app.kernels.ptx CC [CC ...]   (e.g. 75 90)")
        return 2
    for text in argv:
        cc = (int(text[:-1]), int(text[-1]))
        for kernel in kernels():
            ptx = compile_ptx(kernel, cc)
            if ".entry" not in ptx or f".target sm_{text}" not in ptx:
                print(f"no sm_{text} kernel entry in the PTX of {kernel.name}")
                return 1
            print("PTX", kernel.name, f"sm_{text}", len(ptx), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

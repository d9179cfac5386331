"""kernels/compiling.py: one way to compile scalar functions that call each other, and
kernels/threads.py: Numba's thread control, set for a call and restored."""

import numba
import pytest

from fractal_app.kernels import color, escape, threads
from fractal_app.kernels.compiling import compiled_namespace


def _square(x):
    return x * x


def _sum_of_squares(a, b):
    return _square(a) + _square(b)


def _tagging_jit(tag):
    """A stand-in decorator: marks the copy, so the test sees which one was called."""

    def jit(function):
        function.tag = tag
        return function

    return jit


def test_compiled_functions_call_the_compiled_versions_of_each_other():
    compiled = compiled_namespace([_square, _sum_of_squares], _tagging_jit("jit"))
    assert compiled._sum_of_squares.tag == "jit" and compiled._square.tag == "jit"
    # The copy's global "_square" is the compiled copy, not the module's function.
    assert compiled._sum_of_squares.__globals__["_square"] is compiled._square
    assert _sum_of_squares.__globals__["_square"] is _square  # the original is untouched
    assert compiled._sum_of_squares(3, 4) == 25


def test_jit_for_and_replace_choose_per_function():
    def halve(x):
        return x / 2

    compiled = compiled_namespace([_square, _sum_of_squares], _tagging_jit("jit"),
                                  jit_for={"_square": _tagging_jit("called")})
    assert compiled._square.tag == "called"
    replaced = compiled_namespace([_square, _sum_of_squares], _tagging_jit("jit"),
                                  replace={"_square": halve})
    assert replaced._square is halve
    assert replaced._sum_of_squares(4, 6) == 5.0
    with pytest.raises(ValueError, match="not compiled here"):
        compiled_namespace([_square], _tagging_jit("jit"), jit_for={"typo": _tagging_jit("x")})


def test_the_colour_and_escape_namespaces_compile_with_numba():
    colours = color.compile_color(numba.njit)
    assert colours.quantize(0.5, 255) == color.quantize(0.5, 255)
    cores = escape.compile_cores(numba.njit)
    params = escape.EscapeParams(escape.MANDELBROT, 0.0, 0.0, 2, 50, 4.0)
    assert cores.escape(params, 0.3, 0.5) == escape.escape(params, 0.3, 0.5)


def test_thread_count_is_set_for_the_calls_inside_and_restored():
    before = numba.get_num_threads()
    with threads.thread_count(1):
        assert numba.get_num_threads() == 1
        with threads.one_thread_if(False):
            assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with threads.one_thread_if(True):
        assert numba.get_num_threads() == 1
    with threads.one_thread_if(False):
        assert numba.get_num_threads() == before
    assert numba.get_num_threads() == before

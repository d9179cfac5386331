"""One way to compile a set of plain scalar functions for a target: ``compiled_namespace``.

The scalar cores (escape.py, color.py, raymarch.py) are plain Python functions that call
each other by module-level name, so that uncompiled they are the slow references the tests
use. Compiled, each must call the *compiled* versions of the others, for the CPU
(``numba.njit``) or for CUDA (``numba.cuda.jit(device=True)``) alike. Numba resolves a
function's callees from its globals when it compiles it, so each function is copied with a
globals dict in which those names mean the compiled versions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import FunctionType, SimpleNamespace
from typing import Any


def compiled_namespace(
    functions: Iterable[FunctionType],
    jit: Callable[[FunctionType], Any],
    *,
    jit_for: Mapping[str, Callable[[FunctionType], Any]] | None = None,
    replace: Mapping[str, Any] | None = None,
) -> SimpleNamespace:
    """``functions`` compiled by ``jit`` (a decorator), as a namespace by function name.

    In every compiled copy, the global names of ``functions`` mean their compiled versions
    and the names in ``replace`` the objects given there (a target-specific stand-in for a
    helper, already compiled). ``jit_for`` names functions compiled by another decorator
    than ``jit`` (one a kernel should call rather than inline, say).

    Decorators compile lazily (on first call), so the copies can share one globals dict that
    is completed after they are all decorated: the order of ``functions`` does not matter.
    """
    functions = list(functions)
    replace = dict(replace or {})
    jit_for = dict(jit_for or {})
    unknown = set(jit_for) - {f.__name__ for f in functions}
    if unknown:
        raise ValueError(f"jit_for names functions not compiled here: {sorted(unknown)}")
    # One globals dict per module the functions come from: each copy keeps its own
    # module's other names (constants, imports), with the compiled names on top.
    scopes: dict[int, dict[str, Any]] = {}
    compiled = {}
    for function in functions:
        if function.__name__ in replace:
            continue
        scope = scopes.setdefault(id(function.__globals__), dict(function.__globals__))
        copy = FunctionType(function.__code__, scope, function.__name__,
                            function.__defaults__, function.__closure__)
        copy.__qualname__ = function.__qualname__
        copy.__module__ = function.__module__
        copy.__doc__ = function.__doc__
        compiled[function.__name__] = jit_for.get(function.__name__, jit)(copy)
    for scope in scopes.values():
        scope.update(compiled)
        scope.update(replace)
    return SimpleNamespace(**compiled, **replace)

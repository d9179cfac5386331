"""Named figures of a benchmark run, in the shape the history tool reads back.

A figure is one number a maintainer tracks from run to run. It lives in its benchmark's
``extra_info["figures"]`` (so pytest-benchmark's JSON carries it) as::

    {"value": 1.23, "unit": "x", "kind": "ratio", "better": "lower", "what": "..."}

``kind`` says whether it survives a change of machine: a ``ratio`` is measured within one run
(both sides on the same machine, interleaved) and is compared across kept runs of the same
CPU model by ``scripts/bench_history.py check``; an ``absolute`` figure (seconds, G it/s) is
kept and shown with its CPU model but never guarded, since the shared machines differ from
one run to the next. ``better`` says which direction is an improvement.
"""

from __future__ import annotations

RATIO = "ratio"
ABSOLUTE = "absolute"
LOWER = "lower"
HIGHER = "higher"


def record(
    benchmark, name: str, value: float, unit: str, kind: str, better: str, what: str
) -> float:
    """Store one figure in ``benchmark.extra_info["figures"]`` and print it; returns value."""
    if kind not in (RATIO, ABSOLUTE):
        raise ValueError(f"kind must be {RATIO!r} or {ABSOLUTE!r}, got {kind!r}")
    if better not in (LOWER, HIGHER):
        raise ValueError(f"better must be {LOWER!r} or {HIGHER!r}, got {better!r}")
    figures = benchmark.extra_info.setdefault("figures", {})
    figures[name] = {
        "value": round(float(value), 4),
        "unit": unit,
        "kind": kind,
        "better": better,
        "what": what,
    }
    print(f"figure {name}: {value:.4g} {unit} ({kind}, {better} is better)")
    return value

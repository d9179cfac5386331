"""Benchmark probe: report this process's peak resident memory when it exits.

Active only when benchmarks/rss_probe is on PYTHONPATH (which makes Python import this as
``sitecustomize``) and FRACTAL_BENCH_RSS_DIR names a folder. Each process writes one JSON
file there: its pid, its role (requestor, provider, or the CLI), argv and ``ru_maxrss``.
Used by benchmarks/bench_poster.py; nothing in the app imports it.
"""

import atexit
import json
import os
import resource
import sys

_OUT = os.environ.get("FRACTAL_BENCH_RSS_DIR")


def _role(argv: list[str]) -> str:
    for role in ("requestor", "provider"):
        if role in argv:
            return role
    return "cli"


def _report() -> None:
    argv = list(sys.argv)
    record = {
        "pid": os.getpid(),
        "role": _role(argv),
        "argv": argv,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    path = os.path.join(_OUT, f"{os.getpid()}.json")
    with open(path + ".partial", "w") as out:
        json.dump(record, out)
    os.replace(path + ".partial", path)


if _OUT:
    atexit.register(_report)

"""Benchmark probe: report this process's peak resident memory and CPU time when it exits.

Active only when benchmarks/rss_probe is on PYTHONPATH (which makes Python import this as
``sitecustomize``) and FRACTAL_BENCH_RSS_DIR names a folder. Each process writes one JSON
file there: its pid, its role (requestor, provider, forkserver, or the CLI), argv, ``ru_maxrss`` and
the CPU seconds it used (user + system, all its threads).
Used by benchmarks/bench_poster.py and bench_lifecycle.py; nothing in the app imports it.
"""

import atexit
import json
import os
import resource
import sys

_OUT = os.environ.get("FRACTAL_BENCH_RSS_DIR")


def _role(argv: list[str]) -> str:
    if argv and os.path.basename(argv[0]) == "forkserver.py":
        return "forkserver"  # the one-machine render's fork server (fractal_app.forkserver)
    for role in ("requestor", "provider"):
        if role in argv:
            return role
    return "cli"


def _report() -> None:
    argv = list(sys.argv)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record = {
        "pid": os.getpid(),
        "role": _role(argv),
        "argv": argv,
        "max_rss_bytes": usage.ru_maxrss * 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }
    path = os.path.join(_OUT, f"{os.getpid()}.json")
    with open(path + ".partial", "w") as out:
        json.dump(record, out)
    os.replace(path + ".partial", path)


if _OUT:
    atexit.register(_report)

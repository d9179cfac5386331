"""The benchmark suites are not run by CI (they take many minutes and want a quiet machine),
but they must keep importing and collecting: a renamed helper must not break them unseen."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_every_benchmark_suite_collects():
    suites = sorted(str(path) for path in BENCHMARKS.glob("bench_*.py"))
    assert len(suites) >= 8
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *suites],
        capture_output=True, text=True, timeout=300, cwd=BENCHMARKS.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}
    assert collected == {f"benchmarks/{Path(s).name}" for s in suites}, collected

#!/usr/bin/env python3
"""The benchmark history: keep a quick-suite run, show the kept runs, guard the ratios.

    bench_history.py keep RESULT.json            copy a run into benchmarks/history/
    bench_history.py show [--png FILE]           a table per figure, and a plot of them all
    bench_history.py check RESULT.json [MORE...]  fail when a ratio regressed (CI runs this)
    bench_history.py noise RESULT.json...        measure each ratio's noise band

RESULT.json is what ``pytest benchmarks/bench_quick.py --benchmark-json=RESULT.json`` writes:
pytest-benchmark's JSON, each benchmark's figures in ``extra_info["figures"]`` (see
benchmarks/figures.py) and the CPU model in ``machine_info["cpu_model"]``.

A kept run is one file, ``benchmarks/history/DATE_COMMIT.json``. ``check`` compares every
ratio figure of a new run with the median of the last BASELINE_RUNS kept runs (by date) on
the same CPU model (one kept run's own noise would otherwise move the guard) and fails
when one moved the wrong way by more than its noise band (benchmarks/noise_band.json, made
by ``noise`` from repeated runs of unchanged code; see benchmarks/README.md). Absolute
figures are shown, never guarded: the shared machines differ from one run to the next. With
no kept run on this CPU model there is nothing to compare against, and ``check`` says so and
passes.

Given several results of the same code (a run and its re-run), ``check`` takes each ratio's
best value among them: a real regression shows in every run, a disturbed run rarely twice in
a row. CI re-runs the suite once when the first run's check fails, and fails only when the
re-run confirms it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HISTORY = REPO / "benchmarks" / "history"
NOISE_BAND = REPO / "benchmarks" / "noise_band.json"
# A ratio's band is this many times its range (max - min) over N runs of unchanged code.
# check compares two single runs, whose difference has sqrt(2) times one run's spread; the
# range of 5 normal samples is about 2.3 standard deviations, so twice the range is about
# 3.3 standard deviations of that difference: a false alarm about once in a thousand runs.
BAND_PER_RANGE = 2.0
# check's baseline: each ratio's median over this many of the last kept runs on the CPU model.
BASELINE_RUNS = 3


@dataclass(frozen=True)
class Run:
    """One quick-suite result file, as far as the history is concerned."""

    path: Path
    when: datetime
    commit: str
    cpu_model: str
    figures: dict[str, dict]

    @property
    def label(self) -> str:
        return f"{self.when:%Y-%m-%d %H:%M} {self.commit[:10]}"


def shown(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def load_run(path: Path) -> Run:
    """Read a pytest-benchmark JSON file; a clear error if it is not a quick-suite result."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"{path}: cannot read a pytest-benchmark JSON file: {error}") from None
    figures: dict[str, dict] = {}
    for bench in data.get("benchmarks", []):
        figures.update(bench.get("extra_info", {}).get("figures", {}))
    if not figures:
        raise SystemExit(
            f"{path}: no figures in it; give a result of "
            "`pytest benchmarks/bench_quick.py --benchmark-json=FILE`"
        )
    machine = data.get("machine_info", {})
    cpu_model = machine.get("cpu_model") or machine.get("cpu", {}).get("brand_raw") or "unknown"
    commit_info = data.get("commit_info", {})
    commit = commit_info.get("id") or "unknown"
    if commit_info.get("dirty"):
        commit += "+dirty"
    return Run(Path(path), datetime.fromisoformat(data["datetime"]), commit, cpu_model, figures)


def kept_runs(history: Path = HISTORY) -> list[Run]:
    """Every kept run, oldest first."""
    return sorted((load_run(p) for p in history.glob("*.json")), key=lambda run: run.when)


def noise_bands(path: Path = NOISE_BAND) -> dict[str, float]:
    """Relative noise band of each ratio figure (0.1 = 10 %), as ``noise`` measured it."""
    if not path.exists():
        return {}
    return json.loads(path.read_text())["bands"]


# --------------------------------------------------------------------------- keep
def keep(result: Path, history: Path = HISTORY) -> Path:
    """Copy ``result`` into the history as DATE_COMMIT.json; returns the new file."""
    run = load_run(result)
    history.mkdir(parents=True, exist_ok=True)
    target = history / f"{run.when:%Y-%m-%dT%H%M%S}_{run.commit[:10]}.json"
    if target.exists():
        raise SystemExit(f"{target.name} is already kept")
    # The file names this checkout's absolute path (the test files' locations); a kept
    # run should not carry one machine's folders.
    text = Path(result).read_text().replace(str(REPO) + "/", "").replace(str(REPO), ".")
    target.write_text(text)
    return target


# --------------------------------------------------------------------------- check
@dataclass(frozen=True)
class Verdict:
    name: str
    old: float
    new: float
    worse_by: float  # relative change in the bad direction (negative: it improved)
    band: float | None

    @property
    def regressed(self) -> bool:
        return self.band is not None and self.worse_by > self.band


def compare(old: Run, new: Run, bands: dict[str, float]) -> list[Verdict]:
    """Each ratio figure the two runs share, with how much worse the new one is."""
    verdicts = []
    for name, figure in sorted(new.figures.items()):
        if figure["kind"] != "ratio" or name not in old.figures:
            continue
        before, after = old.figures[name]["value"], figure["value"]
        change = (after - before) / before if before else 0.0
        worse_by = change if figure["better"] == "lower" else -change
        verdicts.append(Verdict(name, before, after, worse_by, bands.get(name)))
    return verdicts


def best_of(runs: list[Run]) -> Run:
    """One run whose every ratio is the best value any of ``runs`` (the same code measured
    again on the same machine) got for it; its other figures are the first run's."""
    first = runs[0]
    models = {run.cpu_model for run in runs}
    if len(models) > 1:
        raise SystemExit(f"results from different CPU models cannot be combined: {sorted(models)}")
    figures = dict(first.figures)
    for name, figure in first.figures.items():
        if figure["kind"] != "ratio":
            continue
        values = [run.figures[name]["value"] for run in runs if name in run.figures]
        best = min(values) if figure["better"] == "lower" else max(values)
        figures[name] = {**figure, "value": best}
    return Run(first.path, first.when, first.commit, first.cpu_model, figures)


def median_of(runs: list[Run]) -> Run:
    """One run whose every ratio is its median over ``runs`` (kept runs of one CPU model);
    the rest is the newest run's."""
    newest = runs[-1]
    figures = dict(newest.figures)
    for name, figure in newest.figures.items():
        if figure["kind"] != "ratio":
            continue
        values = [run.figures[name]["value"] for run in runs if name in run.figures]
        figures[name] = {**figure, "value": statistics.median(values)}
    return Run(newest.path, newest.when, newest.commit, newest.cpu_model, figures)


def check(results: list[Path], history: Path = HISTORY, noise: Path = NOISE_BAND) -> int:
    """0 when no ratio regressed beyond its band against the last kept runs on this CPU
    model (or there is none), 1 otherwise; prints what it compared. Several results are
    re-runs of the same code: each ratio's best among them is compared."""
    new = best_of([load_run(result) for result in results])
    given = {Path(result).resolve() for result in results}
    same_cpu = [
        run
        for run in kept_runs(history)
        if run.cpu_model == new.cpu_model and run.path.resolve() not in given
    ]
    print(f"CPU model: {new.cpu_model}")
    if len(results) > 1:
        print(f"each ratio: the best of {len(results)} runs of this code")
    if not same_cpu:
        print(
            f"no kept run on CPU model {new.cpu_model!r} in {shown(history)}: "
            "nothing to compare against, so nothing is guarded; PASS. Keep a run made on "
            "this model (bench_history.py keep) to guard the next ones."
        )
        return 0
    recent = same_cpu[-BASELINE_RUNS:]
    baseline = median_of(recent)
    print(f"against the median of the last {len(recent)} kept run(s) on this CPU model: "
          + ", ".join(run.path.name for run in recent))
    verdicts = compare(baseline, new, noise_bands(noise))
    print(f"{'figure':42} {'kept':>9} {'now':>9} {'worse by':>9} {'band':>7}  verdict")
    for v in verdicts:
        band = f"{100 * v.band:6.1f}%" if v.band is not None else "   none"
        verdict = (
            "REGRESSED"
            if v.regressed
            else "not guarded (no band measured)"
            if v.band is None
            else "ok"
        )
        print(f"{v.name:42} {v.old:9.4g} {v.new:9.4g} {100 * v.worse_by:8.1f}% {band}  {verdict}")
    missing = sorted(
        name
        for name, figure in baseline.figures.items()
        if figure["kind"] == "ratio" and name not in new.figures
    )
    if missing:
        print(f"not measured this time (skipped tests; see the pytest output): {missing}")
    regressed = [v.name for v in verdicts if v.regressed]
    if regressed:
        print(f"FAIL: {len(regressed)} ratio(s) regressed beyond their noise band: {regressed}")
        return 1
    print("PASS: no ratio regressed beyond its noise band")
    return 0


# --------------------------------------------------------------------------- noise
def measure_noise(results: list[Path], out: Path = NOISE_BAND) -> dict[str, float]:
    """The noise band of each ratio figure over runs of unchanged code: BAND_PER_RANGE
    times its full range (max - min), relative to its median. Written to ``out`` with the
    values it came from."""
    runs = [load_run(p) for p in results]
    if len(runs) < 3:
        raise SystemExit("give at least 3 runs of the same code to measure a spread")
    models = {run.cpu_model for run in runs}
    bands, spread = {}, {}
    for name, figure in runs[0].figures.items():
        if figure["kind"] != "ratio":
            continue
        values = [run.figures[name]["value"] for run in runs if name in run.figures]
        if len(values) < 3:
            continue
        spread_of_runs = (max(values) - min(values)) / statistics.median(values)
        bands[name] = round(BAND_PER_RANGE * spread_of_runs, 4)
        spread[name] = values
    out.write_text(
        json.dumps(
            {
                "how": f"{BAND_PER_RANGE} x the full range (max - min) over the median of "
                "each ratio, over the runs below of unchanged code, one after another on one "
                "machine (scripts/bench_history.py, BAND_PER_RANGE, says why)",
                "cpu_models": sorted(models),
                "runs": [run.label for run in runs],
                "values": spread,
                "bands": bands,
            },
            indent=1,
        )
        + "\n"
    )
    return bands


# --------------------------------------------------------------------------- show
def show(runs: list[Run], png: Path | None) -> None:
    """A table per figure (every kept run, oldest first) and, with ``png``, a plot."""
    names = sorted({name for run in runs for name in run.figures})
    for name in names:
        rows = [(run, run.figures[name]) for run in runs if name in run.figures]
        figure = rows[-1][1]
        print(f"\n{name} ({figure['kind']}, {figure['unit']}, {figure['better']} is better)")
        print(f"  {figure['what']}")
        previous: dict[str, float] = {}
        for run, fig in rows:
            before = previous.get(run.cpu_model)
            change = f"{100 * (fig['value'] - before) / before:+7.1f}%" if before else ""
            print(f"  {run.label}  {run.cpu_model[:34]:34} {fig['value']:10.4g} {change}")
            previous[run.cpu_model] = fig["value"]
    if png is not None:
        plot(runs, names, png)
        print(f"\nplot: {png}")


def plot(runs: list[Run], names: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands = noise_bands()
    columns = 3
    rows = (len(names) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.0 * rows), squeeze=False)
    models = sorted({run.cpu_model for run in runs})
    for ax, name in zip(axes.flat, names, strict=False):
        unit = ""
        for model in models:
            points = [
                (i, run.figures[name]["value"])
                for i, run in enumerate(runs)
                if run.cpu_model == model and name in run.figures
            ]
            if not points:
                continue
            unit = next(run.figures[name]["unit"] for run in runs if name in run.figures)
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, "o-", label=model[:30])
            if name in bands:  # the band around the latest kept value: where CI passes
                last = ys[-1]
                ax.axhspan(last * (1 - bands[name]), last * (1 + bands[name]), alpha=0.12)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(
            [f"{r.when:%m-%d %H:%M}\n{r.commit[:7]}" for r in runs], fontsize=6, rotation=45
        )
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    if models:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle("fractal-app quick benchmark suite: kept runs (shaded: the noise band)")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("keep", help="copy a result into benchmarks/history/")
    p.add_argument("result", type=Path)
    p = commands.add_parser("show", help="a table per figure, and a PNG plot with --png")
    p.add_argument("--png", type=Path, default=None, help="write the plot here")
    p.add_argument("--cpu", default=None, help="only runs whose CPU model contains this")
    p = commands.add_parser("check", help="fail when a ratio regressed beyond its noise band")
    p.add_argument("results", type=Path, nargs="+", help="a run, and any re-runs of it")
    p = commands.add_parser("noise", help="measure each ratio's noise band from N results")
    p.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "keep":
        print(f"kept as {shown(keep(args.result))}")
    elif args.command == "show":
        runs = [r for r in kept_runs() if args.cpu is None or args.cpu in r.cpu_model]
        if not runs:
            print(
                "no kept runs"
                + (
                    f" on a CPU model containing {args.cpu!r}"
                    if args.cpu
                    else f" in {shown(HISTORY)}"
                )
            )
            return 0
        show(runs, args.png)
    elif args.command == "check":
        return check(args.results)
    elif args.command == "noise":
        bands = measure_noise(args.results)
        for name, band in sorted(bands.items()):
            print(f"{name:42} {100 * band:6.1f}%")
        print(f"written to {shown(NOISE_BAND)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

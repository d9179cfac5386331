"""scripts/bench_history.py: keeping runs, the regression guard, the noise band, the plot."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_history.py"
spec = importlib.util.spec_from_file_location("bench_history", SCRIPT)
bench_history = importlib.util.module_from_spec(spec)
sys.modules["bench_history"] = bench_history  # dataclasses look their module up there
spec.loader.exec_module(bench_history)


def result(path: Path, when: str, commit: str, cpu: str, **values: float) -> Path:
    """A pytest-benchmark JSON file holding ``values`` as figures (names ending in _s are
    absolute seconds, lower better; the rest ratios, lower better unless named *_over_c)."""
    figures = {}
    for name, value in values.items():
        figures[name] = {
            "value": value,
            "unit": "s" if name.endswith("_s") else "x",
            "kind": "absolute" if name.endswith("_s") else "ratio",
            "better": "higher" if "over_c" in name else "lower",
            "what": name,
        }
    path.write_text(
        json.dumps(
            {
                "machine_info": {"cpu_model": cpu},
                "commit_info": {"id": commit, "dirty": False},
                "datetime": when,
                "benchmarks": [{"name": "test_x", "extra_info": {"figures": figures}}],
            }
        )
    )
    return path


@pytest.fixture
def history(tmp_path, monkeypatch):
    folder = tmp_path / "history"
    monkeypatch.setattr(bench_history, "HISTORY", folder)
    monkeypatch.setattr(bench_history, "NOISE_BAND", tmp_path / "noise_band.json")
    return folder


def test_keep_names_the_file_by_date_and_commit(tmp_path, history):
    run = result(
        tmp_path / "r.json",
        "2026-12-02T05:37:17+00:00",
        "abcdef1234567",
        "CPU A",
        lifecycle_over_bare_wall=1.5,
    )
    kept = bench_history.keep(run, history)
    assert kept.name == "2026-12-02T053717_abcdef1234.json"
    assert bench_history.kept_runs(history)[0].figures["lifecycle_over_bare_wall"]["value"] == 1.5
    with pytest.raises(SystemExit, match="already kept"):
        bench_history.keep(run, history)


def test_check_fails_a_ratio_that_regressed_beyond_its_band(tmp_path, history, capsys):
    noise = tmp_path / "noise_band.json"
    noise.write_text(
        json.dumps(
            {"bands": {"lifecycle_over_bare_wall": 0.10, "kernel_f64_over_c_per_core": 0.05}}
        )
    )
    bench_history.keep(
        result(
            tmp_path / "old.json",
            "2026-12-01T00:00:00+00:00",
            "a" * 40,
            "CPU A",
            lifecycle_over_bare_wall=1.50,
            kernel_f64_over_c_per_core=0.90,
            startup_s=0.5,
        ),
        history,
    )
    # Another CPU model's later run is not the baseline.
    bench_history.keep(
        result(
            tmp_path / "other.json",
            "2026-12-01T01:00:00+00:00",
            "b" * 40,
            "CPU B",
            lifecycle_over_bare_wall=3.0,
        ),
        history,
    )
    within = result(
        tmp_path / "ok.json",
        "2026-12-02T00:00:00+00:00",
        "c" * 40,
        "CPU A",
        lifecycle_over_bare_wall=1.60,
        kernel_f64_over_c_per_core=0.95,
        startup_s=5.0,
    )  # absolute figures are never guarded
    assert bench_history.check([within], history, noise) == 0
    assert "PASS" in capsys.readouterr().out
    slower = result(
        tmp_path / "slow.json",
        "2026-12-02T00:00:00+00:00",
        "c" * 40,
        "CPU A",
        lifecycle_over_bare_wall=1.70,
        kernel_f64_over_c_per_core=0.95,
    )
    assert bench_history.check([slower], history, noise) == 1
    assert "REGRESSED" in capsys.readouterr().out
    # Higher is better for the kernel ratio: a drop beyond 5 % fails.
    weaker = result(
        tmp_path / "weak.json",
        "2026-12-02T00:00:00+00:00",
        "c" * 40,
        "CPU A",
        lifecycle_over_bare_wall=1.50,
        kernel_f64_over_c_per_core=0.80,
    )
    assert bench_history.check([weaker], history, noise) == 1
    # A re-run of the same code that is back within the band clears a disturbed first run;
    # one that is not confirms the regression.
    again_ok = result(
        tmp_path / "again_ok.json",
        "2026-12-02T00:05:00+00:00",
        "c" * 40,
        "CPU A",
        lifecycle_over_bare_wall=1.55,
        kernel_f64_over_c_per_core=0.92,
    )
    assert bench_history.check([slower, again_ok], history, noise) == 0
    assert "best of 2 runs" in capsys.readouterr().out
    again_slow = result(
        tmp_path / "again_slow.json",
        "2026-12-02T00:05:00+00:00",
        "c" * 40,
        "CPU A",
        lifecycle_over_bare_wall=1.72,
        kernel_f64_over_c_per_core=0.95,
    )
    assert bench_history.check([slower, again_slow], history, noise) == 1
    assert "REGRESSED" in capsys.readouterr().out


def test_check_passes_and_says_so_without_a_kept_run_on_this_cpu(tmp_path, history, capsys):
    bench_history.keep(
        result(
            tmp_path / "old.json",
            "2026-12-01T00:00:00+00:00",
            "a" * 40,
            "CPU A",
            lifecycle_over_bare_wall=1.0,
        ),
        history,
    )
    new = result(
        tmp_path / "new.json",
        "2026-12-02T00:00:00+00:00",
        "c" * 40,
        "CPU C",
        lifecycle_over_bare_wall=9.0,
    )
    assert bench_history.check([new], history, tmp_path / "none.json") == 0
    out = capsys.readouterr().out
    assert "no kept run on CPU model 'CPU C'" in out and "PASS" in out


def test_noise_band_is_twice_the_measured_range_over_the_median(tmp_path, history):
    runs = [
        result(
            tmp_path / f"{k}.json",
            f"2026-12-02T0{k}:00:00+00:00",
            "a" * 40,
            "CPU A",
            lifecycle_over_bare_wall=v,
            startup_s=1.0,
        )
        for k, v in enumerate([1.0, 1.2, 1.1])
    ]
    out = tmp_path / "band.json"
    bands = bench_history.measure_noise(runs, out)
    assert bands == {"lifecycle_over_bare_wall": pytest.approx(2 * 0.2 / 1.1, abs=1e-4)}
    assert json.loads(out.read_text())["bands"] == bands
    with pytest.raises(SystemExit, match="at least 3"):
        bench_history.measure_noise(runs[:2], out)


def test_show_prints_a_table_per_figure_and_draws_a_png(tmp_path, history, capsys):
    for k, value in enumerate([1.5, 1.4]):
        bench_history.keep(
            result(
                tmp_path / f"{k}.json",
                f"2026-12-0{k + 1}T00:00:00+00:00",
                f"{k}" * 40,
                "CPU A",
                lifecycle_over_bare_wall=value,
                startup_s=0.4,
            ),
            history,
        )
    png = tmp_path / "history.png"
    bench_history.show(bench_history.kept_runs(history), png)
    out = capsys.readouterr().out
    assert "lifecycle_over_bare_wall (ratio, x, lower is better)" in out
    assert "-6.7%" in out  # 1.5 -> 1.4 on the same CPU model
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_without_figures_is_refused_clearly(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"benchmarks": [{"extra_info": {}}], "datetime": "2026"}))
    with pytest.raises(SystemExit, match="no figures"):
        bench_history.load_run(path)


def test_check_compares_with_the_median_of_the_last_kept_runs(tmp_path, history, capsys):
    noise = tmp_path / "noise_band.json"
    noise.write_text(json.dumps({"bands": {"lifecycle_over_bare_wall": 0.10}}))
    # The oldest run falls out of the last three; the newest kept run is an outlier.
    for hour, value in enumerate([9.0, 1.5, 1.5, 3.0]):
        bench_history.keep(
            result(
                tmp_path / f"kept{hour}.json",
                f"2026-12-01T0{hour}:00:00+00:00",
                f"{hour}" * 40,
                "CPU A",
                lifecycle_over_bare_wall=value,
            ),
            history,
        )
    new = result(
        tmp_path / "new.json",
        "2026-12-02T00:00:00+00:00",
        "c" * 40,
        "CPU A",
        lifecycle_over_bare_wall=1.7,
    )
    # 13 % worse than the median 1.5 (against the outlier 3.0 alone it would pass).
    assert bench_history.check([new], history, noise) == 1
    out = capsys.readouterr().out
    assert "median of the last 3 kept run(s)" in out and "REGRESSED" in out

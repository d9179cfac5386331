"""The images' Numba cache pieces (fractal_app.warmup, fractal_app.cpu_levels), without a
container: choosing the CPU level, and loading kernels from a cache folder the process cannot
write.

Each cache test runs small Python processes on a one-line kernel, so it takes seconds.
"""

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from fractal_app import cpu_levels, warmup

V3_HOST = cpu_levels.LEVELS["x86-64-v3"].cpuinfo_flags | {"sse2", "fpu"}
V4_HOST = cpu_levels.LEVELS["x86-64-v4"].cpuinfo_flags
BAKED = {cpu_levels.CPU_TARGETS_ENV: "x86-64-v4 x86-64-v3 x86-64"}


@pytest.mark.parametrize(
    ("flags", "level"),
    [(V4_HOST, "x86-64-v4"), (V3_HOST, "x86-64-v3"), (frozenset({"sse2", "avx"}), "x86-64")],
)
def test_picks_the_best_baked_level_the_host_runs(flags, level):
    env = dict(BAKED)
    assert cpu_levels.select_cpu_target(env, flags=flags, machine="x86_64") == level
    assert env["NUMBA_CPU_NAME"] == level
    # The level's features spelled out: an empty list would switch the vector units off.
    assert env["NUMBA_CPU_FEATURES"] == cpu_levels.LEVELS[level].feature_string
    assert "+sse2" in env["NUMBA_CPU_FEATURES"]


def test_a_level_not_baked_is_never_chosen():
    env = {cpu_levels.CPU_TARGETS_ENV: "x86-64-v3 x86-64"}
    assert cpu_levels.select_cpu_target(env, flags=V4_HOST, machine="x86_64") == "x86-64-v3"


def test_changes_nothing_outside_the_image_or_when_told_otherwise():
    env: dict[str, str] = {}
    assert cpu_levels.select_cpu_target(env, flags=V4_HOST, machine="x86_64") is None
    assert env == {}
    explicit = {**BAKED, "NUMBA_CPU_NAME": "generic"}
    assert cpu_levels.select_cpu_target(explicit, flags=V4_HOST, machine="x86_64") is None
    assert explicit["NUMBA_CPU_NAME"] == "generic"
    arm = dict(BAKED)
    assert cpu_levels.select_cpu_target(arm, flags=frozenset(), machine="aarch64") is None
    assert "NUMBA_CPU_NAME" not in arm
    no_fit = {cpu_levels.CPU_TARGETS_ENV: "x86-64-v4"}
    assert cpu_levels.select_cpu_target(no_fit, flags=V3_HOST, machine="x86_64") is None


def test_reads_the_flags_line_of_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: none\n")
    assert cpu_levels.host_cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_levels.host_cpu_flags(tmp_path / "missing") == frozenset()


def test_every_x86_64_host_has_a_level():
    # The images bake plain x86-64 last, so a host is never left without a cached level.
    assert cpu_levels.LEVELS["x86-64"].cpuinfo_flags == frozenset()
    assert list(cpu_levels.LEVELS)[-1] == "x86-64"


def test_each_level_includes_the_features_of_the_levels_below():
    levels = list(cpu_levels.LEVELS.values())
    for better, worse in zip(levels, levels[1:], strict=False):
        assert set(worse.llvm_features) < set(better.llvm_features)
        assert worse.cpuinfo_flags <= better.cpuinfo_flags
    assert {"avx512f", "avx512vl"} <= set(cpu_levels.LEVELS["x86-64-v4"].llvm_features)
    assert {"avx2", "fma"} <= set(cpu_levels.LEVELS["x86-64-v3"].llvm_features)


def test_an_unknown_level_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="x86-64-v4, x86-64-v3"):
        cpu_levels.pin("avx9000", {})


def test_warm_scenes_cover_every_fractal_precision_and_output():
    from fractal_app.fractals import FRACTALS

    seen = {(s.fractal, s.precision, s.output, s.bit_depth) for s in warmup.warm_scenes()}
    for fractal in FRACTALS:
        for precision in ("float64", "float32"):
            for bit_depth in (8, 16):
                assert (fractal, precision, "image", bit_depth) in seen
    assert {s.fractal for s in warmup.warm_scenes() if s.output == "counts"} == {
        name for name, fractal in FRACTALS.items() if not fractal.is_3d
    }


def test_warm_views_hold_samples_that_never_escape():
    """Some kernels run only for samples still iterating after a first pass (the 2D block
    kernels resume them later): each warm view must contain such samples, so that those
    kernels are compiled into the image too."""
    from fractal_app import render

    for scene in warmup.warm_scenes():
        if scene.is_3d or scene.output != "counts":
            continue
        counts = render.render_band(scene, 0, scene.height_px)
        assert (counts == scene.max_iter).sum() >= 10, (scene.fractal, scene.precision)
        assert scene.max_iter >= 1000


# ---- the read-only cache -------------------------------------------------------------------

KERNEL_MODULE = '''
import numba

@numba.njit(cache=True)
def add_one(x):
    return x + 1
'''

RUN_KERNEL = '''
import sys
import tiny_kernel
value = {argument}
print(tiny_kernel.add_one(value))
stats = tiny_kernel.add_one.stats
print("hits", sum(stats.cache_hits.values()), "misses", sum(stats.cache_misses.values()))
'''


@pytest.fixture
def scratch_dir():
    """A folder the test makes read-only; its write bits are given back before removal."""
    path = Path(tempfile.mkdtemp(prefix="fractal-app-cache-test-"))
    yield path
    for item in [path, *path.rglob("*")]:
        item.chmod(item.stat().st_mode | 0o200)
    shutil.rmtree(path, ignore_errors=True)


@functools.cache
def _read_only_mounts_work() -> bool:
    """Whether this (root) process may make a private read-only bind mount."""
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(
            _read_only(["true"], [Path(folder)]), capture_output=True, check=False
        )
    return probe.returncode == 0


def _need_read_only_folders() -> None:
    if os.geteuid() == 0 and not _read_only_mounts_work():
        pytest.skip("root ignores permission bits, and `unshare --mount` (for a read-only bind "
                    "mount) is not permitted here")


def _read_only(command: list[str], paths: list[Path]) -> list[str]:
    """``command`` with ``paths`` read-only for it: a read-only bind mount in a private mount
    namespace when we are root (root ignores permission bits), else chmod has done it."""
    if os.geteuid() != 0:
        return command
    mounts = " && ".join(
        f"mount --bind {p} {p} && mount -o remount,ro,bind {p} {p}" for p in paths
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'{mounts} && exec "$@"', "sh", *command]


def _run(folder: Path, cache: Path, argument: str, read_only: bool, **env_changes):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), str(Path(warmup.__file__).parents[1])]),
        "NUMBA_CACHE_DIR": str(cache),
        "NUMBA_CACHE_LOCATOR_CLASSES": "fractal_app.warmup.ImageCacheLocator",
        "NUMBA_CPU_NAME": "x86-64",
        "NUMBA_CPU_FEATURES": "",
        "PYTHONDONTWRITEBYTECODE": "1",
        **env_changes,
    }
    command = [sys.executable, "-c", RUN_KERNEL.format(argument=argument)]
    if read_only:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        command = _read_only(command, [folder])
    return subprocess.run(
        command, env=env, cwd=folder, capture_output=True, text=True, timeout=120, check=False
    )


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the images target x86-64 levels")
def test_kernels_load_from_a_cache_the_process_cannot_write(scratch_dir):
    _need_read_only_folders()
    folder = scratch_dir
    (folder / "tiny_kernel.py").write_text(textwrap.dedent(KERNEL_MODULE))
    cache = folder / "cache"
    cache.mkdir()

    built = _run(folder, cache, "41", read_only=False)  # the image build: compiles, saves
    assert built.returncode == 0, built.stderr
    assert built.stdout.split() == ["42", "hits", "0", "misses", "1"]
    assert list((cache / "x86-64").rglob("*.nbi")), "the cache went to the level's subtree"

    # Run time: the folder is read-only for the process, as an image is for a foreign uid.
    before = _snapshot(cache)
    loaded = _run(folder, cache, "1", read_only=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["2", "hits", "1", "misses", "0"]
    assert _snapshot(cache) == before, "loading must write nothing"

    # A signature the build did not warm compiles, then fails to save with a clear message.
    missing = _run(folder, cache, "1.5", read_only=True)
    assert missing.returncode != 0
    assert "not in the image's read-only cache" in missing.stderr
    assert "fractal_app.warmup" in missing.stderr
    assert _snapshot(cache) == before


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the images target x86-64 levels")
def test_numba_alone_refuses_a_cache_it_cannot_write(scratch_dir):
    """Why the locator exists: with Numba's own locators and nothing writable (cache folder,
    the module's __pycache__, a home directory), a cache=True kernel cannot even be defined:
    the situation of a foreign uid on a read-only image."""
    _need_read_only_folders()
    folder = scratch_dir
    (folder / "tiny_kernel.py").write_text(textwrap.dedent(KERNEL_MODULE))
    cache = folder / "cache"
    cache.mkdir()
    result = _run(
        folder, cache, "1", read_only=True, NUMBA_CACHE_LOCATOR_CLASSES="", HOME=str(folder),
        XDG_CACHE_HOME=str(folder),
    )
    assert result.returncode != 0
    assert "cannot cache function" in result.stderr

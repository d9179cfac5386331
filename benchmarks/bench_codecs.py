"""The app's file codecs against well-kept libraries (issue 16, item 7): time and peak memory.

Four jobs, each on the poster scene's pixels (mandelbrot, centre -0.75, width 3, max_iter 64,
as bench_poster.py renders them), each candidate in a fresh process so its peak resident
memory (``VmHWM``, C libraries included) is its own:

- ``final_png``: the requestor's final image from its accepted bands (``.npy`` files, read a
  few MiB at a time as ``task_files.assemble_result`` does): ``pngstream`` (level 1, on every
  core) with CPython's zlib (with Z_RLE, as the app had it), with zlib-ng, with ISA-L (the
  app's), libvips (``rawload`` of each band file, ``arrayjoin``, ``pngsave``, Sub filter,
  compression 1).
- ``band_png``: a provider's band file (``bandfile.write_band``, level 3, one thread)
  with zlib, zlib-ng, ISA-L, and libvips ``pngsave`` of the band in memory.
- ``band_read``: the requestor's strict reader (``bandfile.read_band``) with zlib, zlib-ng,
  ISA-L, and libvips ``pngload_buffer`` after the same structural checks.
- ``counts_tiff``: the 32-bit counts TIFF from the bands: the app's
  (``pngstream.write_counts_tiff``: ``tifffile`` from an iterator of strips; until issue 16
  a hand-written writer), libvips ``tiffsave``.

Candidates run alternated (A B C A B C ...), ``FRACTAL_CODECS_REPEATS`` rounds; the table
gives each one's best wall time and its peak RSS (``VmHWM``) above an idle process with the same
imports.

Opt-in (libraries beyond the app's, a few minutes)::

    .venv/bin/pip install pyvips==3.2.0 pyvips-binary==8.18.7 tifffile==2026.3.3 \
        zlib-ng==1.1.0 isal==1.9.1
    FRACTAL_CODECS=1 .venv/bin/pytest benchmarks/bench_codecs.py -s
    FRACTAL_CODECS_SIZE=8192 FRACTAL_CODECS=1 .venv/bin/pytest benchmarks/bench_codecs.py -s
    FRACTAL_CODECS_JOBS=counts_tiff FRACTAL_CODECS=1 .venv/bin/pytest benchmarks/bench_codecs.py -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pytest
from harness import cpu_model

ENABLED = os.environ.get("FRACTAL_CODECS") == "1"
SIZE = int(os.environ.get("FRACTAL_CODECS_SIZE", "4096"))
BANDS = int(os.environ.get("FRACTAL_CODECS_BANDS", "4"))
REPEATS = int(os.environ.get("FRACTAL_CODECS_REPEATS", "3"))
ONLY = os.environ.get("FRACTAL_CODECS_JOBS")  # e.g. "final_png,counts_tiff"; default all

JOBS = {
    "final_png": ("hand-zlib", "hand-zlib-ng", "hand-isal", "vips"),
    "band_png": ("hand-zlib", "hand-zlib-ng", "hand-isal", "vips"),
    "band_read": ("hand-zlib", "hand-zlib-ng", "hand-isal", "vips"),
    "counts_tiff": ("app", "vips"),
}
VIPS_FILTER_SUB = 0x10  # VipsForeignPngFilter: Sub only, as the app writes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ENABLED, reason="opt-in: set FRACTAL_CODECS=1 (needs extra libraries)"),
]


def _use_deflate(library: str) -> None:
    """Point the app's codecs at another zlib-compatible deflate (the app's own: ISA-L)."""
    from fractal_app import bandfile, pngstream

    if library == "isal":
        return
    if library == "zlib-ng":
        from zlib_ng import zlib_ng as module
    else:
        module = _zlib_as_before(pngstream.FINAL_COMPRESS_LEVEL)
    pngstream.deflate = bandfile.deflate = module


def _zlib_as_before(final_level: int):
    """CPython's zlib as the app used it before ISA-L: the final image (level 1) with Z_RLE,
    which ISA-L does not have."""
    import zlib

    def compressobj(level=-1, method=zlib.DEFLATED, wbits=15, mem_level=8,
                    strategy=zlib.Z_DEFAULT_STRATEGY):
        if level == final_level:
            strategy = zlib.Z_RLE
        return zlib.compressobj(level, method, wbits, mem_level, strategy)

    names = {name: getattr(zlib, name) for name in dir(zlib) if not name.startswith("_")}
    return types.SimpleNamespace(**{**names, "compressobj": compressobj})


def _band_files(folder: Path, variant: str) -> list[Path]:
    return sorted(folder.glob(f"{variant}-band-*.npy"))


def _vips_join(paths: list[Path], bands: int, fmt: str):
    """One libvips image over the band files, each read in place (rawload maps the file)."""
    import pyvips

    parts = []
    for path in paths:
        values = np.load(path, mmap_mode="r")
        header = values.offset
        height, width = values.shape[:2]
        kind = "rgb16" if fmt == "ushort" else "srgb" if bands == 3 else "b-w"
        parts.append(pyvips.Image.rawload(str(path), width, height, bands, offset=header,
                                          format=fmt, interpretation=kind))
    return pyvips.Image.arrayjoin(parts, across=1)


def run_one(job: str, candidate: str, folder: Path, variant: str) -> dict:
    """Run one candidate once in this process; return its wall seconds and output size."""
    from fractal_app import bandfile, pngstream

    band_paths = _band_files(folder, variant)
    first = np.load(band_paths[0], mmap_mode="r")
    width = first.shape[1]
    height = sum(np.load(p, mmap_mode="r").shape[0] for p in band_paths)
    bits = 16 if first.dtype == np.uint16 else 8
    output = "counts" if first.ndim == 2 else "image"
    out = folder / f"out-{job}-{candidate}"
    if candidate.startswith("hand-"):
        _use_deflate(candidate.removeprefix("hand-"))
    meta = bandfile.BandMeta("t", "s", 0, first.shape[0], output)
    band_file = folder / f"{variant}-band0.png"
    if job == "band_read":
        if not band_file.exists():  # made once, by the app's own writer
            bandfile.write_band(band_file, np.asarray(first), meta)
        if candidate == "vips":
            import pyvips
    start = time.perf_counter()
    if job == "final_png" and candidate.startswith("hand-"):
        from fractal_app.task_files import band_value_blocks

        with pngstream.PngStreamWriter(out, width, height, bits,
                                       text={"Software": "fractal-app"}) as writer:
            for path in band_paths:
                for block in band_value_blocks(path):
                    writer.write_rows(block)
    elif job == "final_png":
        image = _vips_join(band_paths, 3, "ushort" if bits == 16 else "uchar")
        image.pngsave(str(out), compression=1, filter=VIPS_FILTER_SUB, strip=True)
    elif job == "band_png" and candidate.startswith("hand-"):
        bandfile.write_band(out, np.asarray(first), meta)
    elif job == "band_png":
        import pyvips

        values = np.ascontiguousarray(first)
        image = pyvips.Image.new_from_memory(values.data, width, values.shape[0], 3,
                                             "ushort" if bits == 16 else "uchar")
        image.pngsave(str(out), compression=3, filter=VIPS_FILTER_SUB)
    elif job == "band_read" and candidate.startswith("hand-"):
        bandfile.read_band(band_file, meta, width, bits)
    elif job == "band_read":
        data = bandfile._read_untrusted(band_file, bandfile.max_file_bytes(meta, width, bits))
        bandfile._parse(data, meta, width, meta.format.png_bits(bits))
        image = pyvips.Image.pngload_buffer(data, access="sequential")
        np.ndarray(buffer=image.write_to_memory(), dtype=first.dtype,
                   shape=(image.height, image.width, image.bands))
    elif job == "counts_tiff" and candidate == "app":
        from fractal_app.task_files import band_value_blocks

        pngstream.write_counts_tiff(
            out, width, height, (block for path in band_paths for block in band_value_blocks(path))
        )
    else:
        image = _vips_join(band_paths, 1, "int")
        image.tiffsave(str(out), bigtiff=4 * width * height > 2**32 - 2**24, strip=True)
    if job in ("final_png", "counts_tiff") and not candidate.startswith("hand"):
        _fsync(out)  # as the app's writers do: the result is on disk before it is renamed
    seconds = time.perf_counter() - start
    size = out.stat().st_size if out.exists() else 0
    out.unlink(missing_ok=True)
    return {"seconds": seconds, "bytes": size}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _child(job: str, candidate: str, folder: Path, variant: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, job, candidate, str(folder), variant],
        capture_output=True, text=True, timeout=900, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{job} {candidate}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def _render_bands(folder: Path, variant: str) -> None:
    from fractal_app import render
    from fractal_app.scene import parse_scene

    extra = {"image8": {"bit_depth": 8}, "image16": {"bit_depth": 16},
             "counts": {"output": "counts"}}[variant]
    scene = parse_scene({"fractal": "mandelbrot", "resolution": [SIZE, SIZE],
                         "center": [-0.75, 0.0], "width": 3.0, "max_iter": 64, **extra})
    edges = np.linspace(0, SIZE, BANDS + 1).astype(int)
    for index, (start, stop) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        np.save(folder / f"{variant}-band-{index:03d}.npy", render.render_band(scene, start, stop))


def test_codecs_against_libraries():
    print(f"\n{SIZE}x{SIZE} in {BANDS} bands, {REPEATS} rounds alternated, {cpu_model()}, "
          f"{os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-codecs-") as tmp:
        folder = Path(tmp)
        for variant in ("image8", "image16", "counts"):
            _render_bands(folder, variant)
        idle = _child("idle", "idle", folder, "image8")["rss_mib"]
        print(f"peak MiB: above an idle process with the same imports ({idle:.0f} MiB)")
        print(f"{'job':12} {'pixels':8} {'candidate':13} {'best s':>8} {'peak MiB':>9} "
              f"{'file MiB':>9}", flush=True)
        for job, candidates in JOBS.items():
            if ONLY and job not in ONLY.split(","):
                continue
            variants = ("counts",) if job == "counts_tiff" else ("image8", "image16")
            for variant in variants:
                best: dict[str, dict] = {}
                for _ in range(REPEATS):
                    for candidate in candidates:
                        got = _child(job, candidate, folder, variant)
                        old = best.get(candidate, got)
                        best[candidate] = {"seconds": min(old["seconds"], got["seconds"]),
                                           "rss_mib": max(old["rss_mib"], got["rss_mib"]),
                                           "bytes": got["bytes"]}
                for candidate, got in best.items():
                    print(f"{job:12} {variant:8} {candidate:13} {got['seconds']:8.3f} "
                          f"{got['rss_mib'] - idle:9.0f} {got['bytes'] / 2**20:9.1f}", flush=True)


def _main(job: str, candidate: str, folder: str, variant: str) -> None:
    # What every candidate imports, so the idle process's peak is the common baseline.
    import fractal_app.bandfile  # noqa: F401
    import fractal_app.pngstream  # noqa: F401

    result = {"seconds": 0.0, "bytes": 0}
    if job != "idle":
        result = run_one(job, candidate, Path(folder), variant)
    result["rss_mib"] = _peak_rss_mib()
    print(json.dumps(result))


def _peak_rss_mib() -> float:
    """This process's peak resident memory. Not ``ru_maxrss``: Linux keeps that across
    exec, so a child started from a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    _main(*sys.argv[1:5])

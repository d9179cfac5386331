"""fractal-app explore: is it fast enough to feel live on 2 cores? (issue 12)

Targets: a 256x256 tile of the default Mandelbrot view (centre -0.5, width 3.5, max_iter
1000) in <= 50 ms, rendered and PNG-encoded as the server does it (one thread a tile), and
over HTTP from the running server; a 1920x1080 screen of tiles at the default view refined
progressively: every coarse preview arrives before the full tiles are done.

Run::

    .venv/bin/pytest benchmarks/bench_explore.py -s
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.parse

import pytest
from harness import check_target, cpu_model

from fractal_app.explore import pictures, tiles
from fractal_app.scene import parse_scene

aiohttp = pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from fractal_app.explore.server import create_app  # noqa: E402

TILE_TARGET_S = 0.050
DEFAULT_VIEW = {"fractal": "mandelbrot", "resolution": [256, 256], "max_iter": 1000}
SCREEN = (1920, 1080)
# A browser opens at most 6 connections to one server.
BROWSER_CONNECTIONS = 6


def _tile_query(scene: dict, level: str) -> str:
    return urllib.parse.urlencode({"level": level, "scene": json.dumps(scene)})


@pytest.mark.benchmark(group="explore-tile")
def test_default_view_tile_render(warmed_benchmark, summary):
    """Render and encode, on one thread, as a tile request does."""
    print(f"CPU: {cpu_model()}")
    scene = parse_scene(DEFAULT_VIEW)
    warmed_benchmark.pedantic(pictures.render_png, args=(scene, 1), rounds=30, iterations=1)
    median = warmed_benchmark.stats.stats.median
    summary(f"explore: 256x256 default-view tile, render + PNG, 1 thread: {median * 1e3:.1f} ms")
    check_target(warmed_benchmark, "tile_render_median_s", median, TILE_TARGET_S)


@pytest.mark.benchmark(group="explore-tile")
def test_default_view_tile_over_http(benchmark, summary):
    """The same tile through the server: the page's view of the time. The browser would
    cache a tile, so each round asks for a slightly different max_iter."""

    async def scenario():
        times = []
        async with TestClient(TestServer(create_app())) as client:
            base = {"fractal": "mandelbrot", "max_iter": 1000}
            # Tile (z=0) covering the default view's middle: the costliest one there.
            url = f"/tile/0/-1/-1.png?{_tile_query(base, 'full')}"
            assert (await client.get(url)).status == 200  # loads the kernels
            for round_ in range(30):
                scene = {**base, "max_iter": 1000 + round_}
                started = time.perf_counter()
                answer = await client.get(f"/tile/0/-1/-1.png?{_tile_query(scene, 'full')}")
                await answer.read()
                times.append(time.perf_counter() - started)
                assert answer.status == 200
        return times

    times = asyncio.run(scenario())
    benchmark.pedantic(lambda: None, rounds=1)  # the figures are the HTTP times below
    median = sorted(times)[len(times) // 2]
    benchmark.extra_info["http_median_s"] = round(median, 4)
    summary(
        f"explore: 256x256 tile over HTTP: median {median * 1e3:.1f} ms, "
        f"best {min(times) * 1e3:.1f} ms ({cpu_model()})"
    )
    check_target(benchmark, "tile_http_median_s", median, TILE_TARGET_S)


@pytest.mark.benchmark(group="explore-screen")
def test_screen_of_tiles_refines_coarse_first(benchmark, summary):
    """A 1920x1080 screen at the default view: every tile asked for at both levels at once,
    over 6 connections, coarse first as the page does. Coarse previews must all arrive
    before the full tiles are done, and the whole screen's time is reported."""
    width_units = 3.5
    zoom = round(
        math.log2(SCREEN[0] / (tiles.TILE_SIZE / tiles.TILE_WIDTH_AT_ZOOM_0) / width_units)
    )
    tile_width = tiles.TILE_WIDTH_AT_ZOOM_0 / 2**zoom
    px = tile_width / tiles.TILE_SIZE
    left, right = -0.5 - SCREEN[0] / 2 * px, -0.5 + SCREEN[0] / 2 * px
    top, bottom = SCREEN[1] / 2 * px, -SCREEN[1] / 2 * px
    xs = range(math.floor(left / tile_width), math.ceil(right / tile_width))
    ys = range(math.floor(-top / tile_width), math.ceil(-bottom / tile_width))
    keys = [(x, y) for y in ys for x in xs]
    scene = {"fractal": "mandelbrot", "max_iter": 1000}

    async def scenario():
        done: dict[str, list[float]] = {"coarse": [], "full": []}
        async with TestClient(TestServer(create_app())) as client:
            await (await client.get(f"/tile/0/0/0.png?{_tile_query(scene, 'coarse')}")).read()
            gate = asyncio.Semaphore(BROWSER_CONNECTIONS)
            started = time.perf_counter()

            async def fetch(level, x, y):
                async with gate:
                    url = f"/tile/{zoom}/{x}/{y}.png?{_tile_query(scene, level)}"
                    answer = await client.get(url)
                    await answer.read()
                    assert answer.status == 200
                    done[level].append(time.perf_counter() - started)

            requests = [fetch("coarse", x, y) for x, y in keys]
            requests += [fetch("full", x, y) for x, y in keys]
            await asyncio.gather(*requests)
        return done

    done = asyncio.run(scenario())
    benchmark.pedantic(lambda: None, rounds=1)
    coarse_s, full_s = max(done["coarse"]), max(done["full"])
    benchmark.extra_info.update(
        tiles=len(keys), coarse_s=round(coarse_s, 4), full_s=round(full_s, 4)
    )
    summary(
        f"explore: 1920x1080 screen, {len(keys)} tiles at zoom {zoom}: coarse previews "
        f"{coarse_s * 1e3:.0f} ms, full tiles {full_s * 1e3:.0f} ms ({cpu_model()})"
    )
    check_target(benchmark, "coarse_before_full", coarse_s, full_s)

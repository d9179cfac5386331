"""fractal-app explore without a browser: tile geometry, the tile server's answers, the
scheduler's priorities and dropped requests, and the command's start-up on 127.0.0.1.

The browser test (test_explore_browser.py) drives the page itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from fractal_app import render
from fractal_app.errors import InvalidArgument
from fractal_app.explore import tiles
from fractal_app.explore.scheduler import RenderScheduler
from fractal_app.scene import parse_scene

aiohttp = pytest.importorskip("aiohttp", reason="explore's web server needs aiohttp ([dev])")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from fractal_app.explore.server import announcement, create_app, host_names  # noqa: E402

FULL = tiles.LEVELS["full"]
COARSE = tiles.LEVELS["coarse"]
MANDELBROT = {"fractal": "mandelbrot", "max_iter": 200}


def _pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGB"
    return np.asarray(image)


# --- geometry -------------------------------------------------------------------------------


def test_tile_centres_are_exact_decimals_even_at_the_deepest_zoom():
    deepest = tiles.MAX_ZOOM["float64"]
    (re_text, im_text), width = tiles.tile_geometry(deepest, 123_456_789, -987_654_321)
    assert width == Fraction(tiles.TILE_WIDTH_AT_ZOOM_0, 2**deepest)
    assert Fraction(Decimal(re_text)) == (123_456_789 + Fraction(1, 2)) * width
    assert Fraction(Decimal(im_text)) == -(-987_654_321 + Fraction(1, 2)) * width
    assert tiles.decimal_string(Fraction(-3, 8)) == "-0.375"
    with pytest.raises(ValueError, match="dyadic"):
        tiles.decimal_string(Fraction(1, 3))


def test_four_tiles_are_the_quadrants_of_one_render_of_their_union():
    """Tiles follow the README's pixel geometry: the 2x2 tiles around a tile corner are,
    bit for bit, the quadrants of one 512x512 render centred on that corner."""
    z, x, y = 5, -24, -4  # near seahorse valley
    tile_width = Fraction(tiles.TILE_WIDTH_AT_ZOOM_0, 2**z)
    corner_re, corner_im = (x + 1) * tile_width, -(y + 1) * tile_width
    union = parse_scene(
        {
            **MANDELBROT,
            "resolution": [512, 512],
            "center": [float(corner_re), float(corner_im)],
            "width": float(2 * tile_width),
        }
    )
    whole = render.render_band(union, 0, 512)
    for dy in (0, 1):
        for dx in (0, 1):
            scene = tiles.tile_scene(MANDELBROT, z, x + dx, y + dy, FULL)
            tile = render.render_band(scene, 0, 256)
            quadrant = whole[256 * dy : 256 * (dy + 1), 256 * dx : 256 * (dx + 1)]
            np.testing.assert_array_equal(tile, quadrant)


def test_tile_scene_takes_the_persons_fields_and_the_maps_view():
    base = {**MANDELBROT, "palette": "fire", "center": [9, 9], "width": 1, "output": "counts"}
    scene = tiles.tile_scene(base, 2, 0, -1, COARSE)
    assert scene.palette == "fire" and scene.max_iter == 200
    assert scene.center == (0.5, 0.5) and scene.width == 1.0
    assert scene.resolution == (64, 64) and scene.output == "image" and scene.bit_depth == 8
    # A coarse preview takes one sample a pixel; the full tile keeps the person's.
    smooth = {**MANDELBROT, "supersample": 3}
    assert tiles.tile_scene(smooth, 2, 0, 0, COARSE).supersample == 1
    assert tiles.tile_scene(smooth, 2, 0, 0, FULL).supersample == 3


@pytest.mark.parametrize(
    ("base", "z", "x", "y", "reason"),
    [
        (MANDELBROT, -1, 0, 0, "zoom -1 is out of range"),
        (MANDELBROT, 42, 0, 0, "zoom 42 is out of range: 0 .. 41"),
        ({**MANDELBROT, "precision": "float32"}, 13, 0, 0, "0 .. 12 for precision 'float32'"),
        (MANDELBROT, 0, 4, 0, "tile x=4 is outside"),
        (MANDELBROT, 1, 0, -9, "tile y=-9 is outside"),
        ({"fractal": "mandelbulb"}, 0, 0, 0, "is 3D and has no map tiles"),
        ({**MANDELBROT, "max_iter": 0}, 0, 0, 0, "'max_iter' must be >= 1"),
        ({"fractal": "mandelbrot", "colour": 1}, 0, 0, 0, "'colour' is not a known parameter"),
    ],
)
def test_bad_tiles_are_refused_with_the_reason(base, z, x, y, reason):
    with pytest.raises(InvalidArgument, match=re.escape(reason)):
        tiles.tile_scene(base, z, x, y, FULL)


# --- the scheduler --------------------------------------------------------------------------


def test_scheduler_renders_coarse_first_and_drops_requests_nobody_waits_for():
    async def scenario():
        scheduler = RenderScheduler(workers=1)
        scheduler.start()
        order = []
        gate = asyncio.Event()
        loop = asyncio.get_running_loop()

        def job(name):
            def work():
                if name == "blocker":
                    asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(timeout=10)
                order.append(name)
                return name

            return work

        blocker = asyncio.create_task(scheduler.run(1, job("blocker")))
        await asyncio.sleep(0.05)  # the only worker is now inside the blocker
        full = asyncio.create_task(scheduler.run(FULL.priority, job("full")))
        stale = asyncio.create_task(scheduler.run(FULL.priority, job("stale")))
        coarse = asyncio.create_task(scheduler.run(COARSE.priority, job("coarse")))
        await asyncio.sleep(0.05)
        stale.cancel()  # the browser gave up on it while it waited
        gate.set()
        assert await asyncio.gather(blocker, full, coarse) == ["blocker", "full", "coarse"]
        await scheduler.close()
        return order, scheduler.stats

    order, stats = asyncio.run(scenario())
    assert order == ["blocker", "coarse", "full"]
    assert stats["dropped"] == 1 and stats["rendered"] == 3


# --- the web server, in process --------------------------------------------------------------


def _serve(test):
    """Run ``await test(client)`` against a fresh explorer application."""

    async def scenario():
        async with TestClient(TestServer(create_app(workers=2))) as client:
            return await test(client)

    return asyncio.run(scenario())


def _tile_url(z, x, y, scene=MANDELBROT, level="full"):
    query = urllib.parse.urlencode({"scene": json.dumps(scene), "level": level})
    return f"/tile/{z}/{x}/{y}.png?{query}"


def test_a_tile_is_the_kernels_pixels():
    async def test(client):
        answers = {}
        for level in ("full", "coarse"):
            answer = await client.get(_tile_url(3, -5, -2, level=level))
            assert answer.status == 200 and answer.content_type == "image/png"
            answers[level] = _pixels(await answer.read())
        return answers

    answers = _serve(test)
    for level, pixels in answers.items():
        scene = tiles.tile_scene(MANDELBROT, 3, -5, -2, tiles.LEVELS[level])
        np.testing.assert_array_equal(pixels, render.render_band(scene, 0, scene.height_px))
    assert answers["full"].shape == (256, 256, 3) and answers["coarse"].shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("/tile/zz/0/0.png?scene=%7B%7D", "z must be an integer, got 'zz'"),
        ("/tile/0/0/0.png", "query parameter 'scene' is missing"),
        ("/tile/0/0/0.png?scene=%7Bnot", "query parameter 'scene' is not valid JSON"),
        ("/tile/0/0/0.png?scene=%5B1%5D", "'scene' must be a JSON object"),
        (_tile_url(0, 0, 0, level="sharp"), "level must be one of coarse, full, got 'sharp'"),
        (_tile_url(50, 0, 0), "zoom 50 is out of range"),
        (_tile_url(0, 0, 0, {"fractal": "mandelbrot", "max_iter": 1e9}), "'max_iter'"),
        (_tile_url(0, 0, 0, {"fractal": "newton"}), "field 'fractal' must be one of"),
        ("/view.png?w=5000&h=5000&scene=%7B%7D", "view size 5000x5000 is out of range"),
    ],
)
def test_bad_requests_get_400_with_the_reason(url, reason):
    async def test(client):
        answer = await client.get(url)
        return answer.status, await answer.text()

    status, text = _serve(test)
    assert status == 400
    assert reason in text


def test_the_3d_view_and_the_page_are_served():
    scene = {"fractal": "mandelbulb", "max_steps": 64}

    async def test(client):
        query = urllib.parse.urlencode({"scene": json.dumps(scene), "level": "coarse"})
        view = await client.get(f"/view.png?w=64&h=36&{query}")
        page = await client.get("/")
        leaflet = await client.get("/static/leaflet/leaflet.js")
        escape = await client.get("/static/..%2F..%2Fserver.py")
        info = await (await client.get("/api/info")).json()
        return view.status, await view.read(), await page.text(), leaflet.status, escape, info

    status, png, page, leaflet_status, escape, info = _serve(test)
    assert status == 200
    expected = tiles.view_scene(scene, 64, 36, COARSE)
    assert expected.resolution == (16, 9)
    np.testing.assert_array_equal(_pixels(png), render.render_band(expected, 0, 9))
    assert "/static/leaflet/leaflet.js" in page and leaflet_status == 200
    assert escape.status == 404
    assert info["three_d"] == ["mandelbulb", "mandelbox"]
    assert info["defaults"]["julia"]["c"] == [-0.8, 0.156]


def test_scene_check_and_render_refuse_bad_scenes_and_cross_site_posts():
    async def test(client):
        good = json.dumps({"fractal": "julia", "resolution": [8, 8]})
        headers = {"Content-Type": "application/json"}
        checked = await client.post("/api/scene/check", data=good, headers=headers)
        bad = await client.post(
            "/api/render", data=json.dumps({"fractal": "julia"}), headers=headers
        )
        form = await client.post("/api/render", data=good, headers={"Content-Type": "text/plain"})
        cross = await client.post(
            "/api/render", data=good, headers={**headers, "Origin": "http://evil.example"}
        )
        unknown = await client.get("/api/render/77")
        return (
            (checked.status, await checked.json()),
            (bad.status, await bad.text()),
            (form.status, await form.text()),
            cross.status,
            (unknown.status, await unknown.text()),
        )

    checked, bad, form, cross, unknown = _serve(test)
    assert checked[0] == 200 and checked[1]["canonical"]["c"] == [-0.8, 0.156]
    assert bad == (400, "field 'resolution' is required")
    assert form[0] == 400 and "application/json" in form[1]
    assert cross == 403
    assert unknown[0] == 404 and "no render '77'" in unknown[1]


# --- the command ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explorer():
    """``fractal-app explore --port 0`` in its own process, and the URL it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fractal_app.cli", "explore", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = [process.stdout.readline(), process.stdout.readline()]
        match = re.search(r"open (http://127\.0\.0\.1:(\d+)/)", lines[0])
        assert match, lines
        yield match.group(1), "".join(lines)
    finally:
        process.terminate()
        returncode = process.wait(timeout=30)
        process.stdout.close()
        assert returncode == 0


def test_the_command_serves_loopback_only_and_says_so(explorer):
    url, announcement = explorer
    assert "listening on 127.0.0.1 only, so other machines cannot connect" in announcement
    with urllib.request.urlopen(url + "api/info", timeout=30) as answer:
        assert answer.status == 200
    # A name that is not this server's (DNS rebinding) is refused.
    request = urllib.request.Request(url + "api/info", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    with refused.value:
        assert refused.value.code == 403


def test_another_host_is_announced_as_open_to_other_machines():
    """Checked without binding it: tests listen on 127.0.0.1 only."""
    assert "other machines CAN connect" in announcement("http://0.0.0.0:80/", "0.0.0.0")
    assert "cannot connect" in announcement("http://[::1]:80/", "::1")
    # Answering any Host header is the price of serving other machines by name.
    assert host_names("0.0.0.0", 80) == set()
    assert "localhost:80" in host_names("127.0.0.1", 80)


def test_stale_tile_requests_are_dropped_before_they_render(explorer):
    """Requests whose client hung up while they waited are never rendered."""
    url, _ = explorer
    # Inside the main cardioid: every pixel runs to max_iter, about 0.4 s a tile.
    scene = {"fractal": "mandelbrot", "max_iter": 10_000}

    def stats():
        with urllib.request.urlopen(url + "api/stats", timeout=30) as answer:
            return json.loads(answer.read())

    before = stats()

    host_port = urllib.parse.urlsplit(url).netloc
    host, port = host_port.rsplit(":", 1)

    async def give_up_on_tiles():
        """Ask for twelve tiles, then hang up on all of them, as a browser does when the
        view moves on."""
        connections = []
        for x in range(-8, 4):
            reader, writer = await asyncio.open_connection(host, int(port))
            request = f"GET {_tile_url(6, x, -1, scene)} HTTP/1.1\r\nHost: {host_port}\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            connections.append(writer)
        await asyncio.sleep(0.3)
        for writer in connections:
            writer.close()
            await writer.wait_closed()

    asyncio.run(give_up_on_tiles())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = stats()
        done = {k: now.get(k, 0) - before.get(k, 0) for k in ("rendered", "dropped", "failed")}
        if sum(done.values()) == 12:
            break
        time.sleep(0.1)
    assert sum(done.values()) == 12, done
    assert done["failed"] == 0
    # Two threads could start at most a few of the twelve in 0.3 s.
    assert done["dropped"] >= 8, done


def test_a_poster_renders_through_the_lifecycle_with_progress():
    scene = {"fractal": "julia", "resolution": [40, 24], "max_iter": 300, "center": ["0.1", "0"]}

    async def scenario():
        async with TestClient(TestServer(create_app(providers=1))) as client:
            started = await client.post(
                "/api/render", data=json.dumps(scene), headers={"Content-Type": "application/json"}
            )
            assert started.status == 202
            job = await started.json()
            seen = [job]
            deadline = time.monotonic() + 120
            while job["state"] in ("queued", "rendering") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                job = await (await client.get(f"/api/render/{job['id']}")).json()
                seen.append(job)
            assert job["state"] == "done", job
            result = await client.get(job["download"])
            disposition = result.headers["Content-Disposition"]
            return seen, await result.read(), disposition

    seen, png, disposition = asyncio.run(scenario())
    final = seen[-1]
    assert final["bands_done"] == final["bands_total"] >= 1
    assert all(s["bands_done"] <= final["bands_total"] for s in seen)
    assert disposition == f'attachment; filename="julia-{final["id"]}.png"'
    expected = render.render_band(parse_scene(scene), 0, 24)
    np.testing.assert_array_equal(_pixels(png), expected)

"""fractal-app explore in a real browser: Debian's headless Chromium, driven by Playwright.

One walk through the page, as a person would: it loads, the wheel zooms in, the tiles
change and are the kernels' pixels, "save scene" downloads the exact scene JSON, loading it
back restores the view exactly, "render" runs the one-machine lifecycle with progress and
offers the poster, which is the scene's own pixels, and a shift-drag box zooms; then a 3D
fractal's camera orbits.

Playwright drives the distribution's chromium (no browser download). CI installs it
(.ci/run); without it locally this module skips, saying so.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fractal_app import render
from fractal_app.explore import tiles
from fractal_app.scene import parse_scene

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) to run "
        "the explorer's browser test; CI installs it",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: ./scripts/setup.sh installs it"
)

TILE_URL = re.compile(r"/tile/(-?\d+)/(-?\d+)/(-?\d+)\.png\?level=(\w+)&scene=([^&]+)$")

# The pixels of an <img> as the page shows them, read back through a canvas.
READ_IMAGE_JS = """(image) => {
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let text = "";
  for (let i = 0; i < data.length; i += 1) text += String.fromCharCode(data[i]);
  return {width: canvas.width, height: canvas.height, rgba: btoa(text)};
}"""

# Settled: the level on show has full tiles (a zoom's first moments still show only the
# last level's, complete, before the new level starts loading) and every image is loaded.
TILES_SETTLED_JS = """() => {
  const {layers, map} = window.explorer;
  const images = [...document.querySelectorAll('.full-tiles img')];
  const level = `/tile/${Math.round(map.getZoom())}/`;
  return !layers.full.isLoading() && images.some((image) => image.src.includes(level)) &&
    images.every((image) => image.complete && image.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def explorer_url():
    process = subprocess.Popen(
        [sys.executable, "-m", "fractal_app.cli", "explore", "--port", "0", "--providers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        match = re.search(r"open (http://127\.0\.0\.1:\d+/)", process.stdout.readline())
        assert match
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


@pytest.fixture(scope="module")
def page(explorer_url):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        context = browser.new_context(
            viewport={"width": 1100, "height": 640}, accept_downloads=True
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(explorer_url)
        page.wait_for_function("window.explorer && window.explorer.ready")
        yield page
        browser.close()
        assert errors == [], errors


def _settle(page) -> None:
    page.wait_for_function(TILES_SETTLED_JS, timeout=60_000)


def _full_tiles(page) -> list[tuple[tuple[int, int, int], dict]]:
    """The full tiles of the level on show (Leaflet keeps the last level's a moment longer)."""
    sources = page.eval_on_selector_all(".full-tiles img", "images => images.map(i => i.src)")
    level = round(page.evaluate("window.explorer.map.getZoom()"))
    found = []
    for source in sources:
        if source.startswith("data:"):
            continue  # a tile whose request was cancelled, about to be removed
        match = TILE_URL.search(source)
        assert match, source
        z, x, y = (int(match.group(i)) for i in (1, 2, 3))
        if z == level:
            scene = json.loads(urllib.parse.unquote(match.group(5)))
            found.append(((z, x, y), scene))
    assert found, sources
    return found


def _image_pixels(page, selector: str) -> np.ndarray:
    shown = page.eval_on_selector(selector, READ_IMAGE_JS)
    rgba = np.frombuffer(base64.b64decode(shown["rgba"]), dtype=np.uint8)
    return rgba.reshape(shown["height"], shown["width"], 4)[..., :3]


def test_zoom_save_load_and_render_in_the_browser(page, tmp_path):
    _settle(page)
    before = {key for key, _ in _full_tiles(page)}
    zoom_before = page.evaluate("window.explorer.map.getZoom()")

    # Wheel zoom towards seahorse valley's side of the set, left of the map's centre.
    box = page.locator("#map").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.4)
    for _ in range(4):
        page.mouse.wheel(0, -240)
        page.wait_for_timeout(120)
    page.wait_for_function(f"window.explorer.map.getZoom() > {zoom_before + 1.5}")
    _settle(page)
    after = _full_tiles(page)
    assert {key for key, _ in after}.isdisjoint(before), "the tiles did not change"
    assert min(z for (z, _, _), _ in after) >= round(zoom_before) + 2

    # The tiles the browser shows are the kernels' pixels, bit for bit.
    for (z, x, y), scene in after[:2]:
        selector = f'.full-tiles img[src*="/tile/{z}/{x}/{y}.png"]'
        shown = _image_pixels(page, selector)
        expected = tiles.tile_scene(scene, z, x, y, tiles.LEVELS["full"])
        np.testing.assert_array_equal(shown, render.render_band(expected, 0, 256))

    # Save the scene at a small poster size: the download is the exact scene JSON.
    page.fill("#res-w", "96")
    page.fill("#res-h", "64")
    page.dispatch_event("#res-h", "change")
    with page.expect_download() as download:
        page.click("#save-scene")
    saved_path = tmp_path / "scene.json"
    download.value.save_as(saved_path)
    saved = json.loads(saved_path.read_text())
    assert saved == page.evaluate("window.explorer.currentScene()")
    scene = parse_scene(saved)
    assert scene.resolution == (96, 64) and saved["fractal"] == "mandelbrot"
    # Decimal strings with the digits the depth needs: a poster pixel is resolved.
    digits = len(saved["center"][0].split(".")[1])
    assert 10.0**-digits < scene.pixel_size / 10
    assert abs(float(saved["center"][0]) - page.evaluate("window.explorer.map.getCenter().lng")) < (
        scene.pixel_size
    )

    # Pan away, then load the saved scene: the view and the JSON come back exactly.
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 150, box["y"] + box["height"] / 2 + 40, steps=5)
    page.mouse.up()
    assert page.evaluate("window.explorer.currentScene()")["center"] != saved["center"]
    page.set_input_files("#load-scene", str(saved_path))
    compact = json.dumps(saved, separators=(",", ":"))  # as JSON.stringify writes it
    page.wait_for_function(
        f"JSON.stringify(window.explorer.currentScene()) === {json.dumps(compact)}"
    )

    # Render it through the lifecycle: progress in the page, the poster offered for download.
    page.click("#render")
    page.wait_for_selector("#render-download:not([hidden])", timeout=180_000)
    status = page.inner_text("#render-status")
    assert re.match(r"done: \d+ bands in [\d.]+ s", status), status
    progress = page.eval_on_selector("#render-progress", "p => [p.value, p.max]")
    assert progress[0] == progress[1] >= 1
    with page.expect_download() as download:
        page.click("#render-download")
    poster_path = tmp_path / "poster.png"
    download.value.save_as(poster_path)
    poster = np.asarray(Image.open(io.BytesIO(poster_path.read_bytes())).convert("RGB"))
    np.testing.assert_array_equal(poster, render.render_band(scene, 0, 64))

    # Box zoom: a shift-drag over a quarter of the map's width zooms in about two levels.
    zoom = page.evaluate("window.explorer.map.getZoom()")
    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.4)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.65, box["y"] + box["height"] * 0.6, steps=4)
    page.mouse.up()
    page.keyboard.up("Shift")
    page.wait_for_function(f"window.explorer.map.getZoom() > {zoom + 1.5}")


def test_a_3d_camera_orbits(page):
    page.select_option("#fractal", "mandelbulb")
    page.wait_for_function("document.querySelector('#view3d-image').dataset.level === 'full'")
    camera_before = page.evaluate("window.explorer.currentScene().camera")
    source_before = page.get_attribute("#view3d-image", "src")
    box = page.locator("#view3d").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2, steps=4)
    page.mouse.up()
    camera = page.evaluate("window.explorer.currentScene().camera")
    assert camera["look_at"] == camera_before["look_at"]
    assert camera["position"] != camera_before["position"]
    # Orbiting keeps the distance to the point looked at.
    distance = np.linalg.norm(np.subtract(camera["position"], camera["look_at"]))
    distance_before = np.linalg.norm(np.subtract(camera_before["position"], camera["look_at"]))
    assert distance == pytest.approx(distance_before, rel=1e-6)
    page.wait_for_function(
        "document.querySelector('#view3d-image').dataset.level === 'full' && "
        f"document.querySelector('#view3d-image').src !== {json.dumps(source_before)}"
    )
    parse_scene(page.evaluate("window.explorer.currentScene()"))

"""provider.rendered_ahead: the band's blocks, in order, the next one rendered meanwhile."""

import threading

import numpy as np
import pytest

from fractal_app import provider
from fractal_app.provider import band_blocks, rendered_ahead
from fractal_app.scene import parse_scene


def test_blocks_come_in_order_and_the_next_is_rendered_while_this_one_is_used():
    made: list[int] = []
    second_started = threading.Event()

    def blocks():
        for k in range(4):
            if k == 1:
                second_started.set()
            made.append(k)
            yield np.full(2, k)

    seen = []
    for block in rendered_ahead(blocks()):
        if block[0] == 0:
            # The consumer still holds block 0: block 1 is being made in the other thread.
            assert second_started.wait(10)
        seen.append(int(block[0]))
    assert seen == [0, 1, 2, 3] and made == [0, 1, 2, 3]


def test_an_error_while_rendering_reaches_the_caller():
    def blocks():
        yield np.zeros(1)
        raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError, match="kernel failed"):
        list(rendered_ahead(blocks()))


def test_a_band_rendered_ahead_equals_the_band(monkeypatch):
    monkeypatch.setattr(provider, "RENDER_BLOCK_SAMPLES", 64 * 5)  # blocks of 5 rows
    scene = parse_scene({"fractal": "mandelbrot", "resolution": [64, 40], "max_iter": 200})
    assert len(list(band_blocks(scene, 3, 37, "cpu"))) == 7
    whole = np.concatenate(list(band_blocks(scene, 3, 37, "cpu")))
    ahead = np.concatenate(list(rendered_ahead(band_blocks(scene, 3, 37, "cpu"))))
    np.testing.assert_array_equal(ahead, whole)


def test_a_caller_that_stops_early_leaves_no_thread_behind():
    def blocks():
        for k in range(100):
            yield np.full(2, k)

    ahead = rendered_ahead(blocks())
    assert int(next(ahead)[0]) == 0
    ahead.close()
    assert not [t for t in threading.enumerate() if t.name == "render-ahead"]

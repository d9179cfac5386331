"""Render a scene to PNG bytes with the providers' own code path (``render.render_band``).

Called on worker threads: the Numba kernels release the GIL, so the event loop keeps
serving while a tile renders.
"""

from __future__ import annotations

import io

from PIL import Image

from fractal_app import render
from fractal_app.kernels.threads import use_thread_count

# zlib level 1: a 256x256 tile compresses in about a millisecond, level 6 takes several
# times as long for a file only a little smaller, and the browser is on this machine.
PNG_COMPRESS_LEVEL = 1


def render_png(scene, threads: int | None = None) -> bytes:
    """The whole of ``scene`` as an 8-bit RGB PNG.

    ``threads``: Numba threads for this call (None: all of them). The tile server renders
    several small tiles at once, one thread each, rather than one tile on every core: a small
    tile does not keep a team of threads busy. (Numba's setting is per calling thread, so it
    is set on every call: the same worker thread renders tiles and whole views.)
    """
    use_thread_count(threads)
    pixels = render.render_band(scene, 0, scene.height_px)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()

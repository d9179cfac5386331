"""A service's start-up: the collector paused while it starts, and what its requests need
loaded in the background once it serves.

``python -m fractal_app`` pauses the cyclic collector first thing; each service's preload
loads NumPy, Numba and the kernels in a thread (the requestor's from its construction, the
provider's once it serves), and turns the collector back on when done. A request awaits the
preload before it starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


def pause_gc_for_startup() -> None:
    """Turn the cyclic garbage collector off while a service starts.

    Start-up makes hundreds of thousands of objects that live as long as the process (gRPC,
    NumPy, Numba's registries) and almost no garbage; collecting while they are made scans
    them over and over, about a tenth of the start-up's CPU time. The service's preload
    calls :func:`resume_gc_after_startup` once it has loaded what its requests need.
    """
    gc.disable()


def resume_gc_after_startup(paused: bool) -> None:
    """If start-up paused the collector: freeze what start-up made (so later collections,
    which stop every thread, no longer scan it) and collect again from here on.

    Nothing is collected first: with a warm kernel cache start-up leaves about a thousand
    garbage objects, and a full collection (50 ms holding the GIL) would land on the first
    request. After a cold Numba compile (about 230,000 garbage objects; the images ship a
    warm cache) that garbage stays frozen.
    """
    if paused:
        gc.freeze()
        gc.enable()


class Preload:
    """What a service's requests need (NumPy, Numba, the kernels), loaded in a background
    thread from start-up on; a request awaits it before it starts.

    Loading overlaps the gap between SERVING and the first request, and a request never loads
    beside it: Numba's target contexts are not thread-safe while they fill their registries,
    and a request that refreshed them while the preload did failed with "generator already
    executing" (about one Compute in 130 sent the instant health said SERVING).
    """

    def __init__(self, load: Callable[[], None]) -> None:
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._load = load
        threading.Thread(target=self._run, name="preload", daemon=True).start()

    def _run(self) -> None:
        try:
            self._load()
        finally:  # the request loads what failed itself, and reports any error
            self._done.set_result(None)

    async def wait(self) -> None:
        """Until the preload has finished (at once if it has)."""
        if not self._done.done():
            await asyncio.wrap_future(self._done)


def preload_requestor(resume_gc: bool) -> None:
    """Import what CreateTask and Verify need, in the background once SERVING."""
    try:
        import numpy  # noqa: F401

        import fractal_app.bandfile  # noqa: F401
        import fractal_app.bandplan  # noqa: F401
        import fractal_app.render  # noqa: F401
        import fractal_app.scene  # noqa: F401
        import fractal_app.verify  # noqa: F401

        _warm_requestor_kernels()
    except Exception:  # the rpc that needs a module imports it again and reports the error
        logger.debug("preloading failed", exc_info=True)
    finally:
        resume_gc_after_startup(resume_gc)


def _warm_requestor_kernels() -> None:
    """Load the pixel kernels CreateTask's cost estimate and Verify's recompute run.

    Numba's first kernel call in a process sets up its compiler contexts and loads the kernel
    from the on-disk cache: about a second of CPU here, which would otherwise land on the
    first CreateTask (its cost estimate) of a requestor that has just started.
    """
    import numpy as np

    from fractal_app import render
    from fractal_app.scene import parse_scene

    probe = parse_scene({"fractal": "mandelbrot", "resolution": [2, 2], "max_iter": 8})
    render.render_pixels(probe, np.zeros(1, np.int64), np.zeros(1, np.int64))


def preload_provider(resume_gc: bool) -> None:
    """Import what Compute and RunBenchmark need, in the background once SERVING."""
    try:
        import numba  # noqa: F401
        from numba.core.registry import cpu_target

        import fractal_app.bandfile  # noqa: F401
        import fractal_app.render  # noqa: F401
        import fractal_app.scene  # noqa: F401

        # Numba fills its typing and lowering registries on the first compile or cache load
        # (about 0.1 CPU-s); every kernel the request loads needs them.
        cpu_target.typing_context.refresh()
        cpu_target.target_context.refresh()
    except Exception:  # the request imports them again and reports any error itself
        logger.debug("preloading failed", exc_info=True)
    finally:
        resume_gc_after_startup(resume_gc)


def warm_band_kernels(scene_json: Callable[[], str | None], backend: str | None) -> None:
    """Load the band kernels Compute will most likely run, in the background once SERVING
    (after :func:`preload_provider`): a 2x2 band of the task's scene, or of the default
    Mandelbrot view if the node has not shipped the scene yet (``scene_json`` gives None).

    Loading the iteration and colouring kernels from Numba's cache, and starting the OpenMP
    team, is 0.08-0.1 CPU-s that otherwise lands on Compute, on the render's critical path.
    Only a plain 2D scene on the CPU is probed (``backend``: the provider's own choice, if
    any): a deep zoom would compute a reference orbit, a GPU scene start a CUDA context, for
    a guess, and kernels missing from the cache are not compiled here. Any failure is left to
    the request, which loads what it needs itself.
    """
    try:
        import json

        from fractal_app import render
        from fractal_app.protocol.constants import DOCKER_CPU_ENV_ID
        from fractal_app.scene import parse_scene
        from fractal_app.warmup import compile_estimate_seconds

        if backend not in (None, "cpu"):
            return
        probe = {"fractal": "mandelbrot", "max_iter": 8}
        try:
            shipped = scene_json()
            if shipped is not None and isinstance(given := json.loads(shipped), dict):
                probe = given
        except Exception:  # not shipped whole yet, or not readable: the default view's
            logger.debug("no scene to preload its kernels", exc_info=True)
        probe = {**probe, "resolution": [2, 2]}
        scene = parse_scene(probe)
        on_cpu = backend == "cpu" or scene.env == DOCKER_CPU_ENV_ID
        if scene.is_3d or scene.deep or not on_cpu:
            return
        # Loaded from the cache, never compiled: a cold compile (tens of seconds) of a guess
        # would hold up a request for other kernels.
        if compile_estimate_seconds(json.dumps(probe), "cpu"):
            return
        render.render_band(scene, 0, 2, "cpu")
    except Exception:
        logger.debug("preloading the band kernels failed", exc_info=True)

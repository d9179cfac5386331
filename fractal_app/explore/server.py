"""The explorer's web server (aiohttp): the page, its tiles and views, and poster renders.

A thin adapter, like the gRPC one: it decodes requests, hands the work to ``tiles`` /
``pictures`` (through the scheduler's threads) and ``posters``, and encodes the answers.
Bad input is answered 400 with the reason as the body, never a crash.

Routes:
  GET  /                          the page (static/index.html)
  GET  /static/...                its script, style and the Leaflet map library
  GET  /api/info                  fractals, palettes, each fractal's defaults, zoom limits
  GET  /tile/{z}/{x}/{y}.png      a map tile: ?scene=JSON&level=coarse|full
  GET  /view.png                  the whole scene at ?w=&h= (the 3D camera view): ?scene=JSON
  POST /api/scene/check           validate a scene (body: the JSON); 400 names the bad field
  POST /api/render                render a poster of the scene (body: the JSON) over the lifecycle
  GET  /api/render/{id}           its progress
  GET  /api/render/{id}/result    the finished image, as a download
  GET  /api/stats                 tiles rendered, dropped because nobody waited any more, failed

Only this machine may connect unless the server is told another host: the page can start
renders, which run programs here. Requests must name this server in their Host header (a
web page elsewhere cannot reach it through DNS rebinding), and a POST must be JSON from the
page's own origin (a page elsewhere cannot submit a form to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
from importlib import resources

from aiohttp import web

from fractal_app.errors import AppError, InvalidArgument, NotFound
from fractal_app.explore import pictures, tiles
from fractal_app.explore.posters import PosterStudio
from fractal_app.explore.scheduler import RenderScheduler
from fractal_app.scene import FRACTALS, MAX_PARAMS_BYTES, PALETTE_NAMES, parse_scene

logger = logging.getLogger(__name__)

STATIC = resources.files("fractal_app.explore") / "static"
# The camera view (and any /view.png) is at most this many pixels: a screen, not a poster.
MAX_VIEW_PIXELS = 2048 * 2048
# A whole view renders before any tile (tiles' priorities are 0 and up): it is the one
# picture the person is waiting for.
VIEW_PRIORITY = {"coarse": -2, "full": -1}

SCHEDULER = web.AppKey("scheduler", RenderScheduler)
STUDIO = web.AppKey("studio", PosterStudio)
ALLOWED_HOSTS = web.AppKey("allowed_hosts", set)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- handlers -------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=(STATIC / "index.html").read_bytes(),
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


async def static_file(request: web.Request) -> web.StreamResponse:
    relative = request.match_info["path"]
    parts = relative.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise NotFound(f"no static file {relative[:80]!r}")
    target = STATIC.joinpath(*parts)
    if not target.is_file():
        raise NotFound(f"no static file {relative[:80]!r}")
    content_type = {
        ".js": "text/javascript",
        ".css": "text/css",
        ".html": "text/html",
        ".png": "image/png",
    }.get("." + relative.rsplit(".", 1)[-1], "application/octet-stream")
    return web.Response(body=target.read_bytes(), content_type=content_type)


# Fields whose default depends on the view (the colour scale: auto for deep views): the page
# leaves them out of its scenes, so each view gets its own.
_VIEW_DEPENDENT_DEFAULTS = ("color_scale", "color_knots")


def _page_defaults(scene) -> dict:
    fields = json.loads(scene.to_json())
    for name in _VIEW_DEPENDENT_DEFAULTS:
        fields.pop(name, None)
    return fields


async def info(request: web.Request) -> web.StreamResponse:
    defaults = {
        name: _page_defaults(parse_scene({"fractal": name, "resolution": [1920, 1080]}))
        for name in FRACTALS
    }
    return web.json_response(
        {
            "fractals": list(FRACTALS),
            "palettes": list(PALETTE_NAMES),
            "defaults": defaults,
            "three_d": [name for name in FRACTALS if parse_scene(defaults[name]).is_3d],
            "tile_size": tiles.TILE_SIZE,
            "tile_width_at_zoom_0": tiles.TILE_WIDTH_AT_ZOOM_0,
            "extent": tiles.EXTENT,
            "max_zoom": tiles.MAX_ZOOM,
            "levels": {name: level.pixels for name, level in tiles.LEVELS.items()},
        }
    )


def _int_field(request: web.Request, name: str) -> int:
    text = request.match_info.get(name) or request.query.get(name, "")
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer, got {text[:40]!r}") from None


def _level(request: web.Request) -> tiles.Level:
    name = request.query.get("level", "full")
    level = tiles.LEVELS.get(name)
    if level is None:
        raise InvalidArgument(f"level must be one of {', '.join(tiles.LEVELS)}, got {name[:40]!r}")
    return level


def _png(body: bytes) -> web.Response:
    # Tiles are a pure function of their URL: the browser may keep them.
    return web.Response(
        body=body, content_type="image/png", headers={"Cache-Control": "max-age=3600"}
    )


async def tile(request: web.Request) -> web.StreamResponse:
    z, x, y = (_int_field(request, name) for name in ("z", "x", "y"))
    level = _level(request)
    base = tiles.parse_scene_object(request.query.get("scene"))
    scene = tiles.tile_scene(base, z, x, y, level)
    body = await request.app[SCHEDULER].run(
        level.priority, lambda: pictures.render_png(scene, threads=1)
    )
    return _png(body)


async def view(request: web.Request) -> web.StreamResponse:
    width, height = _int_field(request, "w"), _int_field(request, "h")
    if width < 1 or height < 1 or width * height > MAX_VIEW_PIXELS:
        raise InvalidArgument(
            f"view size {width}x{height} is out of range: w, h >= 1 and w*h <= "
            f"{MAX_VIEW_PIXELS} (render a poster for more)"
        )
    level = _level(request)
    base = tiles.parse_scene_object(request.query.get("scene"))
    scene = tiles.view_scene(base, width, height, level)
    # A 3D view is one large picture: every core works on it, and it goes ahead of tiles.
    body = await request.app[SCHEDULER].run(
        VIEW_PRIORITY[level.name], lambda: pictures.render_png(scene, threads=None)
    )
    return _png(body)


async def _scene_body(request: web.Request) -> str:
    if request.content_type != "application/json":
        raise InvalidArgument(
            f"send the scene as JSON (Content-Type application/json, got {request.content_type!r})"
        )
    return await request.text()


async def check_scene(request: web.Request) -> web.StreamResponse:
    scene = parse_scene(await _scene_body(request))
    return web.json_response({"ok": True, "canonical": json.loads(scene.to_json())})


async def start_render(request: web.Request) -> web.StreamResponse:
    job = request.app[STUDIO].submit(await _scene_body(request))
    return web.json_response(job.describe(), status=202)


async def render_status(request: web.Request) -> web.StreamResponse:
    job = request.app[STUDIO].get(request.match_info["job"])
    return web.json_response(job.describe())


async def render_result(request: web.Request) -> web.StreamResponse:
    job = request.app[STUDIO].get(request.match_info["job"])
    if job.state != "done" or job.output is None:
        raise NotFound(f"render {job.id} has no result ({job.state})")
    return web.FileResponse(
        job.output,
        headers={"Content-Disposition": f'attachment; filename="{job.download_name}"'},
    )


async def stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(dict(request.app[SCHEDULER].stats))


# --- middleware -----------------------------------------------------------------------------


@web.middleware
async def guard(request: web.Request, handler) -> web.StreamResponse:
    """Refuse other hosts' names and cross-site posts; turn domain errors into answers."""
    allowed = request.app[ALLOWED_HOSTS]
    if allowed and request.host not in allowed:
        return web.Response(
            status=403, text=f"this server answers to {', '.join(sorted(allowed))} only"
        )
    origin = request.headers.get("Origin")
    if (
        request.method == "POST"
        and origin is not None
        and origin.split("://", 1)[-1] != request.host
    ):
        return web.Response(status=403, text="cross-site requests are refused")
    try:
        return await handler(request)
    except InvalidArgument as error:
        return web.Response(status=400, text=str(error))
    except NotFound as error:
        return web.Response(status=404, text=str(error))
    except AppError as error:
        return web.Response(status=409, text=str(error))


# --- the application ------------------------------------------------------------------------


def create_app(
    providers: int = 2, workers: int | None = None, allowed_hosts: set[str] | None = None
) -> web.Application:
    """The explorer's application. ``allowed_hosts``: the Host headers it answers (empty:
    any; the set may be filled in after binding); ``workers``: tile-rendering threads
    (default: one per core)."""
    app = web.Application(middlewares=[guard], client_max_size=MAX_PARAMS_BYTES + 1024)
    app[SCHEDULER] = RenderScheduler(workers)
    app[STUDIO] = PosterStudio(providers)
    app[ALLOWED_HOSTS] = set() if allowed_hosts is None else allowed_hosts

    async def lifecycle(app: web.Application):
        app[SCHEDULER].start()
        yield
        await app[STUDIO].close()
        await app[SCHEDULER].close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/", index)
    app.router.add_get("/static/{path:.+}", static_file)
    app.router.add_get("/api/info", info)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/tile/{z}/{x}/{y}.png", tile)
    app.router.add_get("/view.png", view)
    app.router.add_post("/api/scene/check", check_scene)
    app.router.add_post("/api/render", start_render)
    app.router.add_get("/api/render/{job}", render_status)
    app.router.add_get("/api/render/{job}/result", render_result)
    return app


def host_names(host: str, port: int) -> set[str]:
    """The Host headers a loopback server answers to (any, for another host)."""
    if not is_loopback(host):
        return set()
    return {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]", host)}


def announcement(url: str, host: str) -> str:
    """What the server says when it starts: where to point the browser, and who can connect."""
    if is_loopback(host):
        scope = f"listening on {host} only, so other machines cannot connect (--host to change)"
    else:
        scope = (
            f"listening on {host}: other machines CAN connect, and anyone who reaches it can "
            "run renders on this machine"
        )
    return f"fractal-app explore: open {url}\n  {scope}; Ctrl-C stops it"


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    providers: int = 2,
    open_browser: bool = False,
    announce=print,
) -> None:
    """Serve the explorer until SIGINT or SIGTERM; announce its URL once it listens."""
    # The allowed Host headers name the port, which port 0 only reveals once bound.
    allowed: set[str] = set()
    app = create_app(providers=providers, allowed_hosts=allowed)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    # No await since the socket opened: no request has been read before this line.
    allowed.update(host_names(host, bound_port))
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{bound_port}/"
    announce(announcement(url, host))
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()

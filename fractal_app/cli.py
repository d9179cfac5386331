"""The ``fractal-app`` command: render on this machine, benchmark, serve, and image helpers.

Subcommands import what they need when they run, so ``fractal-app --help`` stays quick.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fractal_app.errors import AppError

if TYPE_CHECKING:
    from fractal_app.forkserver import ForkServer


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fractal-app")
def main() -> None:
    """Render fractal images across many machines with the Golem Task API."""


@main.command(short_help="Render a scene on this machine, through the Golem lifecycle.")
@click.argument("scene_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="where to write the picture; the suffix chooses the format: .png or .tif/.tiff "
    "(8 or 16 bits), .jpg/.jpeg or .webp (8 bits). The folder must exist. 'counts' output "
    "is written as .tiff",
)
@click.option(
    "--quality",
    type=click.IntRange(1, 100),
    default=None,
    help="JPEG and WebP quality, 1-100 (default 92 for JPEG, 90 for WebP)",
)
@click.option(
    "--providers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="provider processes rendering at the same time (each uses every core)",
)
@click.option(
    "--subtasks",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="at most this many bands (default: one per provider, or one per 64 megapixels if"
    " more; one for a small scene)",
)
@click.option(
    "--backend",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    help="render on this backend (default: from the scene's env)",
)
@click.option(
    "--band-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="give a provider at most this long for its band, then stop it and hand the band out"
    " again (default: no limit)",
)
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="keep the work directories and logs in this folder",
)
def render(
    scene_file: Path,
    output: Path,
    quality: int | None,
    providers: int,
    subtasks: int | None,
    backend: str | None,
    band_timeout: float | None,
    quiet: bool,
    keep: Path | None,
) -> None:
    """Render SCENE_FILE (task parameters JSON) through the whole Golem lifecycle locally.

    A requestor and PROVIDERS providers run as separate processes talking gRPC, exactly as a
    Golem node would drive them; every band is verified before it is merged.
    """
    from fractal_app import forkserver

    # First, before this process imports anything heavy (asyncio included): the fork
    # server's loading (about a CPU-second) overlaps this process's own. The console entry
    # (fractal_app.command) started it earlier still, before click.
    forks = forkserver.take_early()
    if forks is None and forkserver.available():
        forks = forkserver.ForkServer()
    try:
        _render(scene_file, output, quality, providers, subtasks, backend, band_timeout, quiet,
                keep, forks)
    finally:
        if forks is not None:
            forks.close()


def _render(
    scene_file: Path,
    output: Path,
    quality: int | None,
    providers: int,
    subtasks: int | None,
    backend: str | None,
    band_timeout: float | None,
    quiet: bool,
    keep: Path | None,
    forks: ForkServer | None,
) -> None:
    import asyncio

    from fractal_app import forkserver, picture_formats
    from fractal_app.local import output_path_for, plan_render, render_locally
    from fractal_app.outputs import output_format

    if not quiet and forks is None:
        _say_if_compiling(scene_file, backend)
    try:
        scene_json = scene_file.read_text()
        # Validated (and its bands planned) by the fork server where there is one: it has
        # pydantic and NumPy loaded for its children anyway, and this process need not.
        if forks is not None:
            plan = forks.plan(scene_json, providers, subtasks)
        else:
            plan = plan_render(scene_json, providers, subtasks)
        # Refused up front, not after the render: a picture format or folder that cannot be
        # written, and a GPU that is not there (every retry would fail the same way).
        target = output_path_for(output, plan.output)
        chosen = picture_formats.TIFF
        coloured = output_format(plan.output).coloured
        if coloured:  # a picture: the suffix chooses its format
            chosen = picture_formats.format_for(output, plan.bit_depth, quality)
        if not target.parent.is_dir():
            raise click.ClickException(
                f"the folder {str(target.parent)!r} does not exist: create it first (-o does "
                "not create folders, so a mistyped path fails before the render, not after)"
            )
        if backend == "cuda":
            from fractal_app.render import resolve_backend

            resolve_backend(backend, plan.env)
        if not quiet and forks is not None:
            # Asked of the fork server, which loads Numba and the kernels anyway.
            with contextlib.suppress(forkserver.ForkServerError):  # the render says why
                _say_compiling(forks.compile_estimate(scene_json, backend))
        # Rendered as the requestor's PNG beside the target, then converted (or renamed).
        rendered = target
        if chosen is not picture_formats.PNG and coloured:
            rendered = target.with_name(f".{target.name}.rendering.png")
        report = asyncio.run(
            render_locally(
                scene_json,
                rendered,
                providers=providers,
                subtasks=subtasks,
                backend=backend,
                band_timeout=band_timeout,
                show_progress=not quiet,
                keep=keep,
                fork_server=forks,
                plan=plan,
            )
        )
        if rendered != target:
            picture_formats.convert(rendered, target, chosen, quality)
    except AppError as error:
        raise click.ClickException(str(error)) from None
    if not quiet:
        extra = ""
        if report.rejected:
            extra = f", {_count(report.rejected, 'band')} rejected and redone"
        click.echo(
            f"wrote {target} ({_count(report.bands, 'band')} in {report.seconds:.1f} s{extra})",
            err=True,
        )


def _count(number: int, noun: str) -> str:
    """'1 band', '3 bands'."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


@main.command(short_help="Print this machine's score (M iterations/s).")
@click.option(
    "--backend",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    help="benchmark this backend (default cpu)",
)
def benchmark(backend: str | None) -> None:
    """Print this machine's score: millions of escape-time iterations per second.

    The score RunBenchmark reports to a Golem node: the fixed Mandelbrot workload rendered
    repeatedly for a few seconds, the fastest repeat counted.
    """
    from fractal_app import render
    from fractal_app.protocol.constants import DOCKER_CPU_ENV_ID

    try:
        chosen = render.resolve_backend(backend, DOCKER_CPU_ENV_ID)
        score = render.run_benchmark(backend=chosen)
    except AppError as error:
        raise click.ClickException(str(error)) from None
    workload = render._BENCHMARK_SCENE
    width, height = workload["resolution"]
    click.echo(
        f"{score:.1f} million escape-time iterations per second ({workload['fractal']} "
        f"{width}x{height}, max_iter {workload['max_iter']}, fastest of repeated renders, "
        f"backend {chosen}, CPU {_cpu_model()})"
    )


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), or what the platform module knows."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@main.command("app-definition", short_help="Print the app definition for a Golem node.")
def app_definition() -> None:
    """Print the JSON app definition that registers the app with a Golem node."""
    import json

    from fractal_app.app_definition import app_definition as definition

    click.echo(json.dumps(definition(), indent=2))


def _say_if_compiling(scene_file: Path, backend: str | None) -> None:
    """Tell the user, before a cold first render, that Numba compiles first and how long."""
    from fractal_app.warmup import compile_estimate_seconds

    _say_compiling(compile_estimate_seconds(scene_file.read_text(), backend))


def _say_compiling(seconds: float) -> None:
    if seconds:
        click.echo(
            f"compiling the kernels for this scene first (once per machine and version): "
            f"about {seconds:.0f} s; `fractal-app warm-cache` compiles them all ahead of time",
            err=True,
        )


@main.command("warm-cache", short_help="Compile every kernel into Numba's disk cache.")
@click.option(
    "--cpu-level",
    default=None,
    metavar="LEVEL",
    help="compile for this x86-64 level (x86-64-v4, x86-64-v3, x86-64-v2, x86-64) instead of"
    " this machine's CPU (the docker_cpu image bakes several)",
)
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
def warm_cache(cpu_level: str | None, quiet: bool) -> None:
    """Compile every kernel into Numba's on-disk cache (run when building an image)."""
    if cpu_level is not None:
        from fractal_app.cpu_levels import pin

        try:
            pin(cpu_level)  # before Numba is imported: it reads the target once
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--cpu-level") from None
    from fractal_app.warmup import warm_kernel_cache

    seconds = warm_kernel_cache(progress=not quiet)
    if not quiet:
        click.echo(f"kernel cache warm in {seconds:.0f} s", err=True)


@main.command(short_help="Find a view in a web page, then render it.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8470, show_default=True,
    help="port to listen on (0: any free port; the URL is printed)",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True,
    help="address to listen on; anything but a loopback address lets other machines in",
)
@click.option("--open", "open_browser", is_flag=True, help="open the page in a web browser")
@click.option(
    "--providers", type=click.IntRange(1, 256), default=2, show_default=True,
    help="provider processes for the page's 'render' button",
)
def explore(port: int, host: str, open_browser: bool, providers: int) -> None:
    """Explore fractals in a web page: zoom with the mouse, then render the view as a poster."""
    import asyncio

    try:
        from fractal_app.explore.server import serve
    except ModuleNotFoundError as error:
        raise click.ClickException(
            f"explore needs {error.name}: pip install 'fractal-app[explore]'"
        ) from None

    try:
        asyncio.run(serve(host, port, providers=providers, open_browser=open_browser,
                          announce=click.echo))
    except OSError as error:
        raise click.ClickException(f"cannot serve on {host}:{port}: {error}") from None


@main.command(
    context_settings={"ignore_unknown_options": True},
    short_help="Serve the requestor or provider API on a port.",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: tuple[str, ...]) -> None:
    """Serve the requestor or provider API: serve requestor|provider PORT [options].

    The same as ``python -m fractal_app ...``; see ``fractal-app serve -- --help``.
    """
    from fractal_app.__main__ import exit_without_finalizing
    from fractal_app.__main__ import main as serve_main

    exit_without_finalizing(serve_main(list(args), prog="fractal-app serve"))


if __name__ == "__main__":
    # As the console command runs it (fractal_app.command), the render's ending included.
    from fractal_app.command import main as command_main

    command_main()

"""The ``fractal-app`` command: render on this machine, benchmark, serve, and image helpers.

Subcommands import what they need when they run, so ``fractal-app --help`` stays quick.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from fractal_app.errors import AppError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fractal-app")
def main() -> None:
    """Render fractal images across many machines with the Golem Task API."""


@main.command()
@click.argument("scene_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="where to write the image (.png; 'counts' output is written as .tiff)",
)
@click.option(
    "--providers",
    type=click.IntRange(1, 256),
    default=2,
    show_default=True,
    help="provider processes rendering at the same time",
)
@click.option(
    "--subtasks",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="at most this many bands (default: 2 per provider, or one per 64 megapixels if more)",
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
    from fractal_app.local import render_locally

    if not quiet:
        _say_if_compiling(scene_file, backend)
    try:
        report = asyncio.run(
            render_locally(
                scene_file.read_text(),
                output,
                providers=providers,
                subtasks=subtasks,
                backend=backend,
                band_timeout=band_timeout,
                show_progress=not quiet,
                keep=keep,
            )
        )
    except AppError as error:
        raise click.ClickException(str(error)) from None
    if not quiet:
        extra = f", {report.rejected} bands rejected and redone" if report.rejected else ""
        click.echo(
            f"wrote {report.output} ({report.bands} bands in {report.seconds:.1f} s{extra})",
            err=True,
        )


@main.command()
@click.option(
    "--backend",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    help="benchmark this backend (default cpu)",
)
def benchmark(backend: str | None) -> None:
    """Print this machine's score: millions of escape-time iterations per second."""
    from fractal_app import render

    try:
        chosen = render.resolve_backend(backend, "docker_cpu")
        score = render.run_benchmark(backend=chosen)
    except AppError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{score:.1f}")


@main.command("app-definition")
def app_definition() -> None:
    """Print the JSON app definition that registers the app with a Golem node."""
    from fractal_app.app_definition import app_definition as definition

    click.echo(json.dumps(definition(), indent=2))


def _say_if_compiling(scene_file: Path, backend: str | None) -> None:
    """Tell the user, before a cold first render, that Numba compiles first and how long."""
    from fractal_app.warmup import compile_estimate_seconds

    seconds = compile_estimate_seconds(scene_file.read_text(), backend)
    if seconds:
        click.echo(
            f"compiling the kernels for this scene first (once per machine and version): "
            f"about {seconds:.0f} s; `fractal-app warm-cache` compiles them all ahead of time",
            err=True,
        )


@main.command("warm-cache")
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


@main.command()
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


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: tuple[str, ...]) -> None:
    """Serve the requestor or provider API: serve requestor|provider PORT [options].

    The same as ``python -m fractal_app ...``; see ``fractal-app serve -- --help``.
    """
    from fractal_app.__main__ import exit_without_finalizing
    from fractal_app.__main__ import main as serve_main

    exit_without_finalizing(serve_main(list(args)))


if __name__ == "__main__":
    main()

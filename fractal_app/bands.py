"""How an image is cut into row bands, and what one band costs a provider.

A band plan is a plain list of ``(row_start, row_stop)`` pairs covering rows ``0 .. H`` in
order, with no gaps and no empty band. The requestor stores the plan in its task database when
the task is created and never recomputes it, so a later, smarter planner (bands sized by their
expected cost) cannot change the bands of a task that already exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fractal_app.outputs import output_format

Band = tuple[int, int]

# Memory a provider process needs before it holds any pixels: the interpreter, NumPy, Numba and
# LLVM with the compiled kernels loaded.
PROVIDER_BASE_MEMORY_MIB = 384.0


def plan_bands(height: int, max_bands: int) -> list[Band]:
    """Cut ``height`` rows into as many bands as ``max_bands`` allows, never an empty one.

    Bands differ in height by at most one row; the taller ones come first.
    """
    if height < 1:
        raise ValueError(f"an image needs at least one row, got {height}")
    if max_bands < 1:
        raise ValueError(f"at least one band is needed, got max_bands={max_bands}")
    count = min(height, max_bands)
    base, extra = divmod(height, count)
    bounds = [0]
    for index in range(count):
        bounds.append(bounds[-1] + base + (1 if index < extra else 0))
    return bands_between(bounds)


def bands_between(bounds: Sequence[int]) -> list[Band]:
    """The bands between consecutive row bounds: [0, 3, 7] -> [(0, 3), (3, 7)]."""
    return [(int(start), int(stop)) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]


def row_pieces(row_start: int, row_stop: int, rows_per_piece: int) -> Iterator[Band]:
    """Rows [row_start, row_stop) in consecutive pieces of ``rows_per_piece`` rows, the last
    one shorter where the rows run out: the one loop by which a provider's band, a kernel
    call's chunk and verification's re-render walk rows a few at a time."""
    if rows_per_piece < 1:
        raise ValueError(f"a piece needs at least one row, got rows_per_piece={rows_per_piece}")
    for start in range(row_start, row_stop, rows_per_piece):
        yield start, min(row_stop, start + rows_per_piece)


def check_plan(bands: Sequence[Band], height: int) -> None:
    """Raise ValueError unless ``bands`` covers rows 0..height in order with no empty band."""
    expected_start = 0
    for row_start, row_stop in bands:
        if row_start != expected_start or row_stop <= row_start:
            raise ValueError(
                f"band ({row_start}, {row_stop}) breaks the plan at row {expected_start}"
            )
        expected_start = row_stop
    if expected_start != height:
        raise ValueError(f"the bands cover {expected_start} rows, the image has {height}")


def band_memory_mib(rows: int, width: int, output: str, bit_depth: int, supersample: int) -> float:
    """A provider's peak memory for one band, in MiB, with headroom.

    The band's values exist about three times at once (the kernel's output, the colour
    conversion, and the PNG encoder's buffer); supersampling adds per-sample work arrays.
    """
    values = rows * width * output_format(output).bytes_per_pixel(bit_depth)
    samples = rows * width * supersample * supersample * 8 if supersample > 1 else 0
    return PROVIDER_BASE_MEMORY_MIB + (3 * values + samples) / 2**20


def worst_pixel_cost(scene) -> int:
    """Upper estimate of one pixel's work, in inner-loop steps: for sizing verification's
    chunks, and for telling a scene too small to share among providers (local mode)."""
    samples = scene.supersample**2
    if scene.is_3d:
        # ray steps x fractal iterations, plus normal, shadow and occlusion probes
        return samples * scene.max_steps * scene.iterations * 3
    return samples * scene.max_iter * (getattr(scene, "power", 2) - 1)

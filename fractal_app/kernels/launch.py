"""CUDA launch geometry: the one place that decides blocks and threads for a 2D image grid."""

from fractal_app import config


def grid_for(height: int, width: int, threads_per_block: tuple[int, int] | None = None):
    """(blocks, threads) covering a height x width image; x runs along columns, y along rows."""
    tx, ty = threads_per_block or config.CUDA_THREADS_PER_BLOCK
    blocks = ((width + tx - 1) // tx, (height + ty - 1) // ty)
    return blocks, (tx, ty)

"""The requestor's file work on a task folder: the scene resource, the accepted bands'
values, and the final image. Blocking; the requestor runs it in worker threads.

Every file is made durable (written, fsync'd, renamed) before the store commits the change
that relies on it, and nothing is written or removed through a symlink planted in the work
directory (:meth:`fractal_app.taskdir.RequestorTaskDir.checked`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fractal_app.durable import durable_file, fsync_dir
from fractal_app.errors import FailedPrecondition
from fractal_app.store import BandRow
from fractal_app.taskdir import RESULT_FILES, RequestorTaskDir

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)


def prepare_task_folder(task_dir: RequestorTaskDir, scene_json: bytes) -> None:
    """The task folder's own parts, and the scene every provider gets as a resource."""
    if os.path.lexists(task_dir.root) and not os.path.isdir(task_dir.root):
        raise FailedPrecondition(
            f"{task_dir.root.name!r} in the work directory is a file, not a task folder; choose"
            " another task_id"
        )
    task_dir.make_folders()
    task_dir.checked(task_dir.state, create=True)
    with durable_file(task_dir.scene_resource) as out:
        out.write(scene_json)


def has_result_file(folder: Path) -> bool:
    """Whether the provider's result is there. A symlink counts (without being followed):
    the verification rejects it with a reason."""
    try:
        if os.path.islink(folder):
            return True
        return any(folder.iterdir())
    except OSError:
        return False


def save_band_values(task_dir: RequestorTaskDir, band_index: int, values: np.ndarray) -> None:
    """An accepted band's values, durable before the acceptance is committed."""
    import numpy as np

    task_dir.checked(task_dir.bands, create=True)
    with durable_file(task_dir.band_values(band_index)) as out:
        np.save(out, np.ascontiguousarray(values), allow_pickle=False)


# Rows of a saved band read back per block when the final image is written.
READ_BLOCK_BYTES = 4 << 20


def band_value_blocks(path: Path) -> Iterator[np.ndarray]:
    """A saved band's values (``save_band_values``), a few MiB of rows at a time.

    Read, not memory-mapped: a mapped band's pages stay resident until it is unmapped, so
    writing the final image from mapped bands held a whole band (192 MiB of a 64-megapixel
    8-bit poster band) beside the encoder; read in blocks, it holds one block.
    """
    import numpy as np

    npy = np.lib.format
    with open(path, "rb") as file:
        if npy.read_magic(file) == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(file)
        else:
            shape, fortran, dtype = npy.read_array_header_2_0(file)
        if fortran or not shape:
            raise ValueError(f"{path.name} is not a C-ordered array of rows")
        row_items = int(np.prod(shape[1:], dtype=np.int64))
        rows_per_block = max(1, READ_BLOCK_BYTES // max(1, row_items * dtype.itemsize))
        for start in range(0, shape[0], rows_per_block):
            rows = min(rows_per_block, shape[0] - start)
            block = np.fromfile(file, dtype=dtype, count=rows * row_items)
            if block.size != rows * row_items:
                raise ValueError(f"{path.name} ends before its {shape[0]} rows")
            yield block.reshape((rows, *shape[1:]))


def remove_results(task_dir: RequestorTaskDir) -> None:
    """Remove the final file, whichever the output: the task is no longer complete."""
    try:
        task_outputs = task_dir.checked(task_dir.task_outputs)
    except FailedPrecondition as refused:  # a symlink: nothing of ours can be behind it
        logger.warning("not clearing task_outputs: %s", refused)
        return
    for name in RESULT_FILES.values():
        with contextlib.suppress(FileNotFoundError):
            (task_outputs / name).unlink()


def assemble_result(task_dir: RequestorTaskDir, scene, bands: Sequence[BandRow]) -> None:
    """Stream the accepted bands, top to bottom, into ``task_outputs``' one result file."""
    width, height = scene.width_px, scene.height_px
    # Checked before anything is written: nothing goes through a planted symlink.
    task_outputs = task_dir.checked(task_dir.task_outputs, create=True)
    task_dir.checked(task_dir.state)
    tmp = task_dir.partial_result

    def accepted_values():
        for band in sorted(bands, key=lambda b: b.row_start):
            if band.state != "accepted":
                raise FailedPrecondition(f"band {band.index} is {band.state}, not accepted")
            yield from band_value_blocks(task_dir.band_values(band.index))

    try:
        scene.output_format.write_result(tmp, width, height, scene.bit_depth, accepted_values())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()  # a full disk must not keep what it could write of the image
        raise
    target = task_dir.result_file(scene.output)
    # task_outputs holds the result and nothing else: clear what a previous run left there.
    # (A symlink in it is removed itself, never followed.)
    for entry in task_outputs.iterdir():
        if entry.name != target.name and (entry.is_symlink() or entry.is_file()):
            entry.unlink()
    os.replace(tmp, target)
    fsync_dir(task_outputs)

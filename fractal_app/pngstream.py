"""The app's one PNG encoder, and the streaming writers of the final result files.

Every PNG the app writes (a provider's band file, the requestor's final image, a poster of
any size) goes through :class:`PngEncoder`: rows arrive a block at a time, are Sub-filtered
and deflated as they come, and leave as IDAT chunks of a fixed size, so neither the picture
nor its file is ever held whole. A poster (32768 x 32768 RGB, 3 GiB raw at 8 bits) is written
by a requestor whose memory stays far below the raw size. ``counts`` output (one 32-bit
integer a pixel) is an uncompressed TIFF, written as a stream by ``tifffile`` (BigTIFF past
4 GiB).
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

import numpy as np
from isal import isal_zlib as deflate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE_RGB = 2
# Deflate output leaves in IDAT chunks of exactly this size (the last one smaller).
IDAT_CHUNK_BYTES = 1 << 20
# Raw bytes filtered per step, bounding the scratch memory of one step.
STEP_BYTES = 4 << 20
# With several threads, raw bytes deflated as one independent segment (on one thread).
SEGMENT_BYTES = 4 << 20
# Deflate is ISA-L's (python-isal: zlib's format and API, levels 0-3, the GIL released while
# it works). Measured by benchmarks/bench_codecs.py on the 8192x8192 poster scene, the final
# image at level 1 against CPython's zlib at level 1 with Z_RLE (what this encoder used):
# 8-bit 0.87 vs 2.05 s for a file 3% larger, 16-bit 2.4 vs 8.4 s for a file 41% smaller;
# zlib-ng, the other candidate, took 1.24 and 5.2 s. The final image is written after the
# last band is accepted, when nothing else runs: its time is the render's tail.
FINAL_COMPRESS_LEVEL = 1


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC over type and data."""
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", deflate.crc32(kind + data)))


def sub_filter(rows: np.ndarray, bytes_per_pixel: int) -> np.ndarray:
    """PNG filter type 1 (Sub): each byte minus the byte one pixel to its left, modulo 256.

    ``rows`` is (n, row_bytes) uint8; the result has the filter-type byte prepended.
    """
    filtered = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 1
    filtered[:, 1 : 1 + bytes_per_pixel] = rows[:, :bytes_per_pixel]
    np.subtract(
        rows[:, bytes_per_pixel:],
        rows[:, :-bytes_per_pixel],
        out=filtered[:, 1 + bytes_per_pixel :],
    )
    return filtered


def _deflate_segment(data: bytes, level: int) -> bytes:
    """Raw deflate of one segment, ended by a sync flush (byte-aligned, not final)."""
    stream = deflate.compressobj(level, deflate.DEFLATED, -15)
    return stream.compress(data) + stream.flush(deflate.Z_SYNC_FLUSH)


class PngEncoder:
    """An RGB PNG (8- or 16-bit, Sub-filtered, not interlaced) as a stream of byte strings.

    ``header()`` first, then ``encode(rows)`` for each block of rows top to bottom (any block
    sizes; (n, W, 3) uint8 at 8 bits, uint16 at 16), then ``finish()``, which checks that
    exactly ``height`` rows came. Each returns the bytes ready to write.

    With ``threads`` 1 the rows go through one zlib stream. With more, pigz-style: the rows
    are cut into segments of about ``SEGMENT_BYTES``, each deflated on its own thread (ISA-L
    releases the GIL) and ended with a sync flush so the pieces concatenate into one valid
    zlib stream, the Adler-32 checksum computed over the raw bytes in order; at most
    ``2 * threads`` segments are in flight, which bounds the memory. ``close()`` (or the end
    of ``finish()``) stops the threads.
    """

    def __init__(
        self,
        width: int,
        height: int,
        bit_depth: int,
        text: dict[str, str] | None = None,
        compress_level: int = FINAL_COMPRESS_LEVEL,
        threads: int = 1,
    ) -> None:
        if bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
        if width < 1 or height < 1:
            raise ValueError(f"a PNG needs at least one pixel, got {width}x{height}")
        self.width, self.height, self.bit_depth = width, height, bit_depth
        self.text = dict(text or {})
        self._dtype = np.dtype(">u2") if bit_depth == 16 else np.dtype(np.uint8)
        self._bytes_per_pixel = 3 * bit_depth // 8
        self._rows_per_step = max(1, STEP_BYTES // (width * self._bytes_per_pixel + 1))
        self._level = compress_level
        self.rows_written = 0
        self._pending = bytearray()
        self._threads = max(1, threads)
        if self._threads == 1:
            self._stream = deflate.compressobj(compress_level)
            self._pool = None
        else:
            self._segment: list[np.ndarray] = []
            self._segment_bytes = 0
            self._adler = deflate.adler32(b"")
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="deflate")
            self._in_flight: deque[Future[bytes]] = deque()
            self._pending += b"\x78\x9c"  # zlib header: deflate, 32 KiB window, no dictionary

    def header(self) -> bytes:
        """The signature, IHDR and one tEXt chunk per ``text`` entry."""
        ihdr = struct.pack(
            ">IIBBBBB", self.width, self.height, self.bit_depth, _COLOR_TYPE_RGB, 0, 0, 0
        )
        pieces = [PNG_SIGNATURE, png_chunk(b"IHDR", ihdr)]
        for key, value in self.text.items():
            entry = key.encode("latin-1") + b"\0" + value.encode("latin-1")
            pieces.append(png_chunk(b"tEXt", entry))
        return b"".join(pieces)

    def encode(self, values: np.ndarray) -> Iterator[bytes]:
        """Filter and deflate rows (n, W, 3) below those already given; yield full IDATs."""
        if values.ndim != 3 or values.shape[1:] != (self.width, 3):
            raise ValueError(f"expected rows of shape (n, {self.width}, 3), got {values.shape}")
        if self.rows_written + values.shape[0] > self.height:
            raise ValueError(f"more than {self.height} rows written")
        expected = np.uint16 if self.bit_depth == 16 else np.uint8
        if values.dtype != expected:
            raise ValueError(
                f"{self.bit_depth}-bit rows must be {np.dtype(expected)}, got {values.dtype}"
            )
        for start in range(0, values.shape[0], self._rows_per_step):
            block = np.ascontiguousarray(
                values[start : start + self._rows_per_step], dtype=self._dtype
            )
            filtered = sub_filter(block.view(np.uint8).reshape(block.shape[0], -1),
                                  self._bytes_per_pixel)
            if self._pool is None:
                self._pending += self._stream.compress(filtered)
            else:
                self._segment.append(filtered)
                self._segment_bytes += filtered.nbytes
                if self._segment_bytes >= SEGMENT_BYTES:
                    self._submit_segment()
            yield from self._full_chunks()
        self.rows_written += values.shape[0]

    def finish(self) -> Iterator[bytes]:
        """The rest of the image data and IEND; ValueError if not every row was given."""
        if self.rows_written != self.height:
            self.close()
            raise ValueError(f"{self.rows_written} of {self.height} rows were written")
        if self._pool is None:
            self._pending += self._stream.flush()
        else:
            self._submit_segment()
            while self._in_flight:
                self._collect_one()
            # The final (empty) deflate block, then the checksum of all raw bytes.
            self._pending += deflate.compressobj(self._level, deflate.DEFLATED, -15).flush()
            self._pending += struct.pack(">I", self._adler)
            self.close()
        yield from self._full_chunks()
        if self._pending:
            yield png_chunk(b"IDAT", bytes(self._pending))
            self._pending.clear()
        yield png_chunk(b"IEND", b"")

    def close(self) -> None:
        """Stop the deflate threads (after ``finish``, or to abandon the stream)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _full_chunks(self) -> Iterator[bytes]:
        while len(self._pending) >= IDAT_CHUNK_BYTES:
            yield png_chunk(b"IDAT", bytes(self._pending[:IDAT_CHUNK_BYTES]))
            del self._pending[:IDAT_CHUNK_BYTES]

    def _submit_segment(self) -> None:
        if not self._segment:
            return
        data = b"".join(part.tobytes() for part in self._segment)
        self._segment.clear()
        self._segment_bytes = 0
        self._adler = deflate.adler32(data, self._adler)
        self._in_flight.append(self._pool.submit(_deflate_segment, data, self._level))
        while len(self._in_flight) > 2 * self._threads:
            self._collect_one()

    def _collect_one(self) -> None:
        self._pending += self._in_flight.popleft().result()


class PngStreamWriter:
    """The final image: an RGB PNG file (8- or 16-bit) written top to bottom, a block of
    rows at a time, through :class:`PngEncoder` at the final image's level, on
    ``threads`` threads (default: every core).

    ``write_rows`` takes (rows, W, 3) arrays of uint8 (bit_depth 8) or uint16 (bit_depth 16).
    ``close`` checks that exactly ``height`` rows were written, then ends the file. In a
    ``with`` block, a clean exit closes it and an exception abandons it (the caller deletes
    what was written).
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        bit_depth: int,
        compress_level: int = FINAL_COMPRESS_LEVEL,
        text: dict[str, str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.width, self.height, self.bit_depth = width, height, bit_depth
        self._encoder = PngEncoder(
            width, height, bit_depth, text, compress_level, max(1, threads or os.cpu_count() or 1)
        )
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(self._encoder.header())

    def write_rows(self, values: np.ndarray) -> None:
        """Append rows (rows, W, 3) below those already written."""
        for piece in self._encoder.encode(values):
            self._file.write(piece)

    def close(self) -> None:
        """End the stream (fsync'd); ValueError if not every row was written."""
        if self._file.closed:
            return
        try:
            for piece in self._encoder.finish():
                self._file.write(piece)
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._encoder.close()
            self._file.close()

    def abandon(self) -> None:
        """Close without finishing (after an error); the caller deletes the file."""
        self._encoder.close()
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


# Below this many bytes a classic TIFF (32-bit offsets) is written, which every reader knows;
# above it, BigTIFF.
CLASSIC_TIFF_LIMIT = 2**32 - 2**24
TIFF_STRIP_BYTES = 1 << 18


def write_counts_tiff(
    path: Path, width: int, height: int, blocks: Iterable[np.ndarray], force_bigtiff: bool = False
) -> None:
    """The ``counts`` result: a single-channel 32-bit integer TIFF (little-endian,
    uncompressed), written by ``tifffile`` from ``blocks``, the image's rows (n, W) a block
    at a time, top to bottom, and fsync'd. ValueError if the rows do not add up to
    ``height`` or a count does not fit.

    Escape counts are at most 10,000,000, so they are stored as signed 32-bit integers
    (SampleFormat 2): Pillow opens such a file in its mode "I" and NumPy reads it with
    ``np.asarray(Image.open(path))``. tifffile took 0.62 s where this module's own writer
    took 3.19 s for 8192x8192 (benchmarks/bench_codecs.py), in about as much memory.
    """
    import tifffile

    row_bytes = 4 * width
    rows_per_strip = max(1, min(height, TIFF_STRIP_BYTES // row_bytes))
    big = force_bigtiff or row_bytes * height + 16 * (height // rows_per_strip + 1) + 4096 > (
        CLASSIC_TIFF_LIMIT
    )

    def strips() -> Iterator[np.ndarray]:
        written = 0
        for block in blocks:
            if block.ndim != 2 or block.shape[1] != width:
                raise ValueError(f"expected rows of shape (n, {width}), got {block.shape}")
            written += block.shape[0]
            if written > height:
                raise ValueError(f"more than {height} rows written")
            for start in range(0, block.shape[0], rows_per_strip):
                strip = block[start : start + rows_per_strip]
                if int(strip.max()) >= 2**31:
                    raise ValueError("escape counts must be below 2^31")
                yield np.ascontiguousarray(strip, dtype="<i4")
        if written != height:
            raise ValueError(f"{written} of {height} rows were written")

    pieces = strips()
    with open(path, "wb") as file:
        tifffile.imwrite(
            file, pieces, shape=(height, width), dtype="<i4", rowsperstrip=rows_per_strip,
            photometric="minisblack", bigtiff=big,
        )
        # tifffile stops asking once it has the image: rows beyond it are an error too.
        for _ in pieces:
            pass
        file.flush()
        os.fsync(file.fileno())

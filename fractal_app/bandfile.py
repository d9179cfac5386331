"""The band result file: one lossless PNG holding exactly a band's rows, and its strict reader.

A provider writes its band with :func:`write_band`; the requestor reads it back with
:func:`read_band`, which treats the file as hostile. Everything that can be checked without
decoding pixels is checked first: the file is a regular file (not a symlink), its size is
bounded by what the band could possibly need, it is a PNG, and its header (width, height,
bit depth, colour type) and its ``fractal-app`` text chunk match what was asked for. Only then
is the pixel data inflated, with the output size capped at exactly the band's raw size, so a
decompression bomb cannot allocate more than an honest band would.

Bands are encoded by the app's one PNG encoder (``pngstream.PngEncoder``). The reader is
our own, over ISA-L's inflate: walking the chunks ourselves means nothing is inflated before
it has been checked, and it holds less than libvips' decoder (benchmarks/README.md, Codecs).

Format: RGB, 8 or 16 bits per channel, not interlaced. How a format's values travel in it is
the output format's (``outputs.py``): a ``counts`` band (uint32 escape counts) is a 16-bit
RGB PNG with R = high 16 bits, G = low 16 bits and B = 0.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fractal_app.durable import durable_file
from fractal_app.outputs import OutputFormat, output_format
from fractal_app.pngstream import PNG_SIGNATURE, PngEncoder, deflate

TEXT_KEY = b"fractal-app"

# Slack over the band's raw (filtered, uncompressed) size that an honest file can need:
# deflate's stored-block worst case is 5 bytes per 16 KiB block, chunk framing is 12 bytes per
# chunk, plus the header and text chunks and a few harmless ancillary chunks.
_SIZE_SLACK_BYTES = 256 * 1024
_SIZE_SLACK_RATIO = 0.01
_MAX_TEXT_BYTES = 4096
_MAX_ANCILLARY_BYTES = 64 * 1024
_MAX_CHUNKS = 100_000
_COLOR_TYPE_RGB = 2


class BandFileError(Exception):
    """The band file is not what was asked for; the message says what is wrong."""


@dataclass(frozen=True)
class BandMeta:
    """What a band file claims to be: stored as JSON in its ``fractal-app`` text chunk."""

    task_id: str
    subtask_id: str
    row_start: int
    row_stop: int
    output: str

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start

    @property
    def format(self) -> OutputFormat:
        return output_format(self.output)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def max_file_bytes(meta: BandMeta, width: int, bit_depth: int) -> int:
    """The largest file an honest band of this size can be (incompressible data, stored)."""
    raw = _raw_bytes(meta.rows, width, meta.format.png_bits(bit_depth))
    return raw + int(raw * _SIZE_SLACK_RATIO) + _SIZE_SLACK_BYTES


def _raw_bytes(rows: int, width: int, bits: int) -> int:
    return rows * (1 + width * 3 * bits // 8)


# --------------------------------------------------------------------------- writing


def _check_block(values: np.ndarray, meta: BandMeta, width: int | None = None) -> None:
    """Refuse band values whose shape or dtype does not fit the meta (a bug, not an attack)."""
    meta.format.check_values(values)
    if values.shape[0] < 1 or values.shape[1] < 1:
        raise ValueError(f"band block has no pixels: shape {values.shape}")
    if width is not None and values.shape[1] != width:
        raise ValueError(f"band block is {values.shape[1]} pixels wide, the band {width}")


# Deflate level of band files (ISA-L's highest, 3; pngstream says why ISA-L): the provider
# pays the encode on every band, the network barely notices the size. Measured by
# benchmarks/bench_codecs.py on a 2048-row band of the 8192-wide poster scene, against
# CPython's zlib at level 3 (what was used before): 8-bit 0.43 vs 0.57 s for a file 4%
# smaller, 16-bit 1.43 vs 3.30 s for a file 14% larger.
COMPRESS_LEVEL = 3


def png_pieces(blocks: Iterable[np.ndarray], meta: BandMeta, text: bytes) -> Iterator[bytes]:
    """The band PNG of ``meta.rows`` rows as a stream of byte strings.

    ``blocks`` gives the band's values a block of rows at a time, top to bottom (any block
    sizes); each is encoded as it comes (``pngstream.PngEncoder``, on this thread: the
    provider renders the next block meanwhile), so neither the band nor its file is ever
    held whole. Raises ValueError if the blocks do not add up to the band.
    """
    blocks = iter(blocks)
    first = next(blocks, None)
    if first is None:
        raise ValueError("a band needs at least one block of rows")
    _check_block(first, meta)
    width = first.shape[1]
    bits = meta.format.png_bits(16 if first.dtype == np.uint16 else 8)
    encoder = PngEncoder(
        width, meta.rows, bits, {TEXT_KEY.decode(): text.decode("latin-1")}, COMPRESS_LEVEL
    )
    yield encoder.header()
    block = first
    while block is not None:
        _check_block(block, meta, width)
        if block.dtype != first.dtype:
            raise ValueError(f"band block is {block.dtype}, the band {first.dtype}")
        if encoder.rows_written + block.shape[0] > meta.rows:
            raise ValueError(f"band blocks hold more than the band's {meta.rows} rows")
        yield from encoder.encode(meta.format.to_png_rgb(block))
        del block  # the next block is rendered while nothing else holds this one
        block = next(blocks, None)
    if encoder.rows_written != meta.rows:
        raise ValueError(f"band blocks hold {encoder.rows_written} rows, the band {meta.rows}")
    yield from encoder.finish()


def write_band(path: Path, values: np.ndarray, meta: BandMeta) -> None:
    """Write a band's values (render_band's shape and dtype) as the band PNG at ``path``."""
    write_band_blocks(path, [values], meta)


def write_band_blocks(
    path: Path, blocks: Iterable[np.ndarray], meta: BandMeta, guard=None
) -> None:
    """Write the band PNG at ``path`` from its values given a block of rows at a time.

    With a generator that renders each block on demand, a band of any size costs a provider
    only a block's memory. The file appears atomically (written beside it, then renamed), so
    a reader never sees a half-written band, and a failed write leaves nothing behind.
    ``guard``: as :func:`fractal_app.durable.durable_file` takes it.
    """
    text = meta.to_json().encode("latin-1")
    with durable_file(Path(path), guard) as out:
        for piece in png_pieces(blocks, meta, text):
            out.write(piece)


# --------------------------------------------------------------------------- reading


def _read_untrusted(path: Path, limit: int) -> bytes:
    """The file's bytes, if it is a regular file (not a symlink) of at most ``limit`` bytes."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise BandFileError(f"result file {path.name!r} does not exist") from None
    except OSError as exc:
        raise BandFileError(f"cannot stat result file {path.name!r}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise BandFileError(f"result file {path.name!r} is a symlink; a regular file is required")
    if not stat.S_ISREG(info.st_mode):
        raise BandFileError(f"result file {path.name!r} is not a regular file")
    if info.st_size > limit:
        raise BandFileError(
            f"result file is {info.st_size:,} bytes; a band of this size is at most {limit:,}"
        )
    # O_NOFOLLOW and fstat close the window between the lstat above and the open.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BandFileError(f"cannot open result file {path.name!r}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BandFileError(f"result file {path.name!r} is not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BandFileError(f"result file grew past {limit:,} bytes while being read")
    return data


def _walk_chunks(data: bytes):
    """Yield (kind, payload view) for each chunk after the signature, checking framing and
    CRCs."""
    pos = len(PNG_SIGNATURE)
    count = 0
    while True:
        if pos + 8 > len(data):
            raise BandFileError("PNG is truncated: it ends before the IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length + 4
        if length > 0x7FFFFFFF or end > len(data):
            raise BandFileError(f"PNG is truncated inside a {kind!r} chunk")
        if not kind.isalpha():
            raise BandFileError(f"PNG has a malformed chunk type {kind!r}")
        # A view, not a copy: the image data is read in place when it is inflated.
        payload = memoryview(data)[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if deflate.crc32(payload, deflate.crc32(kind)) != crc:
            raise BandFileError(f"PNG chunk {kind.decode('ascii')} has a bad CRC (corrupt file)")
        count += 1
        if count > _MAX_CHUNKS:
            raise BandFileError(f"PNG has more than {_MAX_CHUNKS:,} chunks")
        if kind == b"IEND" and (end != len(data) or length != 0):
            raise BandFileError(f"PNG has {len(data) - end + length} bytes after IEND")
        yield kind, payload
        if kind == b"IEND":
            return
        pos = end


def _check_header(payload: bytes, width: int, rows: int, bits: int) -> None:
    if len(payload) != 13:
        raise BandFileError("PNG IHDR chunk has the wrong length")
    w, h, depth, color, compression, filtering, interlace = struct.unpack(">IIBBBBB", payload)
    if (w, h) != (width, rows):
        raise BandFileError(f"PNG is {w}x{h} pixels; the band is {width}x{rows}")
    if color != _COLOR_TYPE_RGB:
        names = {0: "greyscale", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
        mode = names.get(color, f"colour type {color}")
        raise BandFileError(f"PNG mode is {mode}; RGB is required")
    if depth != bits:
        raise BandFileError(f"PNG is {depth}-bit; the band must be {bits}-bit RGB")
    if compression != 0 or filtering != 0:
        raise BandFileError("PNG uses an unknown compression or filter method")
    if interlace != 0:
        raise BandFileError("PNG is interlaced; bands must not be")


def _check_text(payload: bytes, expected: BandMeta) -> None:
    key, _, value = payload.partition(b"\0")
    if key != TEXT_KEY:
        return
    try:
        meta = json.loads(value.decode("latin-1"))
    except (ValueError, RecursionError):  # thousands of '[' overflow the parser's stack
        raise BandFileError("the fractal-app text chunk is not valid JSON") from None
    wanted = asdict(expected)
    if not isinstance(meta, dict) or set(meta) != set(wanted):
        raise BandFileError(
            f"the fractal-app text chunk must have exactly the keys {sorted(wanted)}"
        )
    for key_name, value_wanted in wanted.items():
        got = meta[key_name]
        if type(got) is not type(value_wanted) or got != value_wanted:
            raise BandFileError(
                f"the file says {key_name} = {str(got)[:80]!r}; this band's is {value_wanted!r}"
            )


def _parse(data: bytes, expected: BandMeta, width: int, bits: int) -> list[memoryview]:
    """Check the PNG's structure against the band; return its IDAT payloads, in order."""
    if not data.startswith(PNG_SIGNATURE):
        raise BandFileError("result file is not a PNG (bad signature)")
    idat: list[memoryview] = []
    seen_header = seen_text = idat_done = False
    ancillary = 0
    for kind, payload in _walk_chunks(data):
        if not seen_header:
            if kind != b"IHDR":
                raise BandFileError("PNG does not start with an IHDR chunk")
            _check_header(bytes(payload), width, expected.rows, bits)
            seen_header = True
        elif kind == b"IDAT":
            if idat_done:
                raise BandFileError("PNG has IDAT chunks that are not consecutive")
            idat.append(payload)
        elif kind == b"IEND":
            break
        else:
            idat_done = idat_done or bool(idat)
            if kind in (b"tEXt", b"zTXt", b"iTXt"):
                keyword = bytes(payload[: len(TEXT_KEY) + 1])
                if keyword == TEXT_KEY + b"\0":
                    if kind != b"tEXt" or seen_text:
                        raise BandFileError("PNG must have exactly one tEXt chunk 'fractal-app'")
                    if len(payload) > _MAX_TEXT_BYTES:
                        raise BandFileError("the fractal-app text chunk is too long")
                    _check_text(bytes(payload), expected)
                    seen_text = True
                    continue
            if kind[:1].isupper():
                raise BandFileError(f"PNG has an unexpected critical chunk {kind.decode('ascii')}")
            ancillary += len(payload)
            if ancillary > _MAX_ANCILLARY_BYTES:
                raise BandFileError("PNG has too much ancillary data")
    if not seen_text:
        raise BandFileError("PNG has no tEXt chunk 'fractal-app' naming the subtask and rows")
    if not idat:
        raise BandFileError("PNG has no image data")
    return idat


# Rows are inflated, unfiltered and converted this many raw bytes at a time, so reading a
# band needs the band's values, the file, and a few MiB; not several copies of the band.
_DECODE_BLOCK_BYTES = 1 << 20


class _Inflater:
    """Inflates the IDAT payloads a requested number of bytes at a time, never more than the
    band's raw size in all (a decompression bomb stops there)."""

    def __init__(self, parts: list[memoryview], size: int) -> None:
        self.parts = iter(parts)
        self.size = size
        self.produced = 0
        self.stream = deflate.decompressobj()

    def _more(self, wanted: int) -> bytes:
        """Up to ``wanted`` more bytes; b"" once the payloads are used up."""
        source = self.stream.unconsumed_tail
        while True:
            try:
                out = self.stream.decompress(source, wanted)
            except deflate.error as exc:
                raise BandFileError(f"PNG image data is corrupt: {exc}") from None
            if out or self.stream.eof:
                return out
            source = next(self.parts, None)
            if source is None:
                return b""

    def read(self, count: int) -> bytes:
        """Exactly ``count`` bytes of scanlines, or BandFileError."""
        pieces = []
        missing = count
        while missing:
            piece = self._more(missing)
            if not piece:
                raise BandFileError(
                    f"PNG image data is truncated: {self.produced:,} of {self.size:,} bytes"
                )
            pieces.append(piece)
            missing -= len(piece)
            self.produced += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def finish(self) -> None:
        """The stream must end exactly at the band's size."""
        if self._more(1):
            raise BandFileError("PNG image data inflates to more than the band's size")
        if not self.stream.eof:
            raise BandFileError("PNG image data is truncated: the stream does not end")


def _unfilter(
    raw: bytes, rows: int, stride: int, bpp: int, prev: np.ndarray, first_row: int
) -> np.ndarray:
    """Undo PNG scanline filters of ``rows`` lines from row ``first_row`` on; ``prev`` is the
    line above them (zeros at the top of the image). Returns (rows, stride) uint8."""
    lines = np.frombuffer(raw, dtype=np.uint8).reshape(rows, stride + 1)
    kinds = lines[:, 0]
    if kinds.max(initial=0) > 4:
        bad = int(np.argmax(kinds > 4))
        raise BandFileError(
            f"PNG row {first_row + bad} has an unknown filter type {int(kinds[bad])}"
        )
    data = lines[:, 1:]
    # Fast paths: every row with the same filter (ours always writes Sub) is one numpy call.
    if (kinds == 0).all():
        return data.copy()
    if (kinds == 1).all():
        return np.cumsum(data.reshape(rows, -1, bpp), axis=1, dtype=np.uint8).reshape(rows, stride)
    if (kinds == 2).all():
        return np.cumsum(data, axis=0, dtype=np.uint8) + prev
    out = np.empty((rows, stride), dtype=np.uint8)
    for row in range(rows):
        line = lines[row, 1:]
        kind = kinds[row]
        if kind == 0:
            cur = line
        elif kind == 1:
            cur = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:
            cur = line + prev
        else:
            cur = _unfilter_sequential(line, prev, bpp, int(kind))
        out[row] = cur
        prev = out[row]
    return out


def _unfilter_average_paeth(line, prev, cur, bpp, kind):
    """Undo filter 3 (Average) or 4 (Paeth) for one scanline, byte by byte.

    Both depend on the already-decoded byte to the left, so they cannot be vectorised; this
    plain function is compiled with numba on first use. No encoder of ours emits them.
    """
    for x in range(line.shape[0]):
        left = np.int32(cur[x - bpp]) if x >= bpp else np.int32(0)
        up = np.int32(prev[x])
        if kind == 3:
            predictor = (left + up) // 2
        else:
            up_left = np.int32(prev[x - bpp]) if x >= bpp else np.int32(0)
            estimate = left + up - up_left
            dist_left = abs(estimate - left)
            dist_up = abs(estimate - up)
            dist_up_left = abs(estimate - up_left)
            if dist_left <= dist_up and dist_left <= dist_up_left:
                predictor = left
            elif dist_up <= dist_up_left:
                predictor = up
            else:
                predictor = up_left
        cur[x] = (np.int32(line[x]) + predictor) & 0xFF


_compiled_unfilter = None


def _unfilter_sequential(line: np.ndarray, prev: np.ndarray, bpp: int, kind: int) -> np.ndarray:
    """Average/Paeth scanline; numba is imported lazily so writers never pay for it."""
    global _compiled_unfilter
    if _compiled_unfilter is None:
        import numba

        from fractal_app.kernels.caching import cached

        _compiled_unfilter = cached(numba.njit(nogil=True)(_unfilter_average_paeth))
    cur = np.empty_like(line)
    _compiled_unfilter(line, prev, cur, bpp, kind)
    return cur


def _decode(parts: list[memoryview], expected: BandMeta, width: int, bits: int) -> np.ndarray:
    """Inflate, unfilter and convert the band a block of rows at a time, straight into the
    band's values (render_band's shape and dtype)."""
    rows = expected.rows
    stride = width * 3 * bits // 8
    bpp = 3 * bits // 8
    values = expected.format.empty_band(rows, width, bits)
    inflater = _Inflater(parts, _raw_bytes(rows, width, bits))
    block_rows = max(1, _DECODE_BLOCK_BYTES // (stride + 1))
    prev = np.zeros(stride, dtype=np.uint8)
    for start in range(0, rows, block_rows):
        count = min(block_rows, rows - start)
        data = _unfilter(inflater.read(count * (stride + 1)), count, stride, bpp, prev, start)
        prev = data[-1].copy()
        rgb = data.view(">u2" if bits == 16 else np.uint8).reshape(count, width, 3)
        try:
            expected.format.from_png_rgb(
                rgb, values[start : start + count], expected.row_start + start
            )
        except ValueError as exc:
            raise BandFileError(str(exc)) from None
    inflater.finish()
    return values


def read_band(path: Path, expected: BandMeta, width: int, bit_depth: int) -> np.ndarray:
    """Read an UNTRUSTED band file; return its values in render_band's shape and dtype.

    ``expected`` is what the requestor handed out (the file's text chunk must equal it) and
    ``width``/``bit_depth`` come from the task's scene. Raises BandFileError naming the first
    thing that is wrong. Nothing is inflated until the header and text chunk have passed,
    and then only a block of rows at a time: the file and the values are all it holds.
    """
    if expected.rows < 1 or width < 1:
        raise ValueError(f"bad expectation: {expected}, width {width}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    bits = expected.format.png_bits(bit_depth)
    data = _read_untrusted(Path(path), max_file_bytes(expected, width, bit_depth))
    return _decode(_parse(data, expected, width, bits), expected, width, bits)

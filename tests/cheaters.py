"""Cheating providers: ways a provider can return a band that is not the honest one.

Two kinds live here:

* file cheats write something into a result folder that is not a well-formed band file of the
  right shape (not a PNG, truncated, wrong size/mode/depth, a decompression bomb, a huge
  file, a symlink, extra files); they exercise bandfile's structural checks;
* value cheats take the honest band (or the scene) and return wrong pixel values in a
  well-formed file (blank, noise, other rows, shifted, lower max_iter, ...); they exercise
  the recompute-and-compare spot check.

Everything is plain functions so tests call them directly, without gRPC.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from fractal_app.bandfile import PNG_SIGNATURE, TEXT_KEY, BandMeta, write_band
from fractal_app.taskdir import BAND_FILE


# --------------------------------------------------------------------------- crafting PNGs
def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk; pass ``crc`` to forge a wrong checksum."""
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def filter_rows(raw: np.ndarray, bpp: int, kinds: list[int]) -> bytes:
    """PNG-filter the (rows, stride) uint8 scanlines, row r with filter ``kinds[r % len]``.

    A slow, obviously correct reference encoder (all five filter types), for checking the
    reader's unfiltering.
    """
    rows, stride = raw.shape
    out = bytearray()
    prev = np.zeros(stride, dtype=np.int64)
    for r in range(rows):
        kind = kinds[r % len(kinds)]
        line = raw[r].astype(np.int64)
        out.append(kind)
        for x in range(stride):
            left = int(line[x - bpp]) if x >= bpp else 0
            up = int(prev[x])
            up_left = int(prev[x - bpp]) if x >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = left
            elif kind == 2:
                pred = up
            elif kind == 3:
                pred = (left + up) // 2
            else:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
            out.append((int(line[x]) - pred) & 0xFF)
        prev = line
    return bytes(out)


def craft_png(
    width: int,
    height: int,
    *,
    bit_depth: int = 8,
    color_type: int = 2,
    interlace: int = 0,
    text: bytes | None = None,
    idat: bytes | None = None,
    extra_chunks: list[bytes] = (),
    filter_kinds: list[int] = (1,),
    pixels: np.ndarray | None = None,
) -> bytes:
    """A PNG with any header fields, text and pixel data (default: zero pixels of that size)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    bpp = max(1, channels * bit_depth // 8)
    if idat is None:
        stride = (width * channels * bit_depth + 7) // 8
        if pixels is None:
            raw = np.zeros((height, stride), dtype=np.uint8)
        else:
            big = pixels.astype(">u2") if bit_depth == 16 else pixels.astype(np.uint8)
            raw = np.ascontiguousarray(big).view(np.uint8).reshape(height, stride)
        idat = zlib.compress(filter_rows(raw, bpp, list(filter_kinds)))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    parts = [PNG_SIGNATURE, chunk(b"IHDR", header)]
    if text is not None:
        parts.append(chunk(b"tEXt", TEXT_KEY + b"\0" + text))
    parts.extend(extra_chunks)
    parts.append(chunk(b"IDAT", idat))
    parts.append(chunk(b"IEND", b""))
    return b"".join(parts)


# --------------------------------------------------------------------------- file cheats
# Each takes (folder, meta, width, bit_depth, honest_values) and fills the result folder.
FileCheat = Callable[[Path, BandMeta, int, int, np.ndarray], None]


def _png_bits(meta: BandMeta, bit_depth: int) -> int:
    return 16 if meta.output == "counts" else bit_depth


def not_png(folder, meta, width, bit_depth, honest):
    (folder / BAND_FILE).write_bytes(b"GIF89a" + bytes(200))


def empty_file(folder, meta, width, bit_depth, honest):
    (folder / BAND_FILE).write_bytes(b"")


def truncated(folder, meta, width, bit_depth, honest):
    write_band(folder / BAND_FILE, honest, meta)
    data = (folder / BAND_FILE).read_bytes()
    (folder / BAND_FILE).write_bytes(data[: len(data) * 2 // 3])


def wrong_size(folder, meta, width, bit_depth, honest):
    text = meta.to_json().encode()
    bits = _png_bits(meta, bit_depth)
    (folder / BAND_FILE).write_bytes(craft_png(width + 1, meta.rows, bit_depth=bits, text=text))


def wrong_height(folder, meta, width, bit_depth, honest):
    text = meta.to_json().encode()
    bits = _png_bits(meta, bit_depth)
    (folder / BAND_FILE).write_bytes(craft_png(width, meta.rows + 1, bit_depth=bits, text=text))


def wrong_mode(folder, meta, width, bit_depth, honest):
    text = meta.to_json().encode()
    bits = _png_bits(meta, bit_depth)
    png = craft_png(width, meta.rows, bit_depth=bits, color_type=6, text=text)
    (folder / BAND_FILE).write_bytes(png)


def wrong_depth(folder, meta, width, bit_depth, honest):
    text = meta.to_json().encode()
    bits = 8 if _png_bits(meta, bit_depth) == 16 else 16
    (folder / BAND_FILE).write_bytes(craft_png(width, meta.rows, bit_depth=bits, text=text))


def header_bomb(folder, meta, width, bit_depth, honest):
    """A tiny file whose header claims a 60000 x 60000 image."""
    text = meta.to_json().encode()
    idat = zlib.compress(bytes(1000))
    png = craft_png(60_000, 60_000, bit_depth=_png_bits(meta, bit_depth), text=text, idat=idat)
    (folder / BAND_FILE).write_bytes(png)


def data_bomb(folder, meta, width, bit_depth, honest):
    """The right header, but pixel data that inflates to 64 MiB of zeros."""
    text = meta.to_json().encode()
    inflater = zlib.compressobj(9)
    block = bytes(1 << 20)
    idat = b"".join(inflater.compress(block) for _ in range(64)) + inflater.flush()
    png = craft_png(width, meta.rows, bit_depth=_png_bits(meta, bit_depth), text=text, idat=idat)
    (folder / BAND_FILE).write_bytes(png)


def huge_file(folder, meta, width, bit_depth, honest):
    """An honest band padded (sparsely) to 4 GiB."""
    write_band(folder / BAND_FILE, honest, meta)
    with open(folder / BAND_FILE, "r+b") as handle:
        handle.truncate(4 << 30)


def symlink(folder, meta, width, bit_depth, honest):
    """An honest band, but the result is a symlink to it (it could point anywhere)."""
    target = folder.parent / f"{folder.name}-target.png"
    write_band(target, honest, meta)
    (folder / BAND_FILE).symlink_to(target)


def directory(folder, meta, width, bit_depth, honest):
    (folder / BAND_FILE).mkdir()


def extra_file(folder, meta, width, bit_depth, honest):
    write_band(folder / BAND_FILE, honest, meta)
    (folder / "notes.txt").write_text("hello")


def two_bands(folder, meta, width, bit_depth, honest):
    write_band(folder / BAND_FILE, honest, meta)
    write_band(folder / "copy.png", honest, meta)


def subdirectory(folder, meta, width, bit_depth, honest):
    write_band(folder / BAND_FILE, honest, meta)
    (folder / "more").mkdir()


def wrong_meta_subtask(folder, meta, width, bit_depth, honest):
    write_band(folder / BAND_FILE, honest, replace(meta, subtask_id=meta.subtask_id + "x"))


def wrong_meta_task(folder, meta, width, bit_depth, honest):
    write_band(folder / BAND_FILE, honest, replace(meta, task_id="other-task"))


def no_text(folder, meta, width, bit_depth, honest):
    bits = _png_bits(meta, bit_depth)
    (folder / BAND_FILE).write_bytes(craft_png(width, meta.rows, bit_depth=bits))


def bad_crc(folder, meta, width, bit_depth, honest):
    write_band(folder / BAND_FILE, honest, meta)
    data = bytearray((folder / BAND_FILE).read_bytes())
    data[-20] ^= 0x40  # inside the last IDAT's payload or CRC
    (folder / BAND_FILE).write_bytes(bytes(data))


def nothing(folder, meta, width, bit_depth, honest):
    """An empty outputs folder (the provider returned no file)."""


FILE_CHEATS: dict[str, tuple[FileCheat, str]] = {
    # name: (cheat, a word the rejection reason must contain)
    "not_png": (not_png, "not a PNG"),
    "empty_file": (empty_file, "not a PNG"),
    "truncated": (truncated, "truncated"),
    "bad_crc": (bad_crc, "CRC"),
    "wrong_width": (wrong_size, "pixels"),
    "wrong_height": (wrong_height, "pixels"),
    "wrong_mode": (wrong_mode, "RGBA"),
    "wrong_depth": (wrong_depth, "-bit"),
    "header_bomb": (header_bomb, "60000x60000"),
    "data_bomb": (data_bomb, "inflates to more"),
    "huge_file": (huge_file, "bytes"),
    "symlink": (symlink, "symlink"),
    "directory": (directory, "regular file"),
    "extra_file": (extra_file, "exactly one"),
    "two_bands": (two_bands, "exactly one"),
    "subdirectory": (subdirectory, "exactly one"),
    "wrong_meta_subtask": (wrong_meta_subtask, "subtask_id"),
    "wrong_meta_task": (wrong_meta_task, "task_id"),
    "no_text": (no_text, "fractal-app"),
}


# --------------------------------------------------------------------------- value cheats
# Each takes (scene, meta, honest values) and returns the values a cheater would send: the
# right shape and dtype, written with write_band, so only the pixel check can catch them.
ValueCheat = Callable[[object, BandMeta, np.ndarray], np.ndarray]


def _render(scene, row_start: int, row_stop: int) -> np.ndarray:
    from fractal_app.render import render_band

    return render_band(scene, row_start, row_stop)


def _top(scene) -> int:
    return 65535 if scene.bit_depth == 16 and scene.output == "image" else 255


def blank(scene, meta, honest):
    return np.zeros_like(honest)


def single_colour(scene, meta, honest):
    """Every pixel the colour (or count) of the band's middle pixel."""
    flat = honest.reshape(-1, *honest.shape[2:])
    return np.broadcast_to(flat[flat.shape[0] // 2], honest.shape).copy()


def noise(scene, meta, honest):
    rng = np.random.default_rng(1)
    high = 1000 if scene.output == "counts" else _top(scene) + 1
    return rng.integers(0, high, honest.shape).astype(honest.dtype)


def other_rows(scene, meta, honest):
    rows = meta.rows
    start = meta.row_stop if meta.row_stop + rows <= scene.height_px else meta.row_start - rows
    return _render(scene, start, start + rows)


def other_scene(scene, meta, honest):
    re, im = getattr(scene, "center", (0.0, 0.0))
    if scene.is_3d:
        position = scene.camera.position
        camera = scene.camera.model_copy(update={"position": (position[0] + 0.3, *position[1:])})
        return _render(scene.model_copy(update={"camera": camera}), meta.row_start, meta.row_stop)
    moved = scene.model_copy(update={"center": (re + scene.width / 3, im - scene.width / 5)})
    return _render(moved, meta.row_start, meta.row_stop)


def shifted_row(scene, meta, honest):
    start = meta.row_start + 1 if meta.row_stop < scene.height_px else meta.row_start - 1
    return _render(scene, start, start + meta.rows)


def shifted_column(scene, meta, honest):
    return np.roll(honest, 1, axis=1)


def flipped_vertically(scene, meta, honest):
    return honest[::-1].copy()


def flipped_horizontally(scene, meta, honest):
    return honest[:, ::-1].copy()


def lower_max_iter(scene, meta, honest):
    if scene.is_3d:
        cheap = scene.model_copy(update={"max_steps": max(1, scene.max_steps // 8)})
    else:
        cheap = scene.model_copy(update={"max_iter": max(1, scene.max_iter // 4)})
    return _render(cheap, meta.row_start, meta.row_stop)


def half_resolution(scene, meta, honest):
    """Render at half the width and height and scale up (each pixel repeated 2x2)."""
    w, h = scene.width_px, scene.height_px
    small = scene.model_copy(update={"resolution": ((w + 1) // 2, (h + 1) // 2)})
    r0, r1 = meta.row_start // 2, (meta.row_stop + 1) // 2
    values = _render(small, r0, r1).repeat(2, axis=0).repeat(2, axis=1)
    offset = meta.row_start - 2 * r0
    return np.ascontiguousarray(values[offset:offset + meta.rows, :w])


def float32(scene, meta, honest):
    return _render(scene.model_copy(update={"precision": "float32"}), meta.row_start, meta.row_stop)


def other_palette(scene, meta, honest):
    palette = "fire" if scene.palette != "fire" else "ocean"
    return _render(scene.model_copy(update={"palette": palette}), meta.row_start, meta.row_stop)


def _corrupt(scene, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Values with the pixels in ``mask`` made clearly wrong (half the range away)."""
    out = values.copy()
    if scene.output == "counts":
        out[mask] = out[mask] + 17
    else:
        half = (_top(scene) + 1) // 2
        out[mask] = (out[mask].astype(np.int64) + half) % (2 * half)
    return out


def wrong_fraction(fraction: float, where: str) -> ValueCheat:
    """Honest except a fraction of pixels: spread at random, or in one block at a corner."""

    def cheat(scene, meta, honest):
        rows, width = honest.shape[:2]
        wrong = int(np.ceil(fraction * rows * width))
        mask = np.zeros((rows, width), dtype=bool)
        if where == "random":
            mask.flat[np.random.default_rng(2).choice(rows * width, wrong, replace=False)] = True
        else:
            side = int(np.ceil(np.sqrt(wrong)))
            height = min(rows, side)
            mask[rows - height:, width - int(np.ceil(wrong / height)):] = True  # bottom right
        return _corrupt(scene, honest, mask)

    cheat.__name__ = f"wrong_{where}_{fraction:g}"
    return cheat


def skip_expensive(scene, meta, honest):
    """Honest everywhere except where a pixel needs more than K iterations: the cheater stops
    at K and calls the pixel inside. K is chosen so only ~2% of the escaping pixels are hit."""
    counts = _render(scene.model_copy(update={"output": "counts", "supersample": 1}),
                     meta.row_start, meta.row_stop)
    escaping = counts[counts < scene.max_iter]
    limit = np.quantile(escaping, 0.98) if escaping.size else scene.max_iter
    mask = (counts > limit) & (counts < scene.max_iter)
    out = honest.copy()
    if scene.output == "counts":
        out[mask] = scene.max_iter
    else:
        interior = np.array(scene.interior_color, dtype=np.int64)
        out[mask] = (interior * (_top(scene) // 255)).astype(honest.dtype)
    return out


VALUE_CHEATS: dict[str, ValueCheat] = {
    cheat.__name__: cheat
    for cheat in [
        blank, single_colour, noise, other_rows, other_scene, shifted_row, shifted_column,
        flipped_vertically, flipped_horizontally, lower_max_iter, half_resolution, float32,
        other_palette, skip_expensive,
        *(wrong_fraction(f, where) for f in (0.01, 0.02, 0.05, 0.10)
          for where in ("random", "corner")),
    ]
}

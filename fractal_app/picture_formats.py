"""The picture formats ``fractal-app render -o`` writes, chosen by the output's suffix.

The requestor's final image is always a lossless PNG (8 or 16 bits per channel), written as a
stream; ``-o picture.png`` is that file. Other suffixes are converted from it once it is
complete, in memory (so a poster-size picture is best written as PNG): TIFF keeps 8 or 16
bits, JPEG and WebP hold 8 bits and take a quality. Anything else is refused before rendering,
with the list. ``counts`` output is a 32-bit TIFF whatever the suffix (local.output_path_for).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fractal_app.errors import InvalidArgument

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class PictureFormat:
    name: str
    suffixes: tuple[str, ...]
    bit_depths: tuple[int, ...]
    # Pillow's format name for the 8-bit lossy formats; None where this module writes it.
    pillow: str | None = None
    default_quality: int | None = None

    @property
    def takes_quality(self) -> bool:
        return self.default_quality is not None


PNG = PictureFormat("PNG", (".png",), (8, 16))
TIFF = PictureFormat("TIFF", (".tif", ".tiff"), (8, 16))
JPEG = PictureFormat("JPEG", (".jpg", ".jpeg"), (8,), pillow="JPEG", default_quality=92)
WEBP = PictureFormat("WebP", (".webp",), (8,), pillow="WEBP", default_quality=90)
FORMATS = (PNG, TIFF, JPEG, WEBP)


def describe_formats() -> str:
    """'.png (8/16-bit), .tif/.tiff (8/16-bit), ...' for messages and help."""
    return ", ".join(
        f"{'/'.join(f.suffixes)} ({'/'.join(map(str, f.bit_depths))}-bit)" for f in FORMATS
    )


def format_for(path: Path, bit_depth: int, quality: int | None) -> PictureFormat:
    """The format ``path``'s suffix asks for, checked against the scene's bit depth and a
    --quality; InvalidArgument naming the fix otherwise."""
    suffix = path.suffix.lower()
    chosen = next((f for f in FORMATS if suffix in f.suffixes), None)
    if chosen is None:
        said = f"the suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise InvalidArgument(
            f"{path.name!r} has {said}: the suffix chooses the format, one of "
            f"{describe_formats()}"
        )
    if bit_depth not in chosen.bit_depths:
        raise InvalidArgument(
            f"{chosen.name} holds 8 bits per channel and the scene asks for bit_depth "
            f"{bit_depth}: write .png or .tiff, or set bit_depth 8"
        )
    if quality is not None and not chosen.takes_quality:
        raise InvalidArgument(f"--quality is for JPEG and WebP, not {chosen.name} (lossless)")
    return chosen


def convert(png: Path, target: Path, chosen: PictureFormat, quality: int | None) -> None:
    """Write the finished PNG ``png`` to ``target`` in ``chosen`` (atomically: a temporary
    file beside it, then a rename). ``png`` is consumed: gone afterwards, also on failure."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        if chosen is PNG:
            os.replace(png, tmp)
        elif chosen is TIFF:
            write_tiff(tmp, read_png(png))
        else:
            from PIL import Image

            Image.fromarray(read_png(png)).save(
                tmp, format=chosen.pillow, quality=quality or chosen.default_quality
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        png.unlink(missing_ok=True)


def read_png(path: Path) -> np.ndarray:
    """The (H, W, 3) uint8 or uint16 pixels of an RGB PNG this app wrote (trusted: the
    requestor's own final image; Pillow would reduce 16 bits to 8)."""
    import numpy as np

    from fractal_app.bandfile import _unfilter
    from fractal_app.pngstream import deflate

    data = Path(path).read_bytes()
    at, idat, header = 8, [], None
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat.append(body)
        at += 12 + length
    if header is None or header[3] != 2:
        raise ValueError(f"{path} is not an RGB PNG")
    width, height, bits, _ = header
    bpp = 3 * bits // 8
    raw = deflate.decompress(b"".join(idat))
    rows = _unfilter(raw, height, width * bpp, bpp, np.zeros(width * bpp, np.uint8), 0)
    if bits == 8:
        return rows.reshape(height, width, 3)
    return rows.view(">u2").reshape(height, width, 3).astype(np.uint16)


def write_tiff(path: Path, rgb: np.ndarray) -> None:
    """An uncompressed baseline RGB TIFF of (H, W, 3) uint8 or uint16 pixels (tifffile)."""
    import tifffile

    if rgb.nbytes > 2**32 - 2**20:
        raise InvalidArgument("the picture is too large for a classic TIFF: write .png")
    tifffile.imwrite(path, rgb, photometric="rgb")

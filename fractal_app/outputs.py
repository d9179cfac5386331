"""The output formats a task's ``output`` field names, each declared once (``OUTPUTS``).

An output format says what a band's values are (dtype and shape), how they travel in a
band PNG, which file ``task_outputs`` holds and how it is written, and how closely
verification compares a provider's values with its own. Everything else asks the scene's
format (``scene.output_format``) instead of comparing the name; adding a format is one
subclass and one line in ``OUTPUTS``. The names are public API (the JSON field ``output``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# NumPy is imported where it is used: scenes (and so this module) load in the servers'
# start-up, which stays free of NumPy (tests/test_server.py).


@dataclass(frozen=True)
class OutputFormat:
    """One value of the task parameter ``output``."""

    name: str
    # True: pixels are palette colours (sRGB, per bit_depth); False: the raw escape counts,
    # which only 2D escape-time fractals have, one per pixel (no supersampling).
    coloured: bool
    # The one file ``task_outputs`` holds once every band is accepted.
    result_file: str
    # The suffixes ``fractal-app render -o`` writes this format to; () when the picture
    # format is chosen by the suffix (picture_formats).
    file_suffixes: tuple[str, ...] = ()

    def dtype(self, bit_depth: int) -> str:
        """The NumPy dtype of a band's values."""
        raise NotImplementedError

    def band_shape(self, rows: int, width: int) -> tuple[int, ...]:
        raise NotImplementedError

    def empty_band(self, rows: int, width: int, bit_depth: int) -> np.ndarray:
        import numpy as np

        return np.empty(self.band_shape(rows, width), dtype=self.dtype(bit_depth))

    def bytes_per_pixel(self, bit_depth: int) -> int:
        """Bytes of one pixel's value."""
        raise NotImplementedError

    def png_bits(self, bit_depth: int) -> int:
        """Bits per channel of a band PNG holding these values."""
        raise NotImplementedError

    def check_values(self, values: np.ndarray) -> None:
        """ValueError unless ``values`` has a band's dtype and number of dimensions."""
        raise NotImplementedError

    def to_png_rgb(self, values: np.ndarray) -> np.ndarray:
        """The band PNG's (rows, W, 3) uint8 or uint16 samples for some rows of values."""
        raise NotImplementedError

    def from_png_rgb(self, rgb: np.ndarray, out: np.ndarray, first_row: int) -> None:
        """Write decoded (rows, W, 3) samples into ``out`` (rows of a band's values);
        ValueError naming the pixel (``first_row`` is rgb's first row in the image) where a
        sample cannot come from an honest band."""
        raise NotImplementedError

    def tolerance(self, bit_depth: int) -> int:
        """Largest per-channel difference verification still counts as equal."""
        raise NotImplementedError

    def comparison(self, bit_depth: int) -> str:
        """How verification compares values, for a verdict's reason."""
        raise NotImplementedError

    def write_result(
        self, path: Path, width: int, height: int, bit_depth: int, blocks: Iterable[np.ndarray]
    ) -> None:
        """Write the final result file from the image's values, given a block of rows at a
        time top to bottom (a stream: never the whole image at once), fsync'd. ValueError if
        the rows do not add up to the image; on any error the caller deletes ``path``."""
        raise NotImplementedError


@dataclass(frozen=True)
class _Image(OutputFormat):
    """RGB colours, 8 or 16 bits a channel: a PNG band, a PNG result."""

    def dtype(self, bit_depth: int) -> str:
        return "uint16" if bit_depth == 16 else "uint8"

    def band_shape(self, rows: int, width: int) -> tuple[int, ...]:
        return (rows, width, 3)

    def bytes_per_pixel(self, bit_depth: int) -> int:
        return 3 * (bit_depth // 8)

    def png_bits(self, bit_depth: int) -> int:
        return bit_depth

    def check_values(self, values: np.ndarray) -> None:
        if values.dtype not in ("uint8", "uint16") or values.ndim != 3 or values.shape[2] != 3:
            raise ValueError(
                f"image band must be (rows, W, 3) uint8 or uint16, got {values.shape} "
                f"{values.dtype}"
            )

    def to_png_rgb(self, values: np.ndarray) -> np.ndarray:
        return values

    def from_png_rgb(self, rgb: np.ndarray, out: np.ndarray, first_row: int) -> None:
        out[...] = rgb

    def tolerance(self, bit_depth: int) -> int:
        """2 steps at 8 bits (rounding at .5 flips either way), 32 steps (1/2048 of full
        scale) at 16 bits.

        Measured against the FMA-contracted variant (tests/test_verify_honest.py): where it
        changes a 2D pixel at all, the change is a new escape count (median 2.5 steps at 8
        bits, 5-16 steps at 16 bits, up to the full range) and 44-67% of such pixels still
        fall within the tolerance; the rest are all found floating-point sensitive. The 3D
        shader in float64 gave identical pixels under contraction and under nudges of the
        camera; in float32, 14% of pixels changed, 99.7% of them within 32 steps at 16
        bits."""
        return 2 if bit_depth == 8 else 32

    def comparison(self, bit_depth: int) -> str:
        return f"colours compared to within {self.tolerance(bit_depth)} per channel"

    def write_result(
        self, path: Path, width: int, height: int, bit_depth: int, blocks: Iterable[np.ndarray]
    ) -> None:
        from fractal_app.pngstream import PngStreamWriter

        text = {"Software": "fractal-app"}
        with PngStreamWriter(path, width, height, bit_depth, text=text) as writer:
            for block in blocks:
                writer.write_rows(block)


@dataclass(frozen=True)
class _Counts(OutputFormat):
    """One uint32 escape count a pixel. In a band PNG: 16-bit RGB with R the high 16 bits,
    G the low 16 bits, B 0. The result: a 32-bit integer TIFF."""

    def dtype(self, bit_depth: int) -> str:
        return "uint32"

    def band_shape(self, rows: int, width: int) -> tuple[int, ...]:
        return (rows, width)

    def bytes_per_pixel(self, bit_depth: int) -> int:
        return 4

    def png_bits(self, bit_depth: int) -> int:
        return 16

    def check_values(self, values: np.ndarray) -> None:
        if values.dtype != "uint32" or values.ndim != 2:
            raise ValueError(f"counts band must be 2D uint32, got {values.ndim}D {values.dtype}")

    def to_png_rgb(self, values: np.ndarray) -> np.ndarray:
        import numpy as np

        rgb = np.zeros(values.shape + (3,), dtype=np.uint16)
        rgb[..., 0] = values >> 16
        rgb[..., 1] = values & 0xFFFF
        return rgb

    def from_png_rgb(self, rgb: np.ndarray, out: np.ndarray, first_row: int) -> None:
        import numpy as np

        if rgb[..., 2].any():
            row, col = (int(v) for v in np.argwhere(rgb[..., 2])[0])
            raise ValueError(
                f"counts band has a non-zero blue channel at row {first_row + row}, column "
                f"{col} (B must be 0)"
            )
        np.left_shift(rgb[..., 0], 16, out=out, dtype=np.uint32)
        out |= rgb[..., 1]

    def tolerance(self, bit_depth: int) -> int:
        return 0  # an escape count is an integer: an honest one is exact

    def comparison(self, bit_depth: int) -> str:
        return "escape counts compared exactly"

    def write_result(
        self, path: Path, width: int, height: int, bit_depth: int, blocks: Iterable[np.ndarray]
    ) -> None:
        from fractal_app.pngstream import write_counts_tiff

        write_counts_tiff(path, width, height, blocks)


IMAGE = _Image("image", coloured=True, result_file="result.png")
COUNTS = _Counts("counts", coloured=False, result_file="result.tiff",
                 file_suffixes=(".tiff", ".tif"))
OUTPUTS: dict[str, OutputFormat] = {f.name: f for f in (IMAGE, COUNTS)}
OUTPUT_NAMES = tuple(OUTPUTS)


def output_format(name: str) -> OutputFormat:
    """The format named ``name``; ValueError naming the choices otherwise."""
    try:
        return OUTPUTS[name]
    except KeyError:
        raise ValueError(f"output must be one of {OUTPUT_NAMES}, got {name!r}") from None

"""The band plan (every row exactly once, as many bands as allowed, none empty) and the
streamed writers that put bands back together into the final image."""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from fractal_app import pngstream
from fractal_app.bands import band_memory_mib, check_plan, plan_bands, row_pieces
from fractal_app.pngstream import PngStreamWriter, write_counts_tiff


@given(height=st.integers(1, 70_000), max_bands=st.integers(1, 5_000))
def test_plan_covers_every_row_once_with_as_many_bands_as_allowed(height, max_bands):
    bands = plan_bands(height, max_bands)
    check_plan(bands, height)
    assert len(bands) == min(height, max_bands)
    sizes = [stop - start for start, stop in bands]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1


def test_plan_examples():
    assert plan_bands(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert plan_bands(2, 8) == [(0, 1), (1, 2)]
    assert plan_bands(5, 1) == [(0, 5)]


@pytest.mark.parametrize(("height", "max_bands"), [(0, 1), (5, 0), (5, -2)])
def test_plan_rejects_impossible_requests(height, max_bands):
    with pytest.raises(ValueError):
        plan_bands(height, max_bands)


@given(start=st.integers(0, 500), rows=st.integers(0, 500), per_piece=st.integers(1, 600))
def test_row_pieces_walk_every_row_once_in_order(start, rows, per_piece):
    pieces = list(row_pieces(start, start + rows, per_piece))
    assert len(pieces) == -(-rows // per_piece)
    if pieces:
        check_plan([(a - start, b - start) for a, b in pieces], rows)
        assert all(b - a == per_piece for a, b in pieces[:-1])
        assert 1 <= pieces[-1][1] - pieces[-1][0] <= per_piece


def test_row_pieces_refuse_an_empty_piece():
    with pytest.raises(ValueError, match="rows_per_piece=0"):
        list(row_pieces(0, 10, 0))


@pytest.mark.parametrize(
    "bands",
    [[(0, 4), (5, 10)], [(0, 4), (4, 4), (4, 10)], [(0, 9)], [(1, 10)], [(0, 6), (3, 10)]],
)
def test_check_plan_rejects_gaps_overlaps_and_empty_bands(bands):
    with pytest.raises(ValueError):
        check_plan(bands, 10)


def test_memory_estimate_grows_with_the_band():
    small = band_memory_mib(10, 100, "image", 8, 1)
    assert band_memory_mib(1000, 100, "image", 8, 1) > small
    assert band_memory_mib(10, 100, "image", 16, 1) > small
    assert band_memory_mib(10, 100, "image", 8, 4) > small


def decode_png_rgb(path):
    """A minimal independent decoder for our streams (Pillow reads 16-bit RGB as 8-bit)."""
    data = path.read_bytes()
    assert data[:8] == pngstream.PNG_SIGNATURE
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(
            kind + body
        )
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth = header[:3]
    bpp = 3 * depth // 8
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * bpp)
    out = np.empty((height, width * bpp), dtype=np.uint8)
    for j in range(height):
        assert raw[j, 0] == 1  # Sub filter
        row = raw[j, 1:].astype(np.int64)
        for k in range(width * bpp):
            row[k] = (row[k] + (row[k - bpp] if k >= bpp else 0)) % 256
        out[j] = row
    dtype = ">u2" if depth == 16 else np.uint8
    return out.view(dtype).reshape(height, width, 3)


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_png_streamed_in_uneven_blocks_reads_back_exactly(tmp_path, monkeypatch, bit_depth):
    monkeypatch.setattr(pngstream, "STEP_BYTES", 7 * 31 * 3)  # several steps per block
    monkeypatch.setattr(pngstream, "IDAT_CHUNK_BYTES", 100)  # several IDAT chunks
    monkeypatch.setattr(pngstream, "SEGMENT_BYTES", 500)  # several deflate segments in flight
    rng = np.random.default_rng(5)
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    image = rng.integers(0, 2**bit_depth, (45, 31, 3)).astype(dtype)
    path = tmp_path / "out.png"
    with PngStreamWriter(
        path, 31, 45, bit_depth, text={"Software": "fractal-app"}, threads=3
    ) as writer:
        for start, stop in [(0, 1), (1, 20), (20, 45)]:
            writer.write_rows(image[start:stop])
    np.testing.assert_array_equal(decode_png_rgb(path), image)
    with Image.open(path) as png:
        assert png.size == (31, 45)
        assert png.text == {"Software": "fractal-app"}
        if bit_depth == 8:
            np.testing.assert_array_equal(np.asarray(png), image)


def test_png_refuses_missing_rows_and_wrong_dtype(tmp_path):
    writer = PngStreamWriter(tmp_path / "a.png", 4, 3, 8)
    with pytest.raises(ValueError, match="uint8"):
        writer.write_rows(np.zeros((1, 4, 3), np.uint16))
    writer.write_rows(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="2 of 3 rows"):
        writer.close()


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("strip_bytes", [1 << 18, 100])
def test_counts_tiff_reads_back_with_pillow(tmp_path, monkeypatch, big, strip_bytes):
    monkeypatch.setattr(pngstream, "TIFF_STRIP_BYTES", strip_bytes)
    rng = np.random.default_rng(6)
    counts = rng.integers(0, 10_000_001, (33, 70)).astype(np.uint32)
    path = tmp_path / "result.tiff"
    write_counts_tiff(path, 70, 33, iter([counts[:5], counts[5:]]), force_bigtiff=big)
    with Image.open(path) as tiff:
        assert tiff.mode == "I"
        np.testing.assert_array_equal(np.asarray(tiff), counts.astype(np.int32))


def test_counts_tiff_refuses_values_that_do_not_fit(tmp_path):
    with pytest.raises(ValueError, match="2\\^31"):
        write_counts_tiff(tmp_path / "c.tiff", 2, 1, [np.array([[0, 2**31]], dtype=np.uint32)])


@pytest.mark.parametrize("rows", [[2, 1], [2, 3], [4, 1]])
def test_counts_tiff_refuses_rows_that_do_not_add_up(tmp_path, rows):
    blocks = [np.zeros((n, 3), np.uint32) for n in rows]
    with pytest.raises(ValueError, match="rows"):
        write_counts_tiff(tmp_path / "c.tiff", 3, 4, blocks)

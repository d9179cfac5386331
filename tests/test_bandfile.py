"""The band file format: round trips, interoperability, and a hostile reader."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
import zlib

import numpy as np
import pytest
from cheaters import FILE_CHEATS, chunk, craft_png
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from fractal_app import bandfile, pngstream
from fractal_app.bandfile import (
    BandFileError,
    BandMeta,
    max_file_bytes,
    read_band,
    write_band,
    write_band_blocks,
)

META = BandMeta("task-1", "sub-3", 10, 16, "image")
COUNTS = BandMeta("task-1", "sub-3", 10, 16, "counts")
WIDTH = 7


def _rgb(rows=6, width=WIDTH, dtype=np.uint8, seed=0):
    high = 256 if dtype == np.uint8 else 65536
    return np.random.default_rng(seed).integers(0, high, (rows, width, 3), dtype=dtype)


def _text(meta=META):
    return meta.to_json().encode()


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype,bits", [(np.uint8, 8), (np.uint16, 16)])
def test_image_band_round_trips(tmp_path, dtype, bits):
    values = _rgb(dtype=dtype)
    write_band(tmp_path / "b.png", values, META)
    back = read_band(tmp_path / "b.png", META, WIDTH, bits)
    assert back.dtype == dtype and back.shape == (6, WIDTH, 3)
    np.testing.assert_array_equal(back, values)
    assert os.listdir(tmp_path) == ["b.png"]  # the temporary file was renamed away


def test_counts_band_round_trips_full_uint32_range(tmp_path):
    values = np.random.default_rng(1).integers(0, 2**32, (6, WIDTH), dtype=np.uint32)
    values[0, :3] = [0, 2**32 - 1, 65536]
    write_band(tmp_path / "c.png", values, COUNTS)
    back = read_band(tmp_path / "c.png", COUNTS, WIDTH, 8)  # bit_depth is ignored for counts
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, values)


@pytest.mark.parametrize(
    "output,dtype,bits",
    [("image", np.uint8, 8), ("image", np.uint16, 16), ("counts", np.uint32, 16)],
)
def test_bands_encode_a_block_of_rows_at_a_time(tmp_path, monkeypatch, output, dtype, bits):
    """Poster bands are encoded in row blocks (and IDAT chunks) far smaller than the band."""
    monkeypatch.setattr(pngstream, "STEP_BYTES", 3 * WIDTH * 2 * 2)  # ~2 rows a step
    monkeypatch.setattr(pngstream, "IDAT_CHUNK_BYTES", 64)
    meta = BandMeta("task-1", "sub-3", 0, 40, output)
    rng = np.random.default_rng(7)
    shape = (40, WIDTH) if output == "counts" else (40, WIDTH, 3)
    values = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    write_band(tmp_path / "b.png", values, meta)
    np.testing.assert_array_equal(read_band(tmp_path / "b.png", meta, WIDTH, bits), values)
    with Image.open(tmp_path / "b.png") as image:  # and an ordinary PNG reader agrees
        assert image.size == (WIDTH, 40)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 9),
    width=st.integers(1, 33),
    bits=st.sampled_from([8, 16]),
    seed=st.integers(0, 2**31),
)
def test_round_trip_any_shape(tmp_path_factory, rows, width, bits, seed):
    path = tmp_path_factory.mktemp("rt") / "b.png"
    meta = BandMeta("t", "s", 5, 5 + rows, "image")
    values = _rgb(rows, width, np.uint8 if bits == 8 else np.uint16, seed)
    write_band(path, values, meta)
    np.testing.assert_array_equal(read_band(path, meta, width, bits), values)


def test_pillow_reads_what_we_write(tmp_path):
    values = _rgb()
    write_band(tmp_path / "b.png", values, META)
    with Image.open(tmp_path / "b.png") as image:
        assert image.mode == "RGB" and image.size == (WIDTH, 6)
        np.testing.assert_array_equal(np.asarray(image), values)
        assert json.loads(image.text["fractal-app"]) == {
            "task_id": "task-1",
            "subtask_id": "sub-3",
            "row_start": 10,
            "row_stop": 16,
            "output": "image",
        }


def test_reads_a_pillow_written_png_with_adaptive_filters(tmp_path):
    # Pillow picks a filter per row; a gradient plus noise makes it use several kinds.
    rows, width = 40, 50
    grid = np.add.outer(np.arange(rows), np.arange(width))
    values = np.stack([grid * 3, grid * 5, (grid * 7) ^ grid], axis=-1).astype(np.uint8)
    values[::7] = _rgb(1, width)[0]
    meta = BandMeta("t", "s", 0, rows, "image")
    info = PngImagePlugin.PngInfo()
    info.add_text("fractal-app", meta.to_json())
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG", pnginfo=info)
    (tmp_path / "p.png").write_bytes(buffer.getvalue())
    np.testing.assert_array_equal(read_band(tmp_path / "p.png", meta, width, 8), values)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("kinds", [[0], [1], [2], [3], [4], [4, 3, 2, 1, 0]])
def test_every_png_filter_type_decodes(tmp_path, bits, kinds):
    dtype = np.uint8 if bits == 8 else np.uint16
    values = _rgb(dtype=dtype, seed=7)
    png = craft_png(WIDTH, 6, bit_depth=bits, text=_text(), pixels=values, filter_kinds=kinds)
    (tmp_path / "f.png").write_bytes(png)
    np.testing.assert_array_equal(read_band(tmp_path / "f.png", META, WIDTH, bits), values)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("kinds", [[2], [3], [4], [4, 3, 2, 1, 0], [0, 2, 2, 4, 1, 3]])
def test_filters_decode_across_the_reader_s_row_blocks(tmp_path, monkeypatch, bits, kinds):
    """The reader inflates and unfilters a few rows at a time: filters that look at the row
    above (Up, Average, Paeth) must see the previous block's last row."""
    stride = WIDTH * 3 * bits // 8
    monkeypatch.setattr(bandfile, "_DECODE_BLOCK_BYTES", 2 * (stride + 1))  # 2 rows a block
    dtype = np.uint8 if bits == 8 else np.uint16
    values = _rgb(dtype=dtype, seed=11)
    png = craft_png(WIDTH, 6, bit_depth=bits, text=_text(), pixels=values, filter_kinds=kinds)
    (tmp_path / "f.png").write_bytes(png)
    np.testing.assert_array_equal(read_band(tmp_path / "f.png", META, WIDTH, bits), values)


def test_every_average_and_paeth_row_runs_the_one_kernel_the_warm_up_compiles(tmp_path):
    """The docker_cpu image holds the Average/Paeth kernel for the one signature its warm-up
    meets (fractal_app.warmup refilters an 8-bit band). A band of any depth or output, with
    such a row first in a decoding block, after a fast-path block or after any other row,
    must call that same signature: a second one would compile in a container whose cache is
    read-only, and an honest band would answer INTERNAL there."""
    cases = [(META, 8, [4, 3, 0, 1, 2]), (META, 16, [1, 1, 3, 4]), (META, 8, [3]),
             (BandMeta("task-1", "sub-3", 10, 16, "counts"), 16, [2, 2, 4])]
    for meta, bits, kinds in cases:
        rgb = _rgb(dtype=np.uint8 if bits == 8 else np.uint16, seed=3)
        if meta.output == "counts":
            rgb[..., 2] = 0
        png = craft_png(WIDTH, 6, bit_depth=bits, text=_text(meta), pixels=rgb,
                        filter_kinds=kinds)
        (tmp_path / "f.png").write_bytes(png)
        read_band(tmp_path / "f.png", meta, WIDTH, bits)
    assert len(bandfile._compiled_unfilter.signatures) == 1, bandfile._compiled_unfilter.signatures


def test_many_idat_chunks_and_small_read_blocks_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(pngstream, "IDAT_CHUNK_BYTES", 7)
    monkeypatch.setattr(bandfile, "_DECODE_BLOCK_BYTES", 1)  # a row a block
    values = np.random.default_rng(5).integers(0, 2**32, (6, WIDTH), dtype=np.uint32)
    write_band(tmp_path / "c.png", values, COUNTS)
    np.testing.assert_array_equal(read_band(tmp_path / "c.png", COUNTS, WIDTH, 8), values)


@pytest.mark.parametrize("output,bits", [("image", 8), ("image", 16), ("counts", 16)])
def test_reading_a_band_holds_its_values_and_its_file_not_copies(tmp_path, output, bits):
    """A requestor verifies two bands at once: reading one must cost about the band's values
    plus its (compressed) file, not the several whole-band copies a one-shot decode makes."""
    rows, width = 1024, 4096
    meta = BandMeta("t", "s", 0, rows, output)
    rng = np.random.default_rng(3)
    if output == "counts":
        values = rng.integers(0, 5000, (rows, width), dtype=np.uint32)
    else:
        dtype = np.uint8 if bits == 8 else np.uint16
        values = rng.integers(0, 40, (rows, width, 3), dtype=dtype)
    write_band(tmp_path / "b.png", values, meta)
    file_bytes = (tmp_path / "b.png").stat().st_size
    tracemalloc.start()
    try:
        back = read_band(tmp_path / "b.png", meta, width, bits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(back, values)
    # A block in flight is a few buffers of a block's size (inflated bytes, the input zlib
    # has yet to use, unfiltered rows); a one-shot decode needs 2-6x the band on top.
    allowance = values.nbytes + file_bytes + 6 * bandfile._DECODE_BLOCK_BYTES
    assert peak < allowance, f"peak {peak:,} B for a {values.nbytes:,} B band"


def test_write_band_refuses_values_that_do_not_fit_the_meta(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        write_band(tmp_path / "b.png", _rgb(rows=5), META)
    with pytest.raises(ValueError, match="uint32"):
        write_band(tmp_path / "b.png", _rgb(), COUNTS)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_band(tmp_path / "b.png", _rgb().astype(np.float32), META)


@pytest.mark.parametrize("sizes", [[6], [1, 5], [2, 2, 2], [1, 1, 1, 1, 1, 1]])
@pytest.mark.parametrize("meta", [META, COUNTS])
def test_a_band_written_in_blocks_is_the_same_file(tmp_path, sizes, meta):
    """The provider streams its band block by block; the file must not depend on the cut."""
    values = _rgb() if meta.output == "image" else _rgb()[..., 0].astype(np.uint32) << 12
    write_band(tmp_path / "whole.png", values, meta)
    cuts = np.cumsum([0, *sizes])
    blocks = (values[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True))
    write_band_blocks(tmp_path / "blocks.png", blocks, meta)
    assert (tmp_path / "blocks.png").read_bytes() == (tmp_path / "whole.png").read_bytes()


@pytest.mark.parametrize(
    "blocks,match",
    [
        ([], "at least one block"),
        ([_rgb(rows=2), _rgb(rows=2)], "hold 4 rows, the band 6"),
        ([_rgb(rows=4), _rgb(rows=4)], "more than the band's 6 rows"),
        ([_rgb(rows=3), _rgb(rows=3, width=WIDTH + 1)], "wide"),
        ([_rgb(rows=3), _rgb(rows=3, dtype=np.uint16)], "uint16"),
    ],
)
def test_blocks_that_do_not_add_up_to_the_band_leave_no_file(tmp_path, blocks, match):
    with pytest.raises(ValueError, match=match):
        write_band_blocks(tmp_path / "b.png", blocks, META)
    assert os.listdir(tmp_path) == []


def test_a_streamed_band_holds_one_block_in_memory_not_the_band(tmp_path):
    """Encoding a band from a generator of blocks allocates about a block, however tall the
    band: 64 blocks of 16 rows (24 MiB of band) must not cost more than a few blocks."""
    width, block_rows, blocks = 8192, 16, 64
    block_bytes = block_rows * width * 3
    meta = BandMeta("t", "s", 0, block_rows * blocks, "image")

    def generate():
        for k in range(blocks):
            yield np.full((block_rows, width, 3), k, dtype=np.uint8)

    tracemalloc.start()
    try:
        write_band_blocks(tmp_path / "b.png", generate(), meta)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * block_bytes, f"peak {peak} bytes for {block_bytes}-byte blocks"
    back = read_band(tmp_path / "b.png", meta, width, 8)
    assert back[::block_rows, 0, 0].tolist() == list(range(blocks))


# --------------------------------------------------------------------------- hostile files
def _reject(tmp_path, data: bytes, match: str, meta=META, bits=8):
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    with pytest.raises(BandFileError, match=match):
        read_band(path, meta, WIDTH, bits)


@pytest.mark.parametrize(
    "name", sorted(n for n in FILE_CHEATS if n not in ("extra_file", "two_bands", "subdirectory"))
)
@pytest.mark.parametrize("meta", [META, COUNTS], ids=["image", "counts"])
def test_file_cheats_are_rejected_by_the_reader(tmp_path, name, meta):
    cheat, words = FILE_CHEATS[name]
    folder = tmp_path / "out"
    folder.mkdir()
    honest = (
        np.arange(6 * WIDTH, dtype=np.uint32).reshape(6, WIDTH) * 99991
        if meta.output == "counts"
        else _rgb()
    )
    cheat(folder, meta, WIDTH, 8, honest)
    with pytest.raises(BandFileError, match=words):
        read_band(folder / "band.png", meta, WIDTH, 8)


def test_every_truncation_is_rejected(tmp_path):
    write_band(tmp_path / "b.png", _rgb(), META)
    data = (tmp_path / "b.png").read_bytes()
    for cut in range(len(data)):
        (tmp_path / "t.png").write_bytes(data[:cut])
        with pytest.raises(BandFileError):
            read_band(tmp_path / "t.png", META, WIDTH, 8)


def test_every_single_bit_flip_is_rejected_or_harmless(tmp_path):
    """CRCs catch corruption anywhere: every flipped bit is an error, never wrong values."""
    values = _rgb()
    write_band(tmp_path / "b.png", values, META)
    data = (tmp_path / "b.png").read_bytes()
    for pos in range(8, len(data), 3):
        bad = bytearray(data)
        bad[pos] ^= 1 << (pos % 8)
        (tmp_path / "t.png").write_bytes(bytes(bad))
        with pytest.raises(BandFileError):
            read_band(tmp_path / "t.png", META, WIDTH, 8)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BandFileError, match="does not exist"):
        read_band(tmp_path / "none.png", META, WIDTH, 8)
    (tmp_path / "d.png").mkdir()
    with pytest.raises(BandFileError, match="regular file"):
        read_band(tmp_path / "d.png", META, WIDTH, 8)


def test_fifo_is_rejected_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "f.png")
    with pytest.raises(BandFileError, match="regular file"):
        read_band(tmp_path / "f.png", META, WIDTH, 8)


def test_size_bound_is_checked_before_reading(tmp_path):
    limit = max_file_bytes(META, WIDTH, 8)
    assert limit < 300_000  # a 7x6 band: a few hundred bytes of pixels plus fixed slack
    path = tmp_path / "big.png"
    with open(path, "wb") as handle:
        handle.truncate(limit + 1)
    with pytest.raises(BandFileError, match=f"at most {limit:,}"):
        read_band(path, META, WIDTH, 8)


def test_an_honest_incompressible_band_fits_the_size_bound(tmp_path):
    meta = BandMeta("t", "s", 0, 64, "image")
    values = _rgb(64, 512, np.uint16, seed=3)
    write_band(tmp_path / "n.png", values, meta)
    assert (tmp_path / "n.png").stat().st_size <= max_file_bytes(meta, 512, 16)
    np.testing.assert_array_equal(read_band(tmp_path / "n.png", meta, 512, 16), values)


@pytest.mark.parametrize(
    "color_type,name", [(0, "greyscale"), (3, "palette"), (4, "alpha"), (6, "RGBA")]
)
def test_wrong_colour_types(tmp_path, color_type, name):
    _reject(tmp_path, craft_png(WIDTH, 6, color_type=color_type, text=_text()), name)


def test_interlaced_is_rejected(tmp_path):
    _reject(tmp_path, craft_png(WIDTH, 6, interlace=1, text=_text()), "interlaced")


def test_header_bomb_is_rejected_from_the_header_alone(tmp_path):
    # The pixel data is garbage: only the header can have rejected it.
    png = craft_png(100_000, 100_000, text=_text(), idat=b"not zlib at all")
    _reject(tmp_path, png, "100000x100000")


def test_data_bomb_stops_at_the_band_size(tmp_path):
    idat = zlib.compress(bytes(64 << 20), 9)  # 64 MiB of zeros in ~64 KiB
    _reject(tmp_path, craft_png(WIDTH, 6, text=_text(), idat=idat), "inflates to more")


def test_short_and_corrupt_pixel_data(tmp_path):
    _reject(tmp_path, craft_png(WIDTH, 6, text=_text(), idat=zlib.compress(bytes(10))), "truncated")
    _reject(tmp_path, craft_png(WIDTH, 6, text=_text(), idat=b"\x78\x9c\xff\xff"), "corrupt")
    stream = zlib.compress(bytes(6 * (1 + WIDTH * 3)))
    _reject(tmp_path, craft_png(WIDTH, 6, text=_text(), idat=stream[:-6]), "truncated")


def test_unknown_filter_type(tmp_path):
    raw = bytearray(6 * (1 + WIDTH * 3))
    raw[(1 + WIDTH * 3) * 2] = 9
    _reject(
        tmp_path,
        craft_png(WIDTH, 6, text=_text(), idat=zlib.compress(bytes(raw))),
        "row 2 has an unknown filter type 9",
    )


@pytest.mark.parametrize(
    "change,match",
    [
        ({"task_id": "task-2"}, "task_id"),
        ({"subtask_id": "sub-4"}, "subtask_id"),
        ({"row_start": 11}, "row_start"),
        ({"row_stop": 17}, "row_stop"),
        ({"output": "counts"}, "output"),
        ({"row_start": "10"}, "row_start"),  # a string is not the integer 10
        ({"row_start": 10.0}, "row_start"),
        ({"row_start": True}, "row_start"),
        ({"extra": 1}, "exactly the keys"),
    ],
)
def test_text_chunk_must_match_exactly(tmp_path, change, match):
    meta = {
        "task_id": "task-1",
        "subtask_id": "sub-3",
        "row_start": 10,
        "row_stop": 16,
        "output": "image",
    }
    meta.update(change)
    _reject(tmp_path, craft_png(WIDTH, 6, text=json.dumps(meta).encode()), match)


def test_text_chunk_missing_key_bad_json_and_duplicates(tmp_path):
    _reject(tmp_path, craft_png(WIDTH, 6, text=b'{"task_id": "task-1"}'), "exactly the keys")
    _reject(tmp_path, craft_png(WIDTH, 6, text=b"{not json"), "not valid JSON")
    _reject(tmp_path, craft_png(WIDTH, 6, text=b"[1, 2]"), "exactly the keys")
    twice = chunk(b"tEXt", b"fractal-app\0" + _text())
    _reject(tmp_path, craft_png(WIDTH, 6, text=_text(), extra_chunks=[twice]), "exactly one")
    compressed = chunk(b"zTXt", b"fractal-app\0\0" + zlib.compress(_text()))
    _reject(tmp_path, craft_png(WIDTH, 6, extra_chunks=[compressed]), "exactly one")


def test_harmless_ancillary_chunks_are_allowed_but_bounded(tmp_path):
    values = _rgb()
    ok = craft_png(
        WIDTH,
        6,
        text=_text(),
        pixels=values,
        extra_chunks=[chunk(b"gAMA", b"\0\0\xb1\x8f"), chunk(b"tEXt", b"Author\0me")],
    )
    (tmp_path / "ok.png").write_bytes(ok)
    np.testing.assert_array_equal(read_band(tmp_path / "ok.png", META, WIDTH, 8), values)
    bulky = [chunk(b"zzZz", bytes(30_000)) for _ in range(3)]
    _reject(tmp_path, craft_png(WIDTH, 6, text=_text(), extra_chunks=bulky), "ancillary")


def test_structure_errors(tmp_path):
    good = craft_png(WIDTH, 6, text=_text())
    _reject(tmp_path, good + b"junk", "after IEND")
    gamma_first = good[:8] + chunk(b"gAMA", b"\0\0\xb1\x8f") + good[8:]
    _reject(tmp_path, gamma_first, "start with an IHDR")
    plte = chunk(b"PLTE", bytes(3))
    _reject(tmp_path, craft_png(WIDTH, 6, text=_text(), extra_chunks=[plte]), "critical chunk PLTE")
    header_end = 8 + 25
    _reject(
        tmp_path, good[:header_end] + chunk(b"IDAT", b"") + good[header_end:], "not consecutive"
    )


def test_counts_band_with_blue_channel_is_rejected(tmp_path):
    rgb = np.zeros((6, WIDTH, 3), dtype=np.uint16)
    rgb[3, 4, 2] = 1
    png = craft_png(WIDTH, 6, bit_depth=16, text=_text(COUNTS), pixels=rgb)
    _reject(tmp_path, png, "blue channel at row 13, column 4", meta=COUNTS)


def test_counts_band_must_be_16_bit(tmp_path):
    _reject(tmp_path, craft_png(WIDTH, 6, bit_depth=8, text=_text(COUNTS)), "8-bit", meta=COUNTS)


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    mode=st.sampled_from(["flip", "insert", "delete", "truncate"]),
)
def test_mangled_files_never_raise_anything_but_band_file_error(tmp_path_factory, cuts, mode):
    """Whatever is done to a valid band file, the reader answers with values of the band's
    exact shape or with BandFileError, never another exception."""
    folder = tmp_path_factory.mktemp("fuzz")
    write_band(folder / "b.png", _rgb(), META)
    data = bytearray((folder / "b.png").read_bytes())
    for position, byte in cuts:
        position %= len(data) + 1
        if mode == "flip" and position < len(data):
            data[position] ^= byte or 1
        elif mode == "insert":
            data[position:position] = bytes([byte])
        elif mode == "delete":
            del data[position : position + 1 + byte % 8]
        else:
            del data[position:]
    (folder / "m.png").write_bytes(bytes(data))
    try:
        values = read_band(folder / "m.png", META, WIDTH, 8)
    except BandFileError:
        return
    assert values.shape == (6, WIDTH, 3) and values.dtype == np.uint8

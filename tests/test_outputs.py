"""The output-format registry: each format's declarations agree with each other, with the
scene schema and with the files the app writes for it."""

import typing

import numpy as np
import pytest
from PIL import Image

from fractal_app import scene, taskdir
from fractal_app.outputs import COUNTS, IMAGE, OUTPUTS, output_format


def test_the_scene_schema_allows_exactly_the_registered_outputs():
    field = scene.MandelbrotScene.model_fields["output"]
    assert typing.get_args(field.annotation) == tuple(OUTPUTS) == ("image", "counts")
    parsed = scene.parse_scene({"fractal": "julia", "resolution": [4, 2], "output": "counts"})
    assert parsed.output_format is COUNTS


def test_an_unknown_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"one of \('image', 'counts'\).*'colour'"):
        output_format("colour")


@pytest.mark.parametrize("fmt", OUTPUTS.values(), ids=list(OUTPUTS))
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_band_values_survive_their_band_png_packing(fmt, bit_depth):
    values = fmt.empty_band(3, 5, bit_depth)
    assert values.shape == fmt.band_shape(3, 5)
    assert values.nbytes == 15 * fmt.bytes_per_pixel(bit_depth)
    fmt.check_values(values)
    rng = np.random.default_rng(1)
    values[...] = rng.integers(0, np.iinfo(values.dtype).max, values.shape, endpoint=True)
    rgb = fmt.to_png_rgb(values)
    assert rgb.shape == (3, 5, 3)
    assert rgb.dtype.itemsize * 8 == fmt.png_bits(bit_depth)
    back = fmt.empty_band(3, 5, bit_depth)
    fmt.from_png_rgb(rgb, back, first_row=0)
    np.testing.assert_array_equal(back, values)


def test_a_counts_sample_with_blue_names_its_pixel():
    rgb = np.zeros((2, 4, 3), np.uint16)
    rgb[1, 3, 2] = 1
    with pytest.raises(ValueError, match="blue channel at row 11, column 3"):
        COUNTS.from_png_rgb(rgb, COUNTS.empty_band(2, 4, 8), first_row=10)


def test_values_of_the_wrong_kind_are_refused():
    with pytest.raises(ValueError, match="2D uint32"):
        COUNTS.check_values(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        IMAGE.check_values(np.zeros((2, 4), np.uint32))


def test_verification_compares_counts_exactly_and_colours_within_a_few_steps():
    assert COUNTS.tolerance(8) == COUNTS.tolerance(16) == 0
    assert (IMAGE.tolerance(8), IMAGE.tolerance(16)) == (2, 32)
    assert COUNTS.comparison(8) == "escape counts compared exactly"
    assert IMAGE.comparison(16) == "colours compared to within 32 per channel"


@pytest.mark.parametrize("fmt", OUTPUTS.values(), ids=list(OUTPUTS))
def test_each_result_file_is_written_by_its_writer_and_reads_back(tmp_path, fmt):
    values = fmt.empty_band(6, 7, 8)
    values[...] = np.arange(values.size).reshape(values.shape) * 3 % 251
    path = tmp_path / fmt.result_file
    fmt.write_result(path, 7, 6, 8, iter([values[:2], values[2:]]))
    with Image.open(path) as picture:
        assert picture.format == {"png": "PNG", "tiff": "TIFF"}[fmt.result_file.split(".")[1]]
        np.testing.assert_array_equal(np.asarray(picture), values)
    assert not fmt.file_suffixes or path.suffix in fmt.file_suffixes
    assert taskdir.result_file_name(fmt.name) == fmt.result_file

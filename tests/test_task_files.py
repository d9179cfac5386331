"""The requestor's saved band values read back for the final image: a block at a time."""

import numpy as np
import pytest

from fractal_app import task_files


@pytest.mark.parametrize(
    "values",
    [np.arange(5 * 7 * 3, dtype=np.uint16).reshape(5, 7, 3),
     np.arange(9 * 4, dtype=np.uint32).reshape(9, 4) * 1000],
    ids=["image16", "counts"],
)
def test_saved_values_come_back_in_blocks_of_the_read_size(tmp_path, monkeypatch, values):
    np.save(tmp_path / "0.npy", values, allow_pickle=False)
    monkeypatch.setattr(task_files, "READ_BLOCK_BYTES", 2 * values[0].nbytes)  # 2 rows a block
    blocks = list(task_files.band_value_blocks(tmp_path / "0.npy"))
    assert [b.shape[0] for b in blocks] == [2] * (len(values) // 2) + [1]
    assert all(b.dtype == values.dtype for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), values)


def test_a_truncated_values_file_is_an_error_not_short_rows(tmp_path):
    np.save(tmp_path / "0.npy", np.zeros((6, 10), np.uint32), allow_pickle=False)
    data = (tmp_path / "0.npy").read_bytes()
    (tmp_path / "0.npy").write_bytes(data[:-7])
    with pytest.raises(ValueError, match="ends before its 6 rows"):
        list(task_files.band_value_blocks(tmp_path / "0.npy"))

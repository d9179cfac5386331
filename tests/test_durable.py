"""durable_file: the file appears whole, or not at all."""

import pytest

from fractal_app.durable import durable_file


def test_file_appears_complete_and_nothing_else_is_left(tmp_path):
    target = tmp_path / "scene.json"
    with durable_file(target) as out:
        out.write(b"{}")
        assert not target.exists(), "the target must not appear before the block ends"
    assert target.read_bytes() == b"{}"
    assert [p.name for p in tmp_path.iterdir()] == ["scene.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_partial_one(tmp_path):
    target = tmp_path / "band.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), durable_file(target) as out:
        out.write(b"half")
        raise RuntimeError("encoder failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["band.png"]

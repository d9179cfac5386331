"""The Golem folder layout: names from outside checked, both sides' folders, file names."""

import os

import pytest

from fractal_app.errors import FailedPrecondition, InvalidArgument
from fractal_app.taskdir import (
    BAND_FILE,
    SCENE_RESOURCE,
    ProviderTaskDir,
    RequestorTaskDir,
    check_name,
    check_relative_path,
    result_file_name,
)


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "/abs", "a\\b", "..", "a..b", "a\x00b", ".hidden", "x" * 129, "sp ace", "é"],
)
def test_unsafe_names_are_rejected(name):
    with pytest.raises(InvalidArgument, match="subtask_id"):
        check_name("subtask_id", name)


@pytest.mark.parametrize(
    "name", ["a", "3f2c-11ee.b_x", "x" * 128, "550e8400-e29b-41d4-a716-446655440000"]
)
def test_safe_names_pass(name):
    assert check_name("task_id", name) == name


def test_relative_paths_stay_inside(tmp_path):
    assert check_relative_path("output", "s1/band.png", tmp_path) == tmp_path / "s1" / "band.png"
    for bad in ["/etc/passwd", "../x", "s1/../../x", "s1//x", ""]:
        with pytest.raises(InvalidArgument):
            check_relative_path("output", bad, tmp_path)


def test_task_paths_validate_the_task_id(tmp_path):
    with pytest.raises(InvalidArgument, match="task_id"):
        RequestorTaskDir.of(tmp_path, "../escape")
    paths = RequestorTaskDir.of(tmp_path, "t1")
    paths.make_folders()
    assert sorted(p.name for p in paths.root.iterdir()) == [
        "app_state",
        "subtask_inputs",
        "subtask_outputs",
        "task_inputs",
        "task_outputs",
    ]


def test_a_node_prepares_the_four_protocol_folders_and_nothing_else(tmp_path):
    task_dir = RequestorTaskDir.of(tmp_path, "t1")
    task_dir.prepare()
    task_dir.prepare()  # a node may have made them already
    assert sorted(p.name for p in task_dir.root.iterdir()) == [
        "subtask_inputs",
        "subtask_outputs",
        "task_inputs",
        "task_outputs",
    ]
    assert task_dir.scene_resource == tmp_path / "t1" / "subtask_inputs" / SCENE_RESOURCE
    assert task_dir.result_dir("s1") == tmp_path / "t1" / "subtask_outputs" / "s1"
    with pytest.raises(InvalidArgument, match="subtask_id"):
        task_dir.result_dir("../s1")


def test_the_result_file_is_named_by_the_output():
    assert result_file_name("image") == "result.png"
    assert result_file_name("counts") == "result.tiff"


def test_the_provider_writes_its_band_under_the_subtask_id(tmp_path):
    task_dir = ProviderTaskDir(tmp_path)
    task_dir.prepare()
    assert task_dir.band_output("s1") == f"s1/{BAND_FILE}"
    assert task_dir.band_file("s1", create=True) == tmp_path / "s1" / BAND_FILE
    assert (tmp_path / "s1").is_dir()
    with pytest.raises(InvalidArgument, match="subtask_id"):
        task_dir.band_file("..", create=True)


def test_the_provider_never_writes_through_a_planted_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    ProviderTaskDir(work).prepare()
    os.symlink(outside, work / "s1")
    with pytest.raises(FailedPrecondition, match="symlink"):
        ProviderTaskDir(work).band_file("s1", create=True)


def test_a_resource_is_read_only_from_a_regular_file(tmp_path):
    task_dir = ProviderTaskDir(tmp_path)
    task_dir.prepare()
    task_dir.resource(SCENE_RESOURCE).write_text('{"fractal": "julia"}')
    assert task_dir.read_resource(SCENE_RESOURCE) == '{"fractal": "julia"}'
    with pytest.raises(InvalidArgument, match="resource name"):
        task_dir.resource("../scene.json")
    with pytest.raises(FailedPrecondition, match="the node must ship"):
        task_dir.read_resource("missing.json")

"""The Golem app definition, and that it names the images CreateTask asks providers for."""

import json
import subprocess
import sys

from fractal_app import __version__, images
from fractal_app.app_definition import app_definition

# The keys Golem's AppDefinition takes (PROTOCOL.md, "How a Golem node runs the app").
GOLEM_KEYS = {
    "name", "requestor_env", "requestor_prereq", "max_benchmark_score", "version",
    "description", "author", "license", "market_strategy",
}


def test_definition_has_exactly_the_golem_fields_with_their_types():
    definition = app_definition()
    assert set(definition) == GOLEM_KEYS
    assert definition["requestor_env"] == "docker_cpu"
    assert definition["market_strategy"] == "brass"
    assert definition["version"] == __version__
    assert isinstance(definition["max_benchmark_score"], float)
    assert definition["max_benchmark_score"] > 0
    for key in ("name", "description", "author", "license"):
        assert isinstance(definition[key], str) and definition[key].strip(), key
    prereq = definition["requestor_prereq"]
    assert set(prereq) == {"image", "tag"}
    assert all(isinstance(v, str) and v for v in prereq.values())


def test_requestor_runs_from_the_image_create_task_names_for_cpu_providers():
    assert app_definition()["requestor_prereq"] == images.image_for_env("docker_cpu")


def test_image_names_follow_the_operator_overrides(monkeypatch):
    # A node operator who pushed the images elsewhere: definition and CreateTask agree.
    monkeypatch.setenv("FRACTAL_APP_CPU_IMAGE", "registry.example/fractal-cpu")
    monkeypatch.setenv("FRACTAL_APP_IMAGE_TAG", "9.9.9")
    assert app_definition()["requestor_prereq"] == {
        "image": "registry.example/fractal-cpu",
        "tag": "9.9.9",
    }


def test_cpu_and_gpu_images_differ_and_share_the_release_tag():
    cpu, gpu = images.image_for_env("docker_cpu"), images.image_for_env("docker_gpu")
    assert cpu["image"] != gpu["image"]
    assert cpu["tag"] == gpu["tag"] == __version__


def test_benchmark_ceiling_is_above_what_this_machine_scores():
    # The ceiling must not clip honest providers: a quick score here sits well below it.
    from fractal_app import render

    score = render.run_benchmark(target_seconds=0.2)
    assert 0 < 2 * score < app_definition()["max_benchmark_score"]


def test_create_task_prerequisites_name_the_same_images(tmp_path):
    """CreateTask's reply, from a real requestor process over gRPC, names image_for_env's
    image for each environment, and the CPU one is the app definition's."""
    from grpc_helpers import create_task, start_server

    requestor = start_server("requestor", tmp_path / "requestor")
    try:
        stub = requestor.requestor()
        for env_id in ("docker_cpu", "docker_gpu"):
            scene = {"fractal": "mandelbrot", "resolution": [8, 4], "max_iter": 8, "env": env_id}
            reply = create_task(stub, requestor.work_dir, f"task-{env_id}", scene, 2)
            assert reply.env_id == env_id
            assert json.loads(reply.prerequisites_json) == images.image_for_env(env_id)
            if env_id == "docker_cpu":
                assert json.loads(reply.prerequisites_json) == app_definition()["requestor_prereq"]
    finally:
        requestor.stop()


def test_cli_prints_the_definition_as_json():
    out = subprocess.run(
        [sys.executable, "-m", "fractal_app.cli", "app-definition"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == app_definition()

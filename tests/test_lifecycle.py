"""The whole Golem lifecycle over real gRPC: requestor and provider processes, as a node runs them.

Each provider is its own ``python -m fractal_app provider 0`` process with its own work
directory; resources go to it and results come back by file copies, like a node ships them.
"""

import json
import uuid

import grpc
import numpy as np
import pytest
from certs import write_certs
from grpc_helpers import (
    create_task,
    has_pending,
    next_subtask,
    read_result,
    rpc_error,
    run_provider,
    start_server,
    tls_credentials,
    verify,
)

from fractal_app import render
from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.scene import parse_scene

SCENE = {"fractal": "mandelbrot", "resolution": [64, 48], "max_iter": 200}


def run_whole_task(tmp_path, requestor, scene, bands, credentials_for=None):
    """Drive one task to its final image; returns (final path, CreateTask reply)."""
    stub, work = requestor.requestor(), requestor.work_dir
    task_id = f"task-{uuid.uuid4().hex[:8]}"
    created = create_task(stub, work, task_id, scene, bands)
    handed_out = []
    while (sub := next_subtask(stub, task_id)) is not None:
        handed_out.append(sub)
    assert not has_pending(stub, task_id)
    assert len(handed_out) == bands
    for subtask_id, params, resources in handed_out:
        assert params["subtask_id"] == subtask_id
        provider = run_provider(
            tmp_path, work, task_id, subtask_id, params, resources, credentials_for
        )
        assert provider.wait() == 0, provider.log()  # exits by itself after one request
        reply = verify(stub, task_id, subtask_id)
        assert reply.result == pb.VerifyReply.SUCCESS, reply.reason
    outputs = sorted((work / task_id / "task_outputs").iterdir())
    assert len(outputs) == 1  # task_outputs holds the result and nothing else
    return outputs[0], created


def test_lifecycle_to_the_final_image(tmp_path, requestor):
    final, created = run_whole_task(tmp_path, requestor, SCENE, bands=3)
    assert final.name == "result.png"
    assert created.env_id == "docker_cpu"
    assert json.loads(created.prerequisites_json) == {
        "image": "fractal-app-cpu",
        "tag": json.loads(created.prerequisites_json)["tag"],
    }
    assert created.inf_requirements.min_memory_mib > 0
    expected = render.render_band(parse_scene(SCENE), 0, 48)
    np.testing.assert_array_equal(read_result(final, SCENE), expected)


@pytest.mark.parametrize(
    ("extra", "suffix"),
    [({"output": "counts"}, ".tiff"), ({"bit_depth": 16, "palette": "fire"}, ".png")],
)
def test_lifecycle_counts_and_16_bit(tmp_path, requestor, extra, suffix):
    scene = {**SCENE, "resolution": [40, 10], **extra}
    final, _ = run_whole_task(tmp_path, requestor, scene, bands=2)
    assert final.suffix == suffix
    expected = render.render_band(parse_scene(scene), 0, 10)
    np.testing.assert_array_equal(read_result(final, scene), expected)


def test_auto_colour_scale_is_resolved_once_and_shipped_in_the_scene(tmp_path, requestor):
    """The requestor resolves the auto scale's knots at CreateTask and writes them into the
    scene every provider reads, so providers and the spot checks colour alike."""
    from fractal_app import color_scale
    from fractal_app.taskdir import RequestorTaskDir

    scene = {**SCENE, "center": [-0.74364, 0.13182], "width": 0.004, "max_iter": 3000,
             "color_scale": "auto"}
    final, _ = run_whole_task(tmp_path, requestor, scene, bands=2)
    task_id = final.parent.parent.name
    shipped = json.loads(RequestorTaskDir.of(requestor.work_dir, task_id).scene_resource
                         .read_text())
    resolved = color_scale.resolve(parse_scene(scene))
    assert shipped["color_scale"] == "auto"
    assert [tuple(knot) for knot in shipped["color_knots"]] == list(resolved.color_knots)
    np.testing.assert_array_equal(read_result(final, scene), render.render_band(resolved, 0, 48))


def test_provider_refuses_an_auto_scene_without_its_knots(tmp_path):
    """Knots a provider computed for itself could differ from the verifier's."""
    work = tmp_path / "provider"
    inputs = work / "subtask_inputs"
    inputs.mkdir(parents=True)
    (inputs / "scene.json").write_text(json.dumps({**SCENE, "color_scale": "auto"}))
    provider = start_server("provider", work)
    params = {"subtask_id": "s1", "band_index": 0, "row_start": 0, "row_stop": 4}
    error = rpc_error(
        provider.provider().Compute,
        pb.ComputeRequest(task_id="t", subtask_id="s1", subtask_params_json=json.dumps(params)),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "without color_knots" in error.details()
    assert provider.wait() == 0


def test_lifecycle_over_mutual_tls(tmp_path):
    requestor_work = tmp_path / "requestor"
    certs = write_certs(requestor_work)
    credentials = tls_credentials(certs)
    requestor = start_server("requestor", requestor_work, credentials)
    try:
        # A client without a certificate is refused.
        anonymous = grpc.secure_channel(
            requestor.address, grpc.ssl_channel_credentials(root_certificates=certs.server_cert)
        )
        error = rpc_error(
            pb_grpc_stub(anonymous).HasPendingSubtasks,
            pb.HasPendingSubtasksRequest(task_id="x"),
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        anonymous.close()

        def provider_tls(provider_work):
            return tls_credentials(write_certs(provider_work))

        final, _ = run_whole_task(tmp_path, requestor, SCENE, bands=2, credentials_for=provider_tls)
        expected = render.render_band(parse_scene(SCENE), 0, 48)
        np.testing.assert_array_equal(read_result(final, SCENE), expected)
    finally:
        requestor.stop()


def pb_grpc_stub(channel):
    from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc

    return pb_grpc.RequestorAppStub(channel)


def test_provider_benchmark_then_exit(tmp_path):
    provider = start_server("provider", tmp_path / "provider")
    reply = provider.provider().RunBenchmark(pb.RunBenchmarkRequest(), timeout=120)
    assert reply.score > 0
    assert provider.wait() == 0


def test_provider_refuses_bad_compute_and_still_exits(tmp_path):
    provider = start_server("provider", tmp_path / "provider")
    error = rpc_error(
        provider.provider().Compute,
        pb.ComputeRequest(task_id="t", subtask_id="../x", subtask_params_json="{}"),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "subtask_id" in error.details()
    assert provider.wait() == 0
    assert not (tmp_path / "x").exists()


def test_provider_without_resources_says_what_is_missing(tmp_path):
    provider = start_server("provider", tmp_path / "provider")
    params = {"subtask_id": "s1", "band_index": 0, "row_start": 0, "row_stop": 4}
    error = rpc_error(
        provider.provider().Compute,
        pb.ComputeRequest(task_id="t", subtask_id="s1", subtask_params_json=json.dumps(params)),
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "scene.json" in error.details()
    assert provider.wait() == 0


def test_provider_shutdown_rpc_stops_it(tmp_path):
    provider = start_server("provider", tmp_path / "provider")
    provider.provider().Shutdown(pb.ShutdownRequest(), timeout=30)
    assert provider.wait() == 0


def test_requestor_shutdown_rpc_stops_it(tmp_path):
    requestor = start_server("requestor", tmp_path / "requestor")
    requestor.requestor().Shutdown(pb.ShutdownRequest(), timeout=30)
    assert requestor.wait() == 0


@pytest.mark.parametrize(
    "scene",
    [
        {"fractal": "mandelbrot", "resolution": [40, 30], "max_iter": 50},
        {"fractal": "julia", "resolution": [24, 30], "max_iter": 50, "supersample": 2,
         "bit_depth": 16},
        {"fractal": "mandelbrot", "resolution": [40, 30], "max_iter": 50, "output": "counts"},
    ],
)
def test_provider_renders_a_band_in_blocks_with_the_same_values(scene, monkeypatch):
    from fractal_app import provider

    parsed = parse_scene(scene)
    monkeypatch.setattr(provider, "RENDER_BLOCK_SAMPLES", 7 * parsed.width_px)
    blocks = list(provider.band_blocks(parsed, 3, 29, "cpu"))
    block_rows = max(1, 7 // parsed.supersample**2)  # 7 pixels' worth of samples a row
    assert [len(block) for block in blocks[:-1]] == [block_rows] * (len(blocks) - 1)
    assert 1 <= len(blocks[-1]) <= block_rows
    whole = render.render_band(parsed, 3, 29)
    assert {block.dtype for block in blocks} == {whole.dtype}
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


@pytest.mark.parametrize("role", ["provider", "requestor"])
def test_preload_resumes_the_collector_the_entrypoint_paused(role):
    """``python -m fractal_app`` starts with the cyclic GC off (start-up makes only long-lived
    objects); each service's preload must freeze them and turn collection back on."""
    import gc

    from fractal_app import startup

    preload = getattr(startup, f"preload_{role}")
    gc.disable()
    try:
        preload(resume_gc=True)
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()

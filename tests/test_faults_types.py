"""Strict types over real gRPC, as the README promises: JSON booleans only for boolean fields,
integers only for integer fields, and invalid UTF-8 in a string field is INVALID_ARGUMENT
naming the field (not UNKNOWN from grpc's deserializer)."""

import json
import struct
import uuid

import grpc
import pytest
from grpc_helpers import RPC_TIMEOUT_S, make_task_folder, rpc_error, start_server

from fractal_app.protocol import golem_task_api_pb2 as pb

BASE = {"fractal": "mandelbrot", "resolution": [8, 4], "max_iter": 20}


def _create(stub, work, params: dict):
    task_id = f"t-{uuid.uuid4().hex[:12]}"
    make_task_folder(work, task_id)
    return rpc_error(
        stub.CreateTask,
        pb.CreateTaskRequest(
            task_id=task_id, max_subtasks_count=1, task_params_json=json.dumps(params)
        ),
    )


@pytest.mark.parametrize("value", ["no", "t", 0, 1, "true", None])
def test_boolean_fields_take_json_booleans_only(shared_requestor, value):
    stub, work = shared_requestor.requestor(), shared_requestor.work_dir
    error = _create(stub, work, {**BASE, "smooth": value})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'smooth'" in error.details() and "boolean" in error.details()


@pytest.mark.parametrize(
    "field, value",
    [
        ("bit_depth", 16.0),
        ("bit_depth", True),
        ("bit_depth", "16"),
        ("max_iter", 20.0),
        ("supersample", 2.0),
        ("resolution", [8.0, 4]),
        ("interior_color", [0, 0, 1.0]),
    ],
)
def test_integer_fields_take_integers_only(shared_requestor, field, value):
    stub, work = shared_requestor.requestor(), shared_requestor.work_dir
    error = _create(stub, work, {**BASE, field: value})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"'{field}" in error.details()


def test_json_booleans_and_integers_are_accepted(shared_requestor):
    stub, work = shared_requestor.requestor(), shared_requestor.work_dir
    task_id = f"t-{uuid.uuid4().hex[:12]}"
    make_task_folder(work, task_id)
    stub.CreateTask(
        pb.CreateTaskRequest(
            task_id=task_id,
            max_subtasks_count=1,
            task_params_json=json.dumps({**BASE, "smooth": False, "bit_depth": 16}),
        ),
        timeout=RPC_TIMEOUT_S,
    )


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (payload under 128 bytes)."""
    assert len(payload) < 128
    return struct.pack("BB", number << 3 | 2, len(payload)) + payload


def _raw_call(channel, method: str, request: bytes):
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(request, timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as error:
        return error
    raise AssertionError("expected an error")


@pytest.mark.parametrize(
    "number, name",
    [(1, "task_id"), (3, "task_params_json")],
)
def test_invalid_utf8_in_a_string_field_is_invalid_argument(shared_requestor, number, name):
    fields = {1: b"t-utf8", 3: json.dumps(BASE).encode()}
    fields[number] = b"bad \xff\xfe utf-8"
    request = b"".join(_field(n, v) for n, v in sorted(fields.items()))
    error = _raw_call(
        shared_requestor.channel(), "/golem_task_api.RequestorApp/CreateTask", request
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"'{name}'" in error.details() and "UTF-8" in error.details()
    # ... and the server carries on.
    assert shared_requestor.process.poll() is None


def test_invalid_utf8_in_a_repeated_string_field(shared_requestor):
    request = _field(1, b"t-x") + _field(2, b"ok") + _field(2, b"\xc3")
    error = _raw_call(
        shared_requestor.channel(), "/golem_task_api.RequestorApp/DiscardSubtasks", request
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'subtask_ids'" in error.details()


def test_provider_refuses_invalid_utf8_by_name(tmp_path):
    provider = start_server("provider", tmp_path / "provider")
    try:
        request = _field(1, b"task") + _field(2, b"sub\xff") + _field(3, b"{}")
        error = _raw_call(provider.channel(), "/golem_task_api.ProviderApp/Compute", request)
    finally:
        provider.stop()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'subtask_id'" in error.details()

"""The generated protocol modules against the wire contract in shared/PROTOCOL.md.

Two checks: the committed modules are what the .proto generates today (not stale), and every
service, rpc, message, field (name, number, type, repeated), the nested enum and the oneof in
the generated descriptors match the tables of PROTOCOL.md, so a Golem node and this app agree
on every byte. The tables are read from shared/PROTOCOL.md beside the checkout; a copy is
embedded here for checkouts without shared/, and kept equal to the file when both exist.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor

from fractal_app.protocol import constants
from fractal_app.protocol import golem_task_api_pb2 as pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_MD = Path(__file__).parents[2] / "shared" / "PROTOCOL.md"
PACKAGE = "golem_task_api"

# The three tables of PROTOCOL.md, verbatim (section heading -> table lines).
EMBEDDED_TABLES = {
    "Services": """
| service | rpc | request | reply |
|---|---|---|---|
| `RequestorApp` | `CreateTask` | `CreateTaskRequest` | `CreateTaskReply` |
| `RequestorApp` | `NextSubtask` | `NextSubtaskRequest` | `NextSubtaskReply` |
| `RequestorApp` | `Verify` | `VerifyRequest` | `VerifyReply` |
| `RequestorApp` | `DiscardSubtasks` | `DiscardSubtasksRequest` | `DiscardSubtasksReply` |
| `RequestorApp` | `RunBenchmark` | `RunBenchmarkRequest` | `RunBenchmarkReply` |
| `RequestorApp` | `HasPendingSubtasks` | `HasPendingSubtasksRequest` | `HasPendingSubtasksReply` |
| `RequestorApp` | `AbortTask` | `AbortTaskRequest` | `AbortTaskReply` |
| `RequestorApp` | `AbortSubtask` | `AbortSubtaskRequest` | `AbortSubtaskReply` |
| `RequestorApp` | `Shutdown` | `ShutdownRequest` | `ShutdownReply` |
| `ProviderApp` | `Compute` | `ComputeRequest` | `ComputeReply` |
| `ProviderApp` | `RunBenchmark` | `RunBenchmarkRequest` | `RunBenchmarkReply` |
| `ProviderApp` | `Shutdown` | `ShutdownRequest` | `ShutdownReply` |
""",
    "Messages": """
| message | fields |
|---|---|
| `Infrastructure` | `min_memory_mib` = 1, float |
| `CreateTaskRequest` | `task_id` = 1, string; `max_subtasks_count` = 2, int32; `task_params_json` = 3, string |
| `CreateTaskReply` | `env_id` = 1, string; `prerequisites_json` = 2, string; `inf_requirements` = 3, Infrastructure |
| `NextSubtaskRequest` | `task_id` = 1, string; `subtask_id` = 2, string; `opaque_node_id` = 3, string |
| `NextSubtaskReply` | a oneof named `subtask_oneof` holding `subtask` = 1, SubtaskReply (absent = the app refuses to give this node a subtask) |
| `SubtaskReply` | `subtask_params_json` = 1, string; `resources` = 2, repeated string |
| `ComputeRequest` | `task_id` = 1, string; `subtask_id` = 2, string; `subtask_params_json` = 3, string |
| `ComputeReply` | `output_filepath` = 1, string |
| `VerifyRequest` | `task_id` = 1, string; `subtask_id` = 2, string |
| `VerifyReply` | `result` = 1, enum `VerifyResult` nested in VerifyReply; `reason` = 2, string |
| `VerifyReply.VerifyResult` | `SUCCESS` = 0, `FAILURE` = 1, `AWAITING_DATA` = 2, `INCONCLUSIVE` = 3 |
| `DiscardSubtasksRequest` | `task_id` = 1, string; `subtask_ids` = 2, repeated string |
| `DiscardSubtasksReply` | `discarded_subtask_ids` = 1, repeated string |
| `RunBenchmarkRequest` | (empty) |
| `RunBenchmarkReply` | `score` = 1, float |
| `HasPendingSubtasksRequest` | `task_id` = 1, string |
| `HasPendingSubtasksReply` | `has_pending_subtasks` = 1, bool |
| `AbortTaskRequest` | `task_id` = 1, string |
| `AbortTaskReply` | (empty) |
| `AbortSubtaskRequest` | `task_id` = 1, string; `subtask_id` = 2, string |
| `AbortSubtaskReply` | (empty) |
| `ShutdownRequest` / `ShutdownReply` | (empty) |
| `DockerPrerequisites` (envs) | `image` = 1, string; `tag` = 2, string |
""",  # noqa: E501 - verbatim table lines
    "Constants": """
| name | value |
|---|---|
| TASK_INPUTS_DIR | `task_inputs` |
| SUBTASK_INPUTS_DIR | `subtask_inputs` |
| TASK_OUTPUTS_DIR | `task_outputs` |
| SUBTASK_OUTPUTS_DIR | `subtask_outputs` |
| WORK_DIR (inside the container) | `golem/work`, i.e. `/golem/work` |
| DOCKER_CPU_ENV_ID | `docker_cpu` |
| DOCKER_GPU_ENV_ID | `docker_gpu` |
""",
}


SCALAR_TYPES = {
    "string": FieldDescriptor.TYPE_STRING,
    "int32": FieldDescriptor.TYPE_INT32,
    "float": FieldDescriptor.TYPE_FLOAT,
    "bool": FieldDescriptor.TYPE_BOOL,
}


@dataclass(frozen=True)
class FieldSpec:
    """One field as PROTOCOL.md states it."""

    name: str
    number: int
    type: int  # a FieldDescriptor.TYPE_* value
    type_name: str | None  # full name of the message or enum type, for those kinds
    repeated: bool
    oneof: str | None


@dataclass(frozen=True)
class Contract:
    """Everything the tables state: rpcs, messages with fields, enums."""

    rpcs: dict[tuple[str, str], tuple[str, str]]  # (service, rpc) -> (request, reply)
    messages: dict[str, list[FieldSpec]]
    enums: dict[str, dict[str, int]]  # "VerifyReply.VerifyResult" -> {value name: number}
    constants: dict[str, str]


def table_lines(markdown: str, heading: str) -> str:
    """The table lines of the section whose ``## `` heading starts with ``heading``."""
    sections = re.split(r"^## ", markdown, flags=re.MULTILINE)
    matching = [s for s in sections if s.startswith(heading)]
    assert len(matching) == 1, f"PROTOCOL.md has no single section '## {heading}'"
    lines = [line for line in matching[0].splitlines() if line.startswith("|")]
    assert lines, f"section '## {heading}' of PROTOCOL.md has no table"
    return "\n".join(lines)


def table_rows(table: str) -> list[list[str]]:
    """Cells of each data row (the header row and the |---| rule skipped)."""
    rows = []
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows.append(cells)
    return rows


def ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def parse_field_type(text: str, message_names: set[str]) -> tuple[int, str | None, bool]:
    """'repeated string', 'Infrastructure', 'enum `X` nested in Y' -> (type, type name, repeated).

    Anything else fails the test: a table change must not slip past unchecked.
    """
    text = re.sub(r"\(.*\)$", "", text).strip()  # "(absent = ...)" explains, it is no type
    repeated = text.startswith("repeated ")
    text = text.removeprefix("repeated ").strip()
    if text in SCALAR_TYPES:
        return SCALAR_TYPES[text], None, repeated
    enum = re.fullmatch(r"enum `(\w+)` nested in (\w+)", text)
    if enum:
        return FieldDescriptor.TYPE_ENUM, f"{PACKAGE}.{enum[2]}.{enum[1]}", repeated
    if text in message_names:
        return FieldDescriptor.TYPE_MESSAGE, f"{PACKAGE}.{text}", repeated
    raise AssertionError(f"PROTOCOL.md names a field type this test cannot read: {text!r}")


def parse_contract(tables: dict[str, str]) -> Contract:
    rpcs = {}
    for service, rpc, request, reply in table_rows(tables["Services"]):
        (service,), (rpc,), (request,), (reply,) = map(ticked, (service, rpc, request, reply))
        rpcs[(service, rpc)] = (request, reply)

    message_rows = []
    for names_cell, fields_cell in table_rows(tables["Messages"]):
        for name in ticked(names_cell):
            message_rows.append((name, fields_cell))
    message_names = {name for name, _ in message_rows if "." not in name}

    messages: dict[str, list[FieldSpec]] = {}
    enums: dict[str, dict[str, int]] = {}
    for name, fields_cell in message_rows:
        if "." in name:  # a nested enum: `VALUE` = n, ...
            values = re.findall(r"`(\w+)` = (\d+)", fields_cell)
            assert values, f"no enum values read for {name}"
            enums[name] = {value: int(number) for value, number in values}
            continue
        oneof = None
        oneof_match = re.match(r"a oneof named `(\w+)` holding (.*)", fields_cell)
        if oneof_match:
            oneof, fields_cell = oneof_match[1], oneof_match[2]
        fields = []
        if fields_cell != "(empty)":
            for spec in fields_cell.split(";"):
                field = re.fullmatch(r"\s*`(\w+)` = (\d+), (.+)", spec)
                assert field, f"cannot read field spec {spec!r} of {name}"
                kind, type_name, repeated = parse_field_type(field[3], message_names)
                fields.append(FieldSpec(field[1], int(field[2]), kind, type_name, repeated, oneof))
        messages[name] = fields

    constants_table = {}
    for name_cell, value_cell in table_rows(tables["Constants"]):
        constants_table[name_cell.split()[0]] = ticked(value_cell)[0]
    return Contract(rpcs, messages, enums, constants_table)


def contract_tables() -> dict[str, str]:
    if not PROTOCOL_MD.is_file():
        return {heading: table.strip() for heading, table in EMBEDDED_TABLES.items()}
    markdown = PROTOCOL_MD.read_text()
    return {heading: table_lines(markdown, heading) for heading in EMBEDDED_TABLES}


CONTRACT = parse_contract(contract_tables())


# --- the committed modules are fresh ----------------------------------------------------------


def test_generated_modules_are_not_stale() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_protocol.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr


def test_grpc_module_imports_its_messages_through_the_package(tmp_path: Path) -> None:
    """Run from an unrelated folder: a bare `import golem_task_api_pb2` would fail there."""
    code = (
        "import sys; from fractal_app.protocol import golem_task_api_pb2_grpc as g;"
        "assert 'golem_task_api_pb2' not in sys.modules, 'bare import of golem_task_api_pb2';"
        "print(g.RequestorAppStub.__name__)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "RequestorAppStub"


# --- the table itself -------------------------------------------------------------------------


def test_embedded_tables_match_protocol_md() -> None:
    if not PROTOCOL_MD.is_file():
        pytest.skip(
            "nothing to compare: the wire contract's master copy (PROTOCOL.md, kept outside "
            "this repository by its maintainers) is not here; this file's embedded copy of "
            "its tables is what the other protocol tests check against"
        )
    markdown = PROTOCOL_MD.read_text()
    for heading, embedded in EMBEDDED_TABLES.items():
        assert table_lines(markdown, heading) == embedded.strip(), (
            f"PROTOCOL.md's {heading} table changed: update EMBEDDED_TABLES and the .proto"
        )


def test_table_was_read_completely() -> None:
    """Guards the parser: a regex that silently read nothing would pass every check below."""
    assert len(CONTRACT.rpcs) == 12
    assert len(CONTRACT.messages) == 23
    assert sum(len(fields) for fields in CONTRACT.messages.values()) == 32
    assert CONTRACT.enums == {
        "VerifyReply.VerifyResult": {
            "SUCCESS": 0,
            "FAILURE": 1,
            "AWAITING_DATA": 2,
            "INCONCLUSIVE": 3,
        }
    }
    assert len(CONTRACT.constants) == 7


# --- descriptors against the table ------------------------------------------------------------


def test_file_is_proto3_in_package_golem_task_api() -> None:
    file_proto = descriptor_pb2.FileDescriptorProto.FromString(pb2.DESCRIPTOR.serialized_pb)
    assert file_proto.syntax == "proto3"
    assert pb2.DESCRIPTOR.package == PACKAGE


def test_services_and_rpcs_match() -> None:
    generated = {}
    for service in pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert not method.client_streaming and not method.server_streaming, (
                f"{service.name}.{method.name} must be unary"
            )
            generated[(service.name, method.name)] = (
                method.input_type.full_name,
                method.output_type.full_name,
            )
    expected = {
        key: (f"{PACKAGE}.{request}", f"{PACKAGE}.{reply}")
        for key, (request, reply) in CONTRACT.rpcs.items()
    }
    assert generated == expected


def test_message_set_matches() -> None:
    assert set(pb2.DESCRIPTOR.message_types_by_name) == set(CONTRACT.messages)


@pytest.mark.parametrize("message_name", sorted(CONTRACT.messages))
def test_message_fields_match(message_name: str) -> None:
    descriptor = pb2.DESCRIPTOR.message_types_by_name[message_name]
    expected = {spec.name: spec for spec in CONTRACT.messages[message_name]}
    assert set(descriptor.fields_by_name) == set(expected)
    for name, spec in expected.items():
        field = descriptor.fields_by_name[name]
        where = f"{message_name}.{name}"
        assert field.number == spec.number, where
        assert field.type == spec.type, where
        assert field.is_repeated == spec.repeated, where
        if spec.type == FieldDescriptor.TYPE_MESSAGE:
            assert field.message_type.full_name == spec.type_name, where
        if spec.type == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type.full_name == spec.type_name, where
        oneof = field.containing_oneof
        assert (oneof.name if oneof else None) == spec.oneof, where
        if spec.oneof is None and spec.type != FieldDescriptor.TYPE_MESSAGE:
            # proto3 implicit presence: an `optional` here would add a synthetic oneof.
            assert not field.has_presence, f"{where} must not be `optional`"


def test_oneofs_match() -> None:
    for name, fields in CONTRACT.messages.items():
        expected = {spec.oneof for spec in fields if spec.oneof}
        descriptor = pb2.DESCRIPTOR.message_types_by_name[name]
        assert set(descriptor.oneofs_by_name) == expected, name
    assert set(pb2.DESCRIPTOR.message_types_by_name["NextSubtaskReply"].oneofs_by_name) == {
        "subtask_oneof"
    }


def test_enums_match() -> None:
    generated = {}
    for message in pb2.DESCRIPTOR.message_types_by_name.values():
        for enum in message.enum_types:
            generated[f"{message.name}.{enum.name}"] = {v.name: v.number for v in enum.values}
    assert generated == CONTRACT.enums
    assert not pb2.DESCRIPTOR.enum_types_by_name, "the contract has no top-level enums"


def test_known_wire_bytes() -> None:
    """Spot check of the encoding itself, computed by hand from the field numbers."""
    request = pb2.CreateTaskRequest(task_id="t", max_subtasks_count=3, task_params_json="{}")
    assert request.SerializeToString() == b"\n\x01t\x10\x03\x1a\x02{}"
    reply = pb2.NextSubtaskReply(subtask=pb2.SubtaskReply(resources=["a"]))
    assert reply.SerializeToString() == b"\n\x03\x12\x01a"
    assert pb2.NextSubtaskReply().SerializeToString() == b""
    verify = pb2.VerifyReply(result=pb2.VerifyReply.INCONCLUSIVE, reason="x")
    assert verify.SerializeToString() == b"\x08\x03\x12\x01x"


# --- constants --------------------------------------------------------------------------------


def test_constants_match() -> None:
    for name, value in CONTRACT.constants.items():
        assert getattr(constants, name) == value, name


def test_tls_file_names() -> None:
    assert constants.TLS_FILES == (
        "task_api_server_key.pem",
        "task_api_server_cert.pem",
        "task_api_client_cert.pem",
    )


def test_the_skip_message_makes_sense_on_a_fresh_clone() -> None:
    """A skip reason names no path outside the repository (a fresh clone has none of them)."""
    source = Path(__file__).read_text()
    for reason in re.findall(r"pytest\.skip\(\s*((?:\"[^\"]*\"\s*)+)\)", source):
        assert "../" not in reason and "{PROTOCOL_MD}" not in reason

"""Requests that do not decode get INVALID_ARGUMENT naming the field, not UNKNOWN.

grpc decodes a request before any servicer code runs; a proto3 ``string`` field holding
invalid UTF-8 makes protobuf refuse the whole message, and grpc answers UNKNOWN with a
message about its own deserializer. :func:`add_servicer` registers a servicer exactly as the
generated ``add_*Servicer_to_server`` does, but with a decoder that hands such a request to
the method as :class:`Undecodable`, which is answered INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class Undecodable:
    """A request grpc could not decode; ``message`` says which field and why."""

    message: str


def add_servicer(
    servicer: Any, server: grpc.aio.Server, add_generated: Callable[[Any, Any], None]
) -> None:
    """``add_generated(servicer, server)``, with requests that fail to decode refused as
    INVALID_ARGUMENT by name. The generated function stays the one list of the methods."""
    recorder = _Recorder()
    add_generated(servicer, recorder)
    if not recorder.handlers:  # a generator that no longer registers this way: say so
        raise RuntimeError(f"{add_generated.__name__} registered no method handlers")
    handlers = {
        name: handler._replace(
            request_deserializer=_lenient(handler.request_deserializer),
            unary_unary=_refusing_undecodable(handler.unary_unary),
        )
        for name, handler in recorder.handlers.items()
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(recorder.service, handlers),)
    )
    server.add_registered_method_handlers(recorder.service, handlers)


class _Recorder:
    """Stands in for the server to catch what the generated function registers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, handlers


def _lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    descriptor: Descriptor = deserialize.__self__.DESCRIPTOR  # the message class's FromString

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as error:
            return Undecodable(_describe(data, descriptor, error))

    return decode


def _refusing_undecodable(behaviour):
    async def guarded(request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behaviour(request, context)

    return guarded


def _describe(data: bytes, descriptor: Descriptor, error: DecodeError) -> str:
    """Name the first string field that is not UTF-8, reading the wire format's top level."""
    name = descriptor.name
    try:
        for number, payload in _length_delimited_fields(data):
            field = descriptor.fields_by_number.get(number)
            if field is not None and field.type == FieldDescriptor.TYPE_STRING:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    return (
                        f"{name} field {field.name!r} is not valid UTF-8; protobuf strings"
                        " must be UTF-8 text"
                    )
    except ValueError:
        pass
    return f"the request is not a valid {name} ({error}); send a well-formed message"


def _length_delimited_fields(data: bytes):
    """(field number, payload) of each length-delimited field; ValueError if malformed."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ValueError("truncated varint")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(data):
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            varint()
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length = varint()
            if pos + length > len(data):
                raise ValueError("truncated field")
            yield number, data[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"wire type {wire_type}")

"""The public front: its frame walker, its listening socket, and how a connection ends."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import StreamEnded
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

from fractal_app.front import _GOAWAY, _PING, _Frames, listening_socket
from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc
from fractal_app.server import create_server, rpc_errors, run_until_stopped


def frame_bytes() -> tuple[list[bytes], list[bytes]]:
    """A server's stream as grpc core stops mid-reply: (every frame, the GOAWAY frames)."""
    settings = SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 16384}).serialize()
    headers = HeadersFrame(1, data=b"\x88", flags=["END_HEADERS"]).serialize()
    first_goaway = GoAwayFrame(0, last_stream_id=2**31 - 1).serialize()
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    data = DataFrame(1, data=bytes(range(256)) * 64).serialize()  # 16 KiB: split across reads
    trailers = HeadersFrame(1, data=b"\x89", flags=["END_HEADERS", "END_STREAM"]).serialize()
    final_goaway = GoAwayFrame(0, last_stream_id=1, additional_data=b"bye").serialize()
    frames = [settings, headers, first_goaway, ping, data, trailers, final_goaway]
    return frames, [first_goaway, final_goaway]


def fed_in_random_reads(frames: _Frames, stream: bytes, seed: int) -> tuple[bytes, list[bytes]]:
    rng = random.Random(seed)
    passed, seen, position = b"", [], 0
    while position < len(stream):
        size = rng.choice([1, 2, 8, 9, 10, 24, 100, 5000, 20000])
        forward, watched = frames.feed(stream[position : position + size])
        passed, seen, position = passed + forward, seen + watched, position + size
    return passed, seen


@pytest.mark.parametrize("seed", range(20))
def test_server_frames_pass_in_order_without_goaway_however_the_reads_fall(seed: int) -> None:
    frames, goaways = frame_bytes()
    splitter = _Frames(watch=frozenset({_GOAWAY}), hold=frozenset({_GOAWAY}))
    passed, seen = fed_in_random_reads(splitter, b"".join(frames), seed)
    assert passed == b"".join(frame for frame in frames if frame not in goaways)
    assert seen == goaways  # the relay sends the latest one, last


@pytest.mark.parametrize("seed", range(10))
def test_client_pings_are_seen_and_passed_after_the_preface(seed: int) -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    ack = PingFrame(0, opaque_data=b"front-ok", flags=["ACK"]).serialize()
    frames, _ = frame_bytes()
    stream = preface + frames[0] + ack + b"".join(frames[1:])
    watcher = _Frames(watch=frozenset({_PING}), preface=len(preface))
    passed, seen = fed_in_random_reads(watcher, stream, seed)
    assert passed == stream
    assert seen == [ack, PingFrame(0, opaque_data=b"12345678").serialize()]


def test_a_huge_frame_of_a_watched_type_is_passed_not_buffered() -> None:
    header = (1 << 20).to_bytes(3, "big") + bytes([_PING, 0]) + bytes(4)
    watcher = _Frames(watch=frozenset({_PING}))
    passed, seen = watcher.feed(header + b"x" * 100)
    assert passed == header + b"x" * 100 and seen == []


def test_listening_socket_on_every_interface_takes_ipv4_too() -> None:
    sock = listening_socket("[::]", 0)
    try:
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        sock.close()


def test_listening_socket_refuses_a_port_in_use() -> None:
    first = listening_socket("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            listening_socket("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


# --- the end of a connection, as an h2 client sees it ------------------------------------------


class ShutdownOnly(pb_grpc.ProviderAppServicer):
    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop

    @rpc_errors
    async def Shutdown(self, request, context):  # noqa: N802 - gRPC method names
        self.stop.set()  # the server stops while this reply is on its way, as a provider does
        return pb.ShutdownReply()


async def last_words(tmp_path: Path, answer_pings: bool) -> tuple[list[str], float]:
    """Send Shutdown from a bare h2 client (the library under grpclib); what it then sees
    until the connection ends, and the seconds from the reply's end to the end."""
    stop = asyncio.Event()
    server, port = await create_server(
        0,
        tmp_path,
        lambda s: pb_grpc.add_ProviderAppServicer_to_server(ShutdownOnly(stop), s),
        "127.0.0.1",
    )
    runner = asyncio.create_task(run_until_stopped(server, stop, grace=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    h2 = H2Connection(H2Configuration(client_side=True))
    h2.initiate_connection()
    h2.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "app"),
                        (":path", "/golem_task_api.ProviderApp/Shutdown"),
                        ("content-type", "application/grpc"), ("te", "trailers")])  # fmt: skip
    h2.send_data(1, b"\0\0\0\0\0", end_stream=True)  # an empty ShutdownRequest
    writer.write(h2.data_to_send())
    seen: list[str] = []
    reply_ended = 0.0
    while True:
        data = await asyncio.wait_for(reader.read(65536), 10)
        if not data:
            seen.append("EOF")
            break
        for event in h2.receive_data(data):  # ProtocolError if a frame followed a GOAWAY
            if isinstance(event, StreamEnded):
                reply_ended = time.monotonic()
            seen.append(type(event).__name__)
        if answer_pings:
            writer.write(h2.data_to_send())  # h2 queued an ACK for each PING
    gone = time.monotonic() - reply_ended
    writer.close()
    await runner
    return seen[seen.index("StreamEnded") :], gone


def test_connection_ends_with_goaway_only_after_the_client_answered_a_ping(tmp_path) -> None:
    seen, _ = asyncio.run(last_words(tmp_path, answer_pings=True))
    # After the reply: the front's PING (answered), then the server's GOAWAY, then the end.
    assert seen[-3:] == ["PingReceived", "ConnectionTerminated", "EOF"], seen
    assert seen.count("ConnectionTerminated") == 1


def test_a_client_that_never_answers_is_closed_on_after_a_second(tmp_path) -> None:
    seen, gone = asyncio.run(last_words(tmp_path, answer_pings=False))
    assert seen[-2:] == ["ConnectionTerminated", "EOF"], seen
    assert 1.0 <= gone < 10.0

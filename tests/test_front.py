"""The public front's own parts: the server-frame splitter and the listening socket."""

from __future__ import annotations

import random
import socket

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

from fractal_app.front import _ServerFrames, listening_socket


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


@pytest.mark.parametrize("seed", range(20))
def test_every_frame_but_goaway_passes_in_order_however_the_reads_fall(seed: int) -> None:
    frames, goaways = frame_bytes()
    stream = b"".join(frames)
    rng = random.Random(seed)
    splitter, passed, position = _ServerFrames(), b"", 0
    while position < len(stream):
        size = rng.choice([1, 2, 8, 9, 10, 100, 5000, 20000])
        passed += splitter.feed(stream[position : position + size])
        position += size
    assert passed == b"".join(frame for frame in frames if frame not in goaways)
    assert splitter.goaway == goaways[-1]  # the latest one is what the client gets, last


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

"""The services' public port: an asyncio front that owns every client connection and relays
its HTTP/2 bytes to the ``grpc.aio`` server, which listens only on a private unix socket.

Two things a Golem node needs that grpc core's own listener does not give:

- **TLS without ALPN.** The node's client (grpclib, with task-api's plain ``ssl.SSLContext``)
  offers no ALPN, and grpc core's TLS server drops such clients after the handshake ("missing
  selected ALPN property"). The front terminates TLS with Python's ``ssl``: TLS 1.2 or later,
  a client certificate required and pinned to ``task_api_client_cert.pem`` byte for byte, and
  ALPN ``h2`` selected when a client (grpcio) asks for it.
- **A reply is read before the connection ends.** When grpc core stops it sends GOAWAY and a
  PING, while replies may still be on their way. grpclib ends every open stream the moment it
  processes a GOAWAY or a closed connection, replies it has already received but not yet
  handed to the caller included ("Connection lost"), and the h2 library behind it rejects
  anything after a GOAWAY. So the front forwards every frame of the server's but GOAWAY; when
  the server closes the connection, the front sends a PING of its own behind the last reply
  and only once the client has acknowledged it (its h2 answers while it processes that read,
  so the caller has been handed the reply) sends the server's GOAWAY and closes the
  connection. A client that does not answer within a second is closed on anyway.

Only frame headers are read (9 bytes, RFC 9113 section 4.1); payloads pass untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from pathlib import Path

logger = logging.getLogger(__name__)

_FRAME_HEADER_SIZE = 9
_CLIENT_PREFACE_SIZE = 24  # "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_PING = 0x6
_GOAWAY = 0x7
_ACK = 0x1
# How long a client gets to acknowledge the front's last PING before its connection is closed.
_PING_ACK_TIMEOUT_S = 1.0
# A watched (control) frame longer than this is not a PING or GOAWAY worth holding: pass it on.
_MAX_WATCHED_FRAME = 16384
_TLS_HANDSHAKE_TIMEOUT_S = 10.0


def private_backend_name() -> str:
    """A fresh abstract unix socket name for the gRPC server behind the front.

    Abstract sockets live in the network namespace (a container's own), need no file (the
    image's file system is read-only, and nothing is left behind when the process is killed)
    and vanish with the process.
    """
    return f"fractal-app-{secrets.token_hex(12)}"


def server_tls_context(key_file: Path, cert_file: Path, client_cert_pem: bytes) -> ssl.SSLContext:
    """Mutual TLS as the node sets it up: our key and certificate, the client's certificate as
    the only trusted one. Raises ``ssl.SSLError``/``OSError`` for unusable files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=client_cert_pem.decode("ascii", errors="replace"))
    # grpcio clients refuse a server that selects no protocol; clients without ALPN get none.
    context.set_alpn_protocols(["h2"])
    return context


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` ("[::]" or "::": every interface, IPv4 too).

    Raises OSError when the address is taken or unknown.
    """
    host = host.strip("[]")
    if host in ("", "::", "0.0.0.0"):
        candidates = [(socket.AF_INET6, ("::", port)), (socket.AF_INET, ("0.0.0.0", port))]
        if host == "0.0.0.0":
            candidates = candidates[1:]
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        candidates = [(family, address) for family, _, _, _, address in infos[:1]]
    error: OSError | None = None
    for family, address in candidates:
        sock = None
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and address[0] == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 as well
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
            return sock
        except OSError as caught:  # e.g. no IPv6 in this container: try IPv4
            if sock is not None:
                sock.close()
            error = caught
    assert error is not None
    raise error


class _Frames:
    """One direction's byte stream, walked frame header by frame header.

    ``feed`` returns the bytes to pass on and the whole frames of the ``watch`` types (small
    control frames) seen; frames of the ``hold`` types (a subset) are not passed on. The
    client's stream starts with the 24-byte connection preface, which passes untouched.
    """

    def __init__(
        self, watch: frozenset[int], hold: frozenset[int] = frozenset(), preface: int = 0
    ) -> None:
        self._watch = watch
        self._hold = hold
        self._pending = bytearray()
        self._passing = preface  # bytes to pass on before the next frame header

    def feed(self, data: bytes) -> tuple[bytes, list[bytes]]:
        self._pending += data
        out = bytearray()
        seen: list[bytes] = []
        while self._pending:
            if self._passing:
                taken = min(self._passing, len(self._pending))
                out += self._pending[:taken]
                del self._pending[:taken]
                self._passing -= taken
                continue
            if len(self._pending) < _FRAME_HEADER_SIZE:
                break
            length = int.from_bytes(self._pending[:3], "big")
            kind = self._pending[3]
            if kind in self._watch and length <= _MAX_WATCHED_FRAME:
                size = _FRAME_HEADER_SIZE + length
                if len(self._pending) < size:
                    break  # control frames are small: wait for all of one
                seen.append(bytes(self._pending[:size]))
                if kind not in self._hold:
                    out += self._pending[:size]
                del self._pending[:size]
                continue
            out += self._pending[:_FRAME_HEADER_SIZE]
            del self._pending[:_FRAME_HEADER_SIZE]
            self._passing = length
        return bytes(out), seen


def _ping(opaque: bytes, ack: bool = False) -> bytes:
    return len(opaque).to_bytes(3, "big") + bytes([_PING, _ACK if ack else 0]) + bytes(4) + opaque


class _Relay:
    """One client connection and its connection to the gRPC server."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.client: asyncio.Transport | None = None
        self.backend: asyncio.Transport | None = None
        self.server_frames = _Frames(watch=frozenset({_GOAWAY}), hold=frozenset({_GOAWAY}))
        self.client_frames = _Frames(watch=frozenset({_PING}), preface=_CLIENT_PREFACE_SIZE)
        self.goaway: bytes | None = None  # the server's latest, sent last
        self.closed = asyncio.get_running_loop().create_future()
        self.client_gone = False
        self.backend_gone = False
        self._last_ping_ack: bytes | None = None  # the ACK that lets the connection close
        self._ack_timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task | None = None  # held: the loop keeps tasks weakly
        self._early: list[bytes] = []  # anything read before the backend connected

    # --- client side ---
    def client_connected(self, transport: asyncio.Transport) -> None:
        self.client = transport
        if not self.front.accepts_peer(transport):
            transport.abort()
            return
        self.front.relays.add(self)
        transport.pause_reading()  # until there is somewhere to send what the client says
        self._connecting = asyncio.get_running_loop().create_task(self._connect_backend())

    async def _connect_backend(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_unix_connection(
                lambda: _BackendSide(self), "\0" + self.front.backend_name
            )
        except OSError as error:
            logger.warning("cannot reach the gRPC server behind the front: %s", error)
            self.backend_gone = True
            self._finish()

    def from_client(self, data: bytes) -> None:
        forward, pings = self.client_frames.feed(data)
        if self._last_ping_ack is not None and self._last_ping_ack in pings:
            self._finish()
        elif self.backend_gone:
            pass  # nobody to tell any more
        elif self.backend is None:
            self._early.append(forward)
        else:
            self.backend.write(forward)

    def client_lost(self) -> None:
        self.client_gone = True
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        if self.backend is not None and not self.backend_gone:
            self.backend.close()
        self.front.relays.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # --- backend side ---
    def backend_connected(self, transport: asyncio.Transport) -> None:
        self.backend = transport
        if self.client_gone:
            transport.close()
        elif self.client is not None:
            for data in self._early:
                transport.write(data)
            self._early.clear()
            self.client.resume_reading()

    def from_backend(self, data: bytes) -> None:
        forward, goaways = self.server_frames.feed(data)
        if goaways:
            self.goaway = goaways[-1]
            logger.debug("holding back the server's GOAWAY until the connection closes")
        if forward and self.client is not None and not self.client_gone:
            self.client.write(forward)

    def backend_lost(self) -> None:
        """The server closed: a PING behind the last reply; GOAWAY and close on its ACK."""
        self.backend_gone = True
        if self.client is None or self.client_gone:
            return
        opaque = secrets.token_bytes(8)
        self._last_ping_ack = _ping(opaque, ack=True)
        self.client.write(_ping(opaque))
        self.client.resume_reading()  # were it paused for the server, the ACK must get through
        loop = asyncio.get_running_loop()
        self._ack_timer = loop.call_later(_PING_ACK_TIMEOUT_S, self._finish)

    def _finish(self) -> None:
        """Close the client's connection: everything written is flushed, the GOAWAY last."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        if self.client is None or self.client_gone or self.client.is_closing():
            return
        if self.goaway is not None:
            self.client.write(self.goaway)
        self.client.close()


class _ClientSide(asyncio.Protocol):
    def __init__(self, front: Front) -> None:
        self.relay = _Relay(front)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay.client_connected(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.relay.from_client(data)

    def eof_received(self) -> bool:
        return False  # close; the backend side follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.client_lost()

    # The client reads slower than the server writes: stop reading from the server.
    def pause_writing(self) -> None:
        if self.relay.backend is not None:
            self.relay.backend.pause_reading()

    def resume_writing(self) -> None:
        if self.relay.backend is not None:
            self.relay.backend.resume_reading()


class _BackendSide(asyncio.Protocol):
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay.backend_connected(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.relay.from_backend(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.backend_lost()

    def pause_writing(self) -> None:
        if self.relay.client is not None:
            self.relay.client.pause_reading()

    def resume_writing(self) -> None:
        if self.relay.client is not None and not self.relay.client_gone:
            self.relay.client.resume_reading()


class Front:
    """Listens on the public port (plaintext or mutual TLS) and relays to ``backend_name``."""

    def __init__(
        self,
        backend_name: str,
        tls: ssl.SSLContext | None = None,
        client_certs_der: frozenset[bytes] | None = None,
    ) -> None:
        self.backend_name = backend_name
        self.tls = tls
        self.client_certs_der = client_certs_der
        self.relays: set[_Relay] = set()
        self._server: asyncio.Server | None = None

    async def listen(self, host: str, port: int) -> int:
        """Start accepting on ``host:port``; the bound port. OSError if it cannot listen."""
        sock = listening_socket(host, port)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _ClientSide(self),
                sock=sock,
                ssl=self.tls,
                ssl_handshake_timeout=_TLS_HANDSHAKE_TIMEOUT_S if self.tls else None,
            )
        except BaseException:
            sock.close()
            raise
        return sock.getsockname()[1]

    def accepts_peer(self, transport: asyncio.BaseTransport) -> bool:
        """With TLS: is the client's certificate exactly ``task_api_client_cert.pem``?

        The handshake already required a certificate that chains to it (the only trusted
        one); the byte comparison pins it, so no other certificate with its name passes.
        """
        if self.client_certs_der is None:
            return True
        ssl_object = transport.get_extra_info("ssl_object")
        peer = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if peer not in self.client_certs_der:
            logger.warning(
                "refused a TLS client from %s: its certificate is not task_api_client_cert.pem",
                transport.get_extra_info("peername"),
            )
            return False
        return True

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self, timeout: float) -> None:
        """Until every client connection has been flushed and closed (the gRPC server closes
        its side of each when it stops), or ``timeout`` seconds; then what is left is cut."""
        pending = [relay.closed for relay in self.relays]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for relay in list(self.relays):
            logger.warning("a client connection did not close in %.1f s; cutting it", timeout)
            if relay.client is not None:
                relay.client.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)

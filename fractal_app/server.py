"""gRPC plumbing shared by the requestor and provider apps.

Both apps are ``grpc.aio`` servers that a Golem node polls through the standard health
service, optionally over mutual TLS, and stops with SIGTERM or a ``Shutdown`` rpc. This module
does exactly that and nothing app-specific: servicers come in through ``register``. Clients
reach the gRPC server through the front of :mod:`fractal_app.front` (TLS without ALPN, and
replies that are never followed by a GOAWAY in the same read).

Imported by the short-lived provider, so it stays light: grpc, the standard library's ssl and
the domain errors only.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fractal_app import errors, front
from fractal_app.protocol.constants import (
    CLIENT_CERT_FILE,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    TLS_FILES,
)

logger = logging.getLogger(__name__)


# Domain error -> gRPC status. Order matters only for subclasses (none overlap today);
# scene.SceneError is an InvalidArgument, so it needs no entry of its own.
_STATUS_FOR_ERROR: tuple[tuple[type[errors.AppError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DataLoss, grpc.StatusCode.DATA_LOSS),
)

# Unexpected exception messages can be long (a numpy repr, a path list); the node logs the
# status message, the full story goes to our own log.
_MAX_INTERNAL_DETAIL = 300

_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----"
)

# How long stopping waits for the clients' connections to be flushed and closed once the
# gRPC server has stopped (it closes its side of each at once).
_CLOSE_TIMEOUT_S = 5.0


class ServerStartError(RuntimeError):
    """The server could not start (port taken, unreadable TLS file); the message says why."""


def status_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC status a domain error maps to; INTERNAL for anything that is not one."""
    for error_type, code in _STATUS_FOR_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def rpc_errors(method: _Method) -> _Method:
    """Decorate an async servicer method so that errors become gRPC statuses.

    Domain errors (:mod:`fractal_app.errors`, including ``scene.SceneError``) abort the rpc
    with their mapped status and their message verbatim. Anything else is a bug: its
    traceback is logged and the caller gets INTERNAL with a short description. Either way
    only this rpc fails; the server keeps serving.
    """
    if not inspect.iscoroutinefunction(method):
        raise TypeError(f"rpc_errors decorates async servicer methods; {method!r} is not async")
    rpc_name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise  # the method already chose a status with context.abort
        except errors.AppError as error:
            code = status_for(error)
            message = str(error) or type(error).__name__
            logger.info("%s -> %s: %s", rpc_name, code.name, message)
            await context.abort(code, message)
        except Exception as error:
            # A disk fault the domain layer did not name (full, read-only) is still not a bug.
            storage = errors.storage_error(error, f"handling {rpc_name}")
            if storage is not None:
                logger.warning("%s -> %s", rpc_name, storage, exc_info=error)
                await context.abort(status_for(storage), str(storage))
            logger.exception("%s failed with an unexpected error", rpc_name)
            detail = f"{type(error).__name__}: {error}"
            if len(detail) > _MAX_INTERNAL_DETAIL:
                detail = detail[: _MAX_INTERNAL_DETAIL - 3] + "..."
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error in {rpc_name} ({detail}); this is a bug in fractal-app,"
                " the app's log has the traceback",
            )

    return wrapper  # type: ignore[return-value]


def _read_pem(path: Path) -> bytes:
    """Read one PEM file, failing with a message that names the file and the problem."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ServerStartError(f"cannot read TLS file {path}: {error.strerror}") from error
    if b"-----BEGIN" not in data:
        raise ServerStartError(
            f"TLS file {path} is not PEM (no '-----BEGIN' line); the node must write PEM"
            " files, or remove all three pem files to serve plaintext"
        )
    return data


def server_tls(work_dir: Path) -> tuple[ssl.SSLContext, frozenset[bytes]] | None:
    """Mutual TLS from the three pem files in ``work_dir``: the server's TLS context and the
    client certificates (DER) it accepts; None for plaintext.

    All three must be present for TLS (PROTOCOL.md); the client must present exactly
    ``task_api_client_cert.pem``.
    """
    present = [name for name in TLS_FILES if (work_dir / name).is_file()]
    if len(present) < len(TLS_FILES):
        missing = [name for name in TLS_FILES if name not in present]
        if present:
            # Half a TLS set is almost certainly a mistake; say so, but the contract is plaintext.
            logger.warning(
                "TLS is off: %s present in %s but %s missing; serving plaintext",
                ", ".join(present),
                work_dir,
                ", ".join(missing),
            )
        return None
    for name in (SERVER_KEY_FILE, SERVER_CERT_FILE):
        _read_pem(work_dir / name)
    client_pem = _read_pem(work_dir / CLIENT_CERT_FILE)
    try:
        client_ders = frozenset(
            ssl.PEM_cert_to_DER_cert(block.decode("ascii"))
            for block in _PEM_CERTIFICATE.findall(client_pem)
        )
        if not client_ders:
            raise ValueError(f"{CLIENT_CERT_FILE} holds no CERTIFICATE block")
        context = front.server_tls_context(
            work_dir / SERVER_KEY_FILE, work_dir / SERVER_CERT_FILE, client_pem
        )
    except (ValueError, UnicodeDecodeError, ssl.SSLError) as error:
        raise ServerStartError(
            f"cannot serve TLS with the pem files in {work_dir}: {error}; the node must write"
            f" a matching {SERVER_KEY_FILE} and {SERVER_CERT_FILE} and the client's"
            f" certificate in {CLIENT_CERT_FILE}"
        ) from error
    return context, client_ders


class AppServer:
    """A started service: the ``grpc.aio`` server on a private socket behind its public front
    (:mod:`fractal_app.front`), and its health servicer."""

    def __init__(
        self, grpc_server: grpc.aio.Server, public: front.Front, health: health.aio.HealthServicer
    ) -> None:
        self.grpc_server = grpc_server
        self.front = public
        self.health = health

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, give in-flight rpcs ``grace`` seconds, then close every connection
        once what was written to it has been flushed (replies first, GOAWAY last)."""
        self.front.stop_accepting()
        await self.grpc_server.stop(grace)
        await self.front.wait_closed(timeout=_CLOSE_TIMEOUT_S)

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def create_server(
    port: int,
    work_dir: Path,
    register: Callable[[grpc.aio.Server], None],
    host: str = "[::]",
) -> tuple[AppServer, int]:
    """Start a ``grpc.aio`` server with the health service and the app's servicers.

    ``register(server)`` adds the app's servicers. Clients reach it on ``host:port`` (port 0
    picks a free one) through the front, with mutual TLS when ``work_dir`` holds the three pem
    files, plaintext otherwise; the server answers SERVING for the empty service name from
    the moment it accepts connections. Returns the started server and the public port.
    """
    tls = server_tls(Path(work_dir))
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    register(server)

    backend = front.private_backend_name()
    if server.add_insecure_port(f"unix-abstract:{backend}") == 0:
        raise ServerStartError(f"cannot listen on the private socket @{backend}")
    public = front.Front(backend, *(tls or (None, None)))
    address = f"{host}:{port}"
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    try:
        bound_port = await public.listen(host, port)
    except OSError as error:
        await server.stop(None)
        raise ServerStartError(
            f"cannot listen on {address}: {error.strerror or error}; is another process using"
            f" port {port}?"
        ) from error
    if tls is None:
        logger.info("serving plaintext on %s:%d (no TLS files in %s)", host, bound_port, work_dir)
    else:
        logger.info(
            "serving mutual TLS on %s:%d (certificates from %s, client certificate required)",
            host,
            bound_port,
            work_dir,
        )
    return AppServer(server, public, health_servicer), bound_port


def stop_on_signals(stop: asyncio.Event) -> list[signal.Signals]:
    """Set ``stop`` on SIGTERM or SIGINT from now on (the signals handled, for
    :func:`run_until_stopped` to release). Called before a service says it serves: a node
    may stop it the moment its port is known, and a signal with no handler yet killed it
    instead of stopping it gracefully."""
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        logger.info("received %s, stopping", signum.name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            handled.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            # Not the main thread (tests, embedding): the caller owns signals there.
            logger.debug("cannot handle %s in this thread; relying on the stop event", signum)
    return handled


async def run_until_stopped(
    server: AppServer,
    stop: asyncio.Event,
    grace: float = 1.0,
    handled: list[signal.Signals] | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives, then stop gracefully.

    In-flight rpcs (such as the ``Shutdown`` that set ``stop``) get ``grace`` seconds to
    finish. Returns early too if the server terminates on its own. ``handled``: the signals
    :func:`stop_on_signals` took already (else it takes them here).
    """
    loop = asyncio.get_running_loop()
    if handled is None:
        handled = stop_on_signals(stop)

    stop_waiter = asyncio.ensure_future(stop.wait())
    termination = asyncio.ensure_future(server.wait_for_termination())
    try:
        await asyncio.wait({stop_waiter, termination}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_waiter.cancel()
        await server.health.enter_graceful_shutdown()  # NOT_SERVING from now on
        # Not cancelled: grpc's termination waiter shares the future that stop() awaits, and
        # cancelling it would cancel the shutdown too. stop() completes it instead.
        await server.stop(grace)
        await termination
        # Removed only now, so a second SIGTERM during the grace period is absorbed.
        for signum in handled:
            loop.remove_signal_handler(signum)
        logger.info("server stopped")


def open_channel(
    address: str,
    work_dir: Path | None = None,
    client_key: bytes | None = None,
    client_cert: bytes | None = None,
) -> grpc.aio.Channel:
    """A client channel to ``address`` ("host:port"), the way a Golem node connects.

    Plaintext when ``work_dir`` is None or has no ``task_api_server_cert.pem``; otherwise TLS
    trusting that certificate, presenting ``client_key``/``client_cert`` when given (the
    server requires them; both or neither). Must be called with an event loop available.
    """
    if (client_key is None) != (client_cert is None):
        raise ValueError("open_channel: pass both client_key and client_cert, or neither")
    server_cert = None if work_dir is None else Path(work_dir) / SERVER_CERT_FILE
    if server_cert is None or not server_cert.is_file():
        if client_key is not None:
            raise ValueError(
                f"open_channel: a client certificate was given but {SERVER_CERT_FILE} is not in"
                f" {work_dir}; put the server certificate there to connect with TLS"
            )
        return grpc.aio.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server_cert.read_bytes(),
        private_key=client_key,
        certificate_chain=client_cert,
    )
    return grpc.aio.secure_channel(address, credentials)

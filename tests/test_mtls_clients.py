"""Mutual TLS as a Golem node sets it up, from the node's own client and from grpcio.

Certificates are made the node's way (RSA 2048, self-signed, CN/SAN golem.local, CA:TRUE).
The node's client is grpclib with task-api's ``ssl.SSLContext``, which offers no ALPN; grpcio
clients ask for ALPN h2. Both must be served; plaintext, a missing or foreign client
certificate, and a client that does not trust the server must get nothing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from certs import MtlsCerts, node_style, write_node_certs
from cryptography import x509
from golem_node import Stub, client_ssl_context
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpclib.client import Channel
from grpclib.exceptions import StreamTerminatedError

from fractal_app.protocol import golem_task_api_pb2 as pb
from fractal_app.protocol import golem_task_api_pb2_grpc as pb_grpc
from fractal_app.server import ServerStartError, create_server, rpc_errors

CALL_TIMEOUT = 10.0
# What a refused grpclib client sees, depending on when in the handshake the server says no.
REFUSED = (StreamTerminatedError, ConnectionError, ssl.SSLError, OSError)


class Echo(pb_grpc.ProviderAppServicer):
    @rpc_errors
    async def Compute(self, request, context):  # noqa: N802 - gRPC method names
        return pb.ComputeReply(output_filepath=f"{request.subtask_id}/band.png")


@asynccontextmanager
async def serving(work_dir: Path) -> AsyncIterator[int]:
    server, port = await create_server(
        0, work_dir, lambda s: pb_grpc.add_ProviderAppServicer_to_server(Echo(), s), "127.0.0.1"
    )
    try:
        yield port
    finally:
        await server.stop(None)


def write_pair(folder: Path, key: bytes, cert: bytes) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.pem").write_bytes(key)
    (folder / "cert.pem").write_bytes(cert)
    return folder / "key.pem", folder / "cert.pem"


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, MtlsCerts]:
    """The app's work dir with the node's three pem files, and the certificates."""
    work_dir = tmp_path / "work"
    return work_dir, write_node_certs(work_dir)


def upstream_context(tmp_path: Path, key: bytes, cert: bytes, server_cert: Path):
    """task-api's ``create_client_ssl_context``: plain SSLContext, no ALPN."""
    key_file, cert_file = write_pair(tmp_path / "client", key, cert)
    context = client_ssl_context(key_file, cert_file, server_cert)
    assert context.verify_mode == ssl.CERT_REQUIRED
    return context


async def grpclib_calls(port: int, context: ssl.SSLContext | None) -> tuple[int, str]:
    """Health, then Compute, on one grpclib channel: what a node does first."""
    channel = Channel("127.0.0.1", port, ssl=context)
    try:
        health = await Stub(channel, health_pb2, "Health").Check(
            health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT
        )
        reply = await Stub(channel, pb, "ProviderApp").Compute(
            pb.ComputeRequest(task_id="t", subtask_id="s1"), timeout=CALL_TIMEOUT
        )
        return health.status, reply.output_filepath
    finally:
        channel.close()


async def grpcio_calls(port: int, credentials: grpc.ChannelCredentials) -> tuple[int, str]:
    # The certificates name golem.local/localhost/127.0.0.1; dial by address.
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT
        )
        reply = await pb_grpc.ProviderAppStub(channel).Compute(
            pb.ComputeRequest(task_id="t", subtask_id="s1"), timeout=CALL_TIMEOUT
        )
        return health.status, reply.output_filepath


SERVED = (health_pb2.HealthCheckResponse.SERVING, "s1/band.png")


# --- served -------------------------------------------------------------------------------------


def test_node_client_without_alpn_is_served(node, tmp_path: Path) -> None:
    work_dir, certs = node
    context = upstream_context(
        tmp_path, certs.client_key, certs.client_cert, work_dir / "task_api_server_cert.pem"
    )

    async def scenario() -> None:
        async with serving(work_dir) as port:
            assert await grpclib_calls(port, context) == SERVED
            # TLS 1.2 too (the front's floor), still without ALPN
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            assert await grpclib_calls(port, context) == SERVED

    asyncio.run(scenario())


def test_grpclib_client_asking_for_h2_is_served(node, tmp_path: Path) -> None:
    work_dir, certs = node
    context = upstream_context(
        tmp_path, certs.client_key, certs.client_cert, work_dir / "task_api_server_cert.pem"
    )
    context.set_alpn_protocols(["h2"])  # what grpclib's own default context does

    async def scenario() -> None:
        async with serving(work_dir) as port:
            assert await grpclib_calls(port, context) == SERVED

    asyncio.run(scenario())


def test_grpcio_client_with_node_certificates_is_served(node) -> None:
    work_dir, certs = node
    credentials = grpc.ssl_channel_credentials(
        certs.server_cert, certs.client_key, certs.client_cert
    )

    async def scenario() -> None:
        async with serving(work_dir) as port:
            assert await grpcio_calls(port, credentials) == SERVED

    asyncio.run(scenario())


# --- refused --------------------------------------------------------------------------------------


def refused_contexts(tmp_path: Path, work_dir: Path, certs: MtlsCerts):
    """(name, client SSLContext or None for plaintext) for every client that must be refused."""
    server_cert = work_dir / "task_api_server_cert.pem"
    trusted = x509.load_pem_x509_certificate(certs.client_cert)

    no_certificate = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    no_certificate.load_verify_locations(str(server_cert))

    impostor = node_style(subject_of=trusted)  # same subject and serial, other key
    issued = node_style(issuer=(certs.client_key, certs.client_cert))  # chains to the trusted one
    _, other_server_cert = node_style()
    key_file, cert_file = write_pair(tmp_path / "d", certs.client_key, certs.client_cert)
    distrustful = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    distrustful.load_cert_chain(str(cert_file), str(key_file))
    distrustful.load_verify_locations(cadata=other_server_cert.decode())  # another server's
    return [
        ("plaintext", None),
        ("no client certificate", no_certificate),
        (
            "same subject and serial, other key",
            upstream_context(tmp_path / "i", *impostor, server_cert),
        ),
        (
            "issued by the trusted certificate",
            upstream_context(tmp_path / "c", *issued, server_cert),
        ),
        ("does not trust the server", distrustful),
    ]


def test_node_clients_that_must_be_refused_get_nothing(node, tmp_path: Path, caplog) -> None:
    work_dir, certs = node
    cases = refused_contexts(tmp_path, work_dir, certs)
    good = upstream_context(
        tmp_path / "good",
        certs.client_key,
        certs.client_cert,
        work_dir / "task_api_server_cert.pem",
    )

    async def scenario() -> None:
        async with serving(work_dir) as port:
            for name, context in cases:
                with pytest.raises(REFUSED):
                    await asyncio.wait_for(grpclib_calls(port, context), CALL_TIMEOUT)
                # ... and the server goes on serving the node
                assert await grpclib_calls(port, good) == SERVED, name

    asyncio.run(scenario())
    # The issued certificate passes OpenSSL's chain check (its issuer is trusted and CA:TRUE);
    # the pin to task_api_client_cert.pem is what refuses it.
    assert "its certificate is not task_api_client_cert.pem" in caplog.text


def test_grpcio_impostor_certificate_is_refused(node) -> None:
    work_dir, certs = node
    impostor_key, impostor_cert = node_style(
        subject_of=x509.load_pem_x509_certificate(certs.client_cert)
    )
    credentials = grpc.ssl_channel_credentials(certs.server_cert, impostor_key, impostor_cert)

    async def scenario() -> None:
        async with serving(work_dir) as port:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await grpcio_calls(port, credentials)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


# --- the pem files ------------------------------------------------------------------------------


def test_client_certificate_file_with_text_around_it_still_pins_it(node, tmp_path: Path) -> None:
    work_dir, certs = node
    described = b"Subject: CN=golem.local\n" + certs.client_cert + b"\n# written by the node\n"
    (work_dir / "task_api_client_cert.pem").write_bytes(described)
    context = upstream_context(
        tmp_path, certs.client_key, certs.client_cert, work_dir / "task_api_server_cert.pem"
    )

    async def scenario() -> None:
        async with serving(work_dir) as port:
            assert await grpclib_calls(port, context) == SERVED

    asyncio.run(scenario())


def test_server_key_of_another_certificate_stops_start_with_the_file_names(node) -> None:
    work_dir, _ = node
    other_key, _ = node_style()
    (work_dir / "task_api_server_key.pem").write_bytes(other_key)

    async def scenario() -> None:
        with pytest.raises(ServerStartError, match="task_api_server_key.pem"):
            await create_server(0, work_dir, lambda s: None, "127.0.0.1")

    asyncio.run(scenario())

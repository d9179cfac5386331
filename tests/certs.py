"""Throwaway certificates for mutual-TLS tests, made the way a Golem node lays them out.

The node puts three pem files in the app's work directory: the server's key and certificate
and the certificate its client will present. There is no CA: each certificate is self-signed,
so trusting a certificate means having exactly that certificate as a root.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fractal_app.protocol.constants import CLIENT_CERT_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE


@dataclass(frozen=True)
class MtlsCerts:
    """PEM bytes of one server identity and one client identity that trust each other."""

    server_key: bytes
    server_cert: bytes
    client_key: bytes
    client_cert: bytes


def self_signed(common_name: str, *, server: bool) -> tuple[bytes, bytes]:
    """A fresh P-256 key and a self-signed certificate for it, both PEM.

    A server certificate names ``localhost`` and ``127.0.0.1`` so that a client dialling
    either verifies it; a client certificate is marked for client authentication.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    certificate = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def make_certs() -> MtlsCerts:
    """A matching server and client identity, not written anywhere."""
    server_key, server_cert = self_signed("localhost", server=True)
    client_key, client_cert = self_signed("golem-node-client", server=False)
    return MtlsCerts(server_key, server_cert, client_key, client_cert)


def write_certs(work_dir: Path) -> MtlsCerts:
    """Make certificates and write the node's three pem files into ``work_dir``.

    The client key is returned, not written: the node keeps it to itself.
    """
    certs = make_certs()
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / SERVER_KEY_FILE).write_bytes(certs.server_key)
    (work_dir / SERVER_CERT_FILE).write_bytes(certs.server_cert)
    (work_dir / CLIENT_CERT_FILE).write_bytes(certs.client_cert)
    return certs


NODE_NAMES = ("golem.local", "localhost", "127.0.0.1")


def node_style(
    *, subject_of: x509.Certificate | None = None, issuer: tuple[bytes, bytes] | None = None
) -> tuple[bytes, bytes]:
    """A key and certificate (PEM) as a Golem node makes them for the Task API: RSA 2048,
    self-signed, CN ``golem.local``, SAN golem.local/localhost/127.0.0.1, CA:TRUE.

    ``subject_of`` copies another certificate's subject and serial onto a fresh key (an
    impostor); ``issuer`` (key PEM, certificate PEM) signs with that identity instead of
    self-signing (a certificate issued by a trusted CA:TRUE certificate).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NODE_NAMES[0])])
    serial = x509.random_serial_number()
    if subject_of is not None:
        name, serial = subject_of.subject, subject_of.serial_number
    issuer_name, signing_key = name, key
    if issuer is not None:  # a subject of its own: OpenSSL takes subject == issuer as self-signed
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"issued.{NODE_NAMES[0]}")])
        signing_key = serialization.load_pem_private_key(issuer[0], password=None)
        issuer_name = x509.load_pem_x509_certificate(issuer[1]).subject
    now = datetime.datetime.now(datetime.UTC)
    alt_names = [x509.DNSName("golem.local"), x509.DNSName("localhost")]
    alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(signing_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def write_node_certs(work_dir: Path) -> MtlsCerts:
    """The node's three pem files in ``work_dir``, made the node's way; the client key is
    returned, not written."""
    server_key, server_cert = node_style()
    client_key, client_cert = node_style()
    certs = MtlsCerts(server_key, server_cert, client_key, client_cert)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / SERVER_KEY_FILE).write_bytes(certs.server_key)
    (work_dir / SERVER_CERT_FILE).write_bytes(certs.server_cert)
    (work_dir / CLIENT_CERT_FILE).write_bytes(certs.client_cert)
    return certs

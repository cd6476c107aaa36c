"""The TLS contexts (agent/http/tls.py) on real certificates made here with `cryptography`.

Handshakes run between trio's SSLStreams over an in-memory stream pair: both ends are the
contexts under test, nothing else decides whether a handshake succeeds.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.http.tls import make_client_ssl_context, server_ssl_context

HOST = "node.pollen.test"
Key = ec.EllipticCurvePrivateKey


def _new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(
    subject: str, key: Key, issuer: str, issuer_key: Key, *, ca: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        ).add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, and two node certificates it signed (keys in their own files)."""

    ca: str
    cert: str
    key: str
    other_cert: str
    other_key: str
    stranger_ca: str  # a CA that signed nothing here


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _pem_key(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    ca_key, stranger_key, key, other_key = _new_key(), _new_key(), _new_key(), _new_key()
    ca = _certificate("test-ca", ca_key, "test-ca", ca_key, ca=True)
    stranger = _certificate("stranger-ca", stranger_key, "stranger-ca", stranger_key, ca=True)
    pem = serialization.Encoding.PEM
    return Pki(
        ca=_write(out / "ca.pem", ca.public_bytes(pem)),
        cert=_write(out / "node.pem", _certificate(HOST, key, "test-ca", ca_key).public_bytes(pem)),
        key=_write(out / "node.key", _pem_key(key)),
        other_cert=_write(
            out / "other.pem", _certificate(HOST, other_key, "test-ca", ca_key).public_bytes(pem)
        ),
        other_key=_write(out / "other.key", _pem_key(other_key)),
        stranger_ca=_write(out / "stranger.pem", stranger.public_bytes(pem)),
    )


@dataclass
class Handshake:
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    server_alpn: str | None = None
    client_alpn: str | None = None
    client_certificate: object = None  # what the server saw of the client's certificate

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None


async def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> Handshake:
    """Both ends of one TLS handshake, each end's failure recorded (not raised)."""
    left, right = trio.testing.memory_stream_pair()
    server_end = trio.SSLStream(left, server, server_side=True)
    client_end = trio.SSLStream(right, client, server_hostname=HOST)
    result = Handshake()

    async def serve() -> None:
        try:
            await server_end.do_handshake()
            result.server_alpn = server_end.selected_alpn_protocol()
            result.client_certificate = server_end.getpeercert()
            await server_end.send_all(b"x")  # TLS 1.3: a refused client learns it on read
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            result.server_error = exc
            await trio.aclose_forcefully(server_end)

    async def connect() -> None:
        try:
            await client_end.do_handshake()
            result.client_alpn = client_end.selected_alpn_protocol()
            await client_end.receive_some(1)
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            result.client_error = exc
            await trio.aclose_forcefully(client_end)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(connect)
    return result


async def test_a_client_trusting_the_ca_gets_http11_from_the_server(pki: Pki) -> None:
    result = await handshake(server_ssl_context(pki.cert, pki.key), make_client_ssl_context(pki.ca))
    assert result.ok, result
    assert result.server_alpn == result.client_alpn == "http/1.1"
    assert result.client_certificate is None  # not asked for one


def test_a_key_that_does_not_match_the_certificate_is_refused(pki: Pki) -> None:
    with pytest.raises(ssl.SSLError):
        server_ssl_context(pki.cert, pki.other_key)
    with pytest.raises(ssl.SSLError):
        make_client_ssl_context(pki.ca, cert=pki.cert, key=pki.other_key)


async def test_a_client_without_the_ca_refuses_the_server(pki: Pki) -> None:
    result = await handshake(
        server_ssl_context(pki.cert, pki.key), make_client_ssl_context(pki.stranger_ca)
    )
    assert isinstance(result.client_error, trio.BrokenResourceError)
    assert isinstance(result.client_error.__cause__, ssl.SSLCertVerificationError)


def test_the_client_checks_names_and_certificates() -> None:
    context = make_client_ssl_context(None)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


async def test_with_a_client_ca_the_server_wants_a_certificate_it_signed(pki: Pki) -> None:
    server = server_ssl_context(pki.cert, pki.key, client_ca=pki.ca)
    assert server.verify_mode == ssl.CERT_REQUIRED
    anonymous = await handshake(server, make_client_ssl_context(pki.ca))
    assert anonymous.server_error is not None
    node = await handshake(
        server, make_client_ssl_context(pki.ca, cert=pki.other_cert, key=pki.other_key)
    )
    assert node.ok, node
    assert node.client_certificate  # the server saw (and verified) the node's certificate


async def test_a_client_certificate_from_another_ca_is_refused(pki: Pki) -> None:
    server = server_ssl_context(pki.cert, pki.key, client_ca=pki.stranger_ca)
    result = await handshake(
        server, make_client_ssl_context(pki.ca, cert=pki.other_cert, key=pki.other_key)
    )
    assert result.server_error is not None


def test_without_a_client_ca_no_client_certificate_is_asked_for(pki: Pki) -> None:
    assert server_ssl_context(pki.cert, pki.key).verify_mode == ssl.CERT_NONE

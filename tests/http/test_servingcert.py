"""A server certificate that follows its files (agent/http/servingcert.py), on real
certificates (`agent.kube.certs.make_bundle`) written the way the kubelet writes a mounted
Secret (a ``..data`` symlink swapped over a new payload directory), and served over real
loopback TLS connections.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trio
from cryptography import x509

from agent.http.servingcert import (
    FAILED,
    RELOADED,
    UNCHANGED,
    ServingCertificate,
    TLSListener,
    certificate_info,
    follow_files,
)
from agent.kube.certs import CertBundle, make_bundle
from tests.integration.harness.tlsutil import write_secret_volume

NAMES = ["127.0.0.1"]


def serial(bundle: CertBundle) -> int:
    return certificate_info(bundle.cert).serial


def mount(directory: Path, bundle: CertBundle, *, key: bytes | None = None) -> None:
    write_secret_volume(directory, {"tls.crt": bundle.cert, "tls.key": key or bundle.key})


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    return tmp_path / "tls"


def served(volume: Path) -> ServingCertificate:
    return ServingCertificate(str(volume / "tls.crt"), str(volume / "tls.key"))


def test_a_renewed_pair_is_loaded_into_a_new_context(volume: Path) -> None:
    first, second = make_bundle(NAMES), make_bundle(NAMES)
    mount(volume, first)
    certificate = served(volume)
    assert certificate.info.serial == serial(first)
    before = certificate.context
    assert certificate.check() == UNCHANGED
    assert certificate.context is before
    # The kubelet's swap: the visible names are the same symlinks, with the same mtime.
    mtime = (volume / "tls.crt").lstat().st_mtime_ns
    mount(volume, second)
    assert (volume / "tls.crt").lstat().st_mtime_ns == mtime
    assert certificate.check() == RELOADED
    assert certificate.info.serial == serial(second)
    assert certificate.context is not before
    assert certificate.check() == UNCHANGED


def test_a_key_that_does_not_match_keeps_the_old_pair_and_is_logged_once(
    volume: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second, third = make_bundle(NAMES), make_bundle(NAMES), make_bundle(NAMES)
    mount(volume, first)
    certificate = served(volume)
    context = certificate.context
    mount(volume, second, key=first.key)
    with caplog.at_level(logging.ERROR, logger="agent.http.servingcert"):
        assert certificate.check() == FAILED
        assert certificate.check() == UNCHANGED  # the same bad pair: not logged again
    assert certificate.context is context and certificate.info.serial == serial(first)
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "does not load" in error.getMessage()
    assert f"still serving the one loaded before (serial {serial(first):#x}" in error.getMessage()
    mount(volume, third)
    assert certificate.check() == RELOADED
    assert certificate.info.serial == serial(third)


@pytest.mark.parametrize("fault", ["missing", "not-pem"])
def test_an_unusable_pair_keeps_the_old_one(volume: Path, fault: str) -> None:
    first = make_bundle(NAMES)
    mount(volume, first)
    certificate = served(volume)
    context = certificate.context
    if fault == "missing":
        (volume / "..data").unlink()  # the names now point nowhere
    else:
        write_secret_volume(volume, {"tls.crt": b"not a certificate", "tls.key": first.key})
    assert certificate.check() == FAILED
    assert certificate.context is context
    # Back to the pair in use: nothing to load, and a new refusal would be news again.
    mount(volume, first)
    assert certificate.check() == UNCHANGED
    assert certificate.context is context


def test_the_first_pair_must_load(volume: Path) -> None:
    first, second = make_bundle(NAMES), make_bundle(NAMES)
    mount(volume, first, key=second.key)
    with pytest.raises(ssl.SSLError):
        served(volume)


async def peer_serial(port: int) -> int:
    stream = await open_tls(port)
    try:
        return peer_serial_of(stream)
    finally:
        await stream.aclose()


def peer_serial_of(stream: trio.SSLStream[trio.SocketStream]) -> int:
    der = stream.getpeercert(binary_form=True)
    return int(x509.load_der_x509_certificate(der).serial_number)


async def open_tls(port: int) -> trio.SSLStream[trio.SocketStream]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the serial is what is checked here
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    await stream.do_handshake()
    return stream


async def echo(stream: trio.abc.Stream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data)


async def test_new_connections_get_the_new_certificate_open_ones_keep_theirs(
    volume: Path,
) -> None:
    first, second = make_bundle(NAMES), make_bundle(NAMES)
    mount(volume, first)
    certificate = served(volume)
    (tcp,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = tcp.socket.getsockname()[1]
    listener = TLSListener(tcp, certificate)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, echo, [listener])
        early = await open_tls(port)
        assert peer_serial_of(early) == serial(first)
        mount(volume, second)
        assert certificate.check() == RELOADED
        assert await peer_serial(port) == serial(second)
        # The connection made before the renewal goes on with its own session.
        await early.send_all(b"still here")
        assert await early.receive_some(64) == b"still here"
        await early.aclose()
        nursery.cancel_scope.cancel()


async def test_following_the_files_reports_reloads_and_refusals(volume: Path) -> None:
    first, second = make_bundle(NAMES), make_bundle(NAMES)
    mount(volume, first)
    certificate = served(volume)
    heard: list[tuple[str, int]] = []
    news = trio.Event()

    def report(result: str, cert: ServingCertificate) -> None:
        heard.append((result, cert.info.serial))
        news.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_files, certificate, 0.02, report)
        for bundle, key in ((second, first.key), (second, None)):
            news = trio.Event()
            mount(volume, bundle, key=key)
            with trio.fail_after(10):
                await news.wait()
        nursery.cancel_scope.cancel()
    assert heard == [(FAILED, serial(first)), (RELOADED, serial(second))]

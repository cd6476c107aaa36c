"""A TLS server certificate that follows its files: renewed on disk, served to the next
connection, without a restart.

Why files and polling: the certificate reaches a pod as a mounted Secret, which the kubelet
updates by writing a new timestamped directory and swapping the ``..data`` symlink the file
names point through (``tls.crt -> ..data/tls.crt``). No event says so that works everywhere
(inotify on the symlink's target misses the swap, on the directory it fires for the kubelet's
temporary files too), and the mtime of ``tls.crt`` is the symlink's, which never changes. So
`ServingCertificate.check` reads both files through their names, as ``open`` resolves them
now, and compares the SHA-256 of their contents with what is loaded: a few KiB every few
seconds.

A changed pair is loaded into a new `ssl.SSLContext` (never into the one in use: a half-loaded
context -- the new certificate with the old key -- would fail every handshake); only once it
loaded is it swapped in. `TLSListener` wraps each accepted connection with the context current
at that moment, so connections already open keep theirs and the next ones get the new one. A
pair that does not load (unreadable, not PEM, a key that does not match) is logged as an error
once and the old certificate goes on serving; the files are read again at each check, so a
pair written non-atomically (the certificate, then the key) is taken as soon as it is whole.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography import x509

from agent.http.tls import server_ssl_context

log = logging.getLogger(__name__)

UNCHANGED, RELOADED, FAILED = "unchanged", "reloaded", "failed"


@dataclass(frozen=True)
class CertificateInfo:
    """What the log and the metrics say about a served certificate."""

    serial: int
    not_after: datetime.datetime

    def describe(self) -> str:
        return f"serial {self.serial:#x}, valid until {self.not_after:%Y-%m-%d %H:%M:%SZ}"


def certificate_info(pem: bytes) -> CertificateInfo:
    """The serial and expiry of the first certificate of a PEM chain (ValueError if none)."""
    cert = x509.load_pem_x509_certificate(pem)
    return CertificateInfo(serial=cert.serial_number, not_after=cert.not_valid_after_utc)


def _digest(cert: bytes, key: bytes) -> bytes:
    return hashlib.sha256(len(cert).to_bytes(8, "big") + cert + key).digest()


class ServingCertificate:
    """The server context for ``tls.cert`` and ``tls.key``; `check` replaces it when the
    files hold a new pair that loads. Raises (ssl.SSLError, OSError, ValueError) at
    construction when the first pair does not load: a server must not start without one."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert_path, self.key_path = cert, key
        pair = self._read()
        self.context = server_ssl_context(cert, key)
        self.info = certificate_info(pair[0])
        self._loaded = _digest(*pair)
        self._refused: bytes | None = None  # the last pair that did not load, logged once

    def _read(self) -> tuple[bytes, bytes]:
        return Path(self.cert_path).read_bytes(), Path(self.key_path).read_bytes()

    def check(self) -> str:
        """Load the files' pair if it changed: RELOADED, FAILED (newly refused, logged), or
        UNCHANGED (the same pair, or one already refused)."""
        try:
            pair = self._read()
        except OSError as exc:
            return self._refuse(_digest(str(exc).encode(), b""), f"cannot be read: {exc}")
        seen = _digest(*pair)
        if seen == self._loaded:
            self._refused = None  # back to the pair in use: a new refusal is news again
            return UNCHANGED
        if seen == self._refused:
            return UNCHANGED
        try:
            context = server_ssl_context(self.cert_path, self.key_path)
            info = certificate_info(pair[0])
            again = self._read()
        except (OSError, ValueError, ssl.SSLError) as exc:
            return self._refuse(seen, f"does not load: {exc}")
        if _digest(*again) != seen:
            return UNCHANGED  # rewritten while we loaded it: the next check takes it
        self.context, self.info, self._loaded, self._refused = context, info, seen, None
        log.info("TLS certificate reloaded from %s: %s", self.cert_path, info.describe())
        return RELOADED

    def _refuse(self, seen: bytes, reason: str) -> str:
        if seen == self._refused:
            return UNCHANGED
        self._refused = seen
        log.error(
            "TLS certificate %s with key %s %s; still serving the one loaded before (%s)",
            self.cert_path,
            self.key_path,
            reason,
            self.info.describe(),
        )
        return FAILED


async def follow_files(
    certificate: ServingCertificate,
    interval: float,
    report: Callable[[str, ServingCertificate], None],
) -> None:
    """Check `certificate`'s files every `interval` seconds until cancelled; `report` hears
    of each reload and each refusal (not of unchanged checks)."""
    while True:
        await trio.sleep(interval)
        result = certificate.check()
        if result != UNCHANGED:
            report(result, certificate)


class TLSListener(trio.abc.Listener[trio.SSLStream[trio.abc.Stream]]):
    """trio's SSLListener, but each connection gets the certificate's context of the moment
    it is accepted (trio's keeps the one it was made with)."""

    def __init__(
        self,
        transport_listener: trio.abc.Listener[trio.abc.Stream],
        certificate: ServingCertificate,
    ) -> None:
        self.transport_listener = transport_listener
        self.certificate = certificate

    async def accept(self) -> trio.SSLStream[trio.abc.Stream]:
        stream = await self.transport_listener.accept()
        return trio.SSLStream(
            stream, self.certificate.context, server_side=True, https_compatible=True
        )

    async def aclose(self) -> None:
        await self.transport_listener.aclose()

"""A throwaway CA and server certificate, made per test with `cryptography`.

Go (registry, containerd, skopeo) ignores the Common Name, so every name a client dials
must be a SAN: IP addresses as IP SANs, names as DNS SANs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTNAMES = ("127.0.0.1", "localhost", "::1")


class TLSFiles(NamedTuple):
    """Paths of the CA certificate, the server certificate (leaf only) and its key."""

    ca: Path
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hostnames: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for h in hostnames:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            entries.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(entries)


def make_ca_and_cert(
    tmpdir: Path,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    *,
    prefix: str = "server",
) -> TLSFiles:
    """Write `ca.pem`, `<prefix>.crt`, `<prefix>.key` into `tmpdir`; valid for a day.

    EC P-256 keys: quick to make, and every client here accepts them.
    """
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("pollen-test-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostnames[0] if hostnames else "pollen-test"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hostnames), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_path = tmpdir / "ca.pem"
    cert_path = tmpdir / f"{prefix}.crt"
    key_path = tmpdir / f"{prefix}.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return TLSFiles(ca_path, cert_path, key_path)


def make_cert_dir(ca: Path, dest: Path) -> Path:
    """A directory holding `ca.crt`, the layout skopeo's `--*-cert-dir` expects.

    containers/image reads every `*.crt` in the directory as an extra root CA.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca, dest / "ca.crt")
    return dest


def client_context(ca: Path) -> ssl.SSLContext:
    """An SSLContext that trusts only the test CA (for readiness polls)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    return ctx


def write_secret_volume(directory: Path, files: Mapping[str, bytes]) -> Path:
    """Put `files` in `directory` the way the kubelet updates a mounted Secret (its
    AtomicWriter): the payload goes into a new timestamped directory, a ``..data_tmp`` symlink
    to it is renamed over ``..data`` (one atomic step), and each visible name is a symlink
    ``name -> ..data/name`` made once. The old payload directory is then removed. So the
    visible files' own mtimes never change, and a reader opening a name gets all-old or
    all-new. Returns the new payload directory."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
    payload = Path(tempfile.mkdtemp(prefix=f"..{stamp}.", dir=directory))
    for name, data in files.items():
        (payload / name).write_bytes(data)
    payload.chmod(0o755)
    data_link = directory / "..data"
    old = data_link.resolve() if data_link.is_symlink() else None
    tmp_link = directory / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(payload.name)
    os.rename(tmp_link, data_link)
    for name in files:
        visible = directory / name
        if not visible.is_symlink():
            visible.symlink_to(Path("..data") / name)
    if old is not None and old != payload:
        shutil.rmtree(old)
    return payload

"""`pollen webhook certs`: the webhook's serving certificate, made and published in-cluster.

The API server calls the webhook over HTTPS and checks its certificate against the caBundle
of the MutatingWebhookConfiguration. This step (the webhook pod's init container in
deploy/kubernetes) makes that work without cert-manager:

1. read the TLS Secret; if it is missing, unreadable, not for the Service's DNS names, or
   expires within `RENEW_BEFORE`, make a new CA and serving certificate (EC P-256, with
   `cryptography`) and store them (``tls.crt``, ``tls.key``, ``ca.crt``) -- when two replicas
   race, the one whose create loses reads the winner's;
2. put the CA into ``clientConfig.caBundle`` of every entry of the MutatingWebhookConfiguration
   (only when it differs, so restarts do not churn);
3. optionally create the cluster token Secret (a random P2P token) if it does not exist;
4. write the certificate and key into ``--out-dir`` for the webhook container to serve;
5. or, when the webhook serves the Secret mounted as a volume (deploy/kubernetes, so that a
   renewed certificate reaches it without a restart, docs/WEBHOOK.md), wait until that volume
   holds a pair (``--wait-for-mount``): on the first install the Secret is made here, after
   the kubelet mounted the (optional) volume empty, and the webhook must not start before the
   kubelet has filled it.

Every step is idempotent: running it again changes nothing that is still valid.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.kube.api import KubeAPI, KubeError

log = logging.getLogger(__name__)

MOUNT_FILES = ("tls.crt", "tls.key")
MOUNT_POLL = 1.0  # seconds between looks at the mounted Secret
VALIDITY = datetime.timedelta(days=5 * 365)
RENEW_BEFORE = datetime.timedelta(days=30)
TOKEN_KEY = "token"


class NotMounted(Exception):
    """The Secret's volume stayed empty (`CertsJob.wait_for_mount`)."""


@dataclass(frozen=True)
class CertBundle:
    """PEM bytes: the CA certificate, the serving certificate and its private key."""

    ca: bytes
    cert: bytes
    key: bytes


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names the API server may use for the webhook Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_bundle(names: list[str], *, now: datetime.datetime | None = None) -> CertBundle:
    """A fresh CA and a serving certificate for `names` (DNS names or IP addresses)."""
    now = now or datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("pollen-webhook-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertBundle(
        ca=ca.public_bytes(serialization.Encoding.PEM),
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def problem_with(
    bundle: CertBundle, names: list[str], *, now: datetime.datetime | None = None
) -> str | None:
    """Why `bundle` cannot be (re)used for `names`, or None when it can."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        ca = x509.load_pem_x509_certificate(bundle.ca)
        cert = x509.load_pem_x509_certificate(bundle.cert)
        key = serialization.load_pem_private_key(bundle.key, password=None)
    except ValueError as exc:
        return f"unreadable: {exc}"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        return "key does not match the certificate"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "certificate not issued by the CA"
    if cert.not_valid_after_utc - now < RENEW_BEFORE or ca.not_valid_after_utc - now < RENEW_BEFORE:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    have = set(san.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }
    missing = [n for n in names if n not in have]
    return f"not valid for {', '.join(missing)}" if missing else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bundle_from_secret(secret: dict[str, Any]) -> CertBundle | None:
    data = secret.get("data") or {}
    try:
        return CertBundle(
            ca=base64.b64decode(data["ca.crt"]),
            cert=base64.b64decode(data["tls.crt"]),
            key=base64.b64decode(data["tls.key"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _tls_secret(name: str, namespace: str, bundle: CertBundle) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "pollen"},
        },
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": _b64(bundle.cert),
            "tls.key": _b64(bundle.key),
            "ca.crt": _b64(bundle.ca),
        },
    }


async def ensure_tls_secret(
    api: KubeAPI, *, namespace: str, secret: str, names: list[str]
) -> CertBundle:
    """The valid bundle stored in the Secret, made (and stored) anew when needed."""
    for attempt in (1, 2):
        existing = await api.get_secret(namespace, secret)
        if existing is not None:
            bundle = _bundle_from_secret(existing)
            problem = "missing keys" if bundle is None else problem_with(bundle, names)
            if problem is None:
                assert bundle is not None
                log.info("secret %s/%s: certificate still valid", namespace, secret)
                return bundle
            log.info("secret %s/%s: new certificate (%s)", namespace, secret, problem)
        bundle = make_bundle(names)
        body = _tls_secret(secret, namespace, bundle)
        try:
            if existing is None:
                await api.create_secret(namespace, body)
            else:
                # A JSON patch, not a PUT: the webhook's role has no `update` on Secrets
                # (deploy/kubernetes/rbac.yaml); the test makes it fail if it changed meanwhile.
                version = existing["metadata"].get("resourceVersion")
                ops = [{"op": "replace", "path": "/data", "value": body["data"]}]
                if version:
                    ops.insert(
                        0, {"op": "test", "path": "/metadata/resourceVersion", "value": version}
                    )
                await api.patch_secret(namespace, secret, ops)
        except KubeError as exc:
            # 409: another replica created one; 422: another replica replaced it. Use theirs.
            if exc.status in (409, 422) and attempt == 1:
                continue
            raise
        log.info("secret %s/%s: stored a new CA and certificate", namespace, secret)
        return bundle
    raise AssertionError("unreachable")


async def ensure_ca_bundle(api: KubeAPI, *, configuration: str, ca: bytes) -> bool:
    """Set every webhook's clientConfig.caBundle to `ca`; True when something changed."""
    for attempt in (1, 2):
        body = await api.get_webhook_configuration(configuration)
        changed = False
        for webhook in body.get("webhooks") or []:
            client = webhook.setdefault("clientConfig", {})
            if client.get("caBundle") != _b64(ca):
                client["caBundle"] = _b64(ca)
                changed = True
        if not changed:
            return False
        try:
            await api.replace_webhook_configuration(configuration, body)
        except KubeError as exc:
            if exc.status == 409 and attempt == 1:
                continue
            raise
        log.info("mutatingwebhookconfiguration %s: caBundle updated", configuration)
        return True
    raise AssertionError("unreachable")


async def ensure_cluster_token(api: KubeAPI, *, namespace: str, secret: str) -> bool:
    """Create the P2P cluster token Secret with a random token if it is missing; True if
    created. An existing token is never replaced (agents and roots share it)."""
    if await api.get_secret(namespace, secret) is not None:
        return False
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "pollen"},
        },
        "type": "Opaque",
        "data": {TOKEN_KEY: _b64(secrets.token_hex(32).encode())},
    }
    try:
        await api.create_secret(namespace, body)
    except KubeError as exc:
        if exc.status == 409:
            return False
        raise
    log.info("secret %s/%s: new cluster token", namespace, secret)
    return True


def write_files(out_dir: Path, bundle: CertBundle) -> None:
    """tls.crt, tls.key (0600) and ca.crt in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tls.crt").write_bytes(bundle.cert)
    (out_dir / "ca.crt").write_bytes(bundle.ca)
    key = out_dir / "tls.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bundle.key)


@dataclass(frozen=True, kw_only=True)
class CertsJob:
    """What `pollen webhook certs` keeps in place (its command-line options)."""

    namespace: str | None  # None: the pod's own
    service: str
    secret: str  # the TLS Secret
    configuration: str  # the MutatingWebhookConfiguration whose caBundle is filled
    out_dir: Path | None = None  # also write tls.crt, tls.key and ca.crt here
    cluster_token_secret: str | None = None  # also keep a cluster token in this Secret
    wait_for_mount: Path | None = None  # wait until the Secret's volume here holds a pair
    # The kubelet fills a mounted Secret at its next sync of the pod (a minute or so); past
    # this the job fails, and the kubelet runs it again (and syncs the pod meanwhile).
    mount_timeout: float = 180.0


def mounted_pair(directory: Path) -> bool:
    """Whether `directory` holds a non-empty tls.crt and tls.key (through the kubelet's
    ``..data`` symlinks, as the webhook will open them)."""
    try:
        return all((directory / name).stat().st_size > 0 for name in MOUNT_FILES)
    except OSError:
        return False


async def wait_for_mount(directory: Path, timeout: float) -> bool:
    """True once `directory` holds the pair, False after `timeout` seconds."""
    with trio.move_on_after(timeout):
        while not mounted_pair(directory):
            await trio.sleep(MOUNT_POLL)
        return True
    return False


async def run_certs(api: KubeAPI, job: CertsJob, namespace: str) -> None:
    names = service_names(job.service, namespace)
    bundle = await ensure_tls_secret(api, namespace=namespace, secret=job.secret, names=names)
    await ensure_ca_bundle(api, configuration=job.configuration, ca=bundle.ca)
    if job.cluster_token_secret:
        await ensure_cluster_token(api, namespace=namespace, secret=job.cluster_token_secret)
    if job.out_dir is not None:
        write_files(job.out_dir, bundle)
        log.info("wrote tls.crt, tls.key and ca.crt to %s", job.out_dir)
    if job.wait_for_mount is not None:
        if not mounted_pair(job.wait_for_mount):
            log.info("waiting for the kubelet to fill %s from the Secret", job.wait_for_mount)
        if not await wait_for_mount(job.wait_for_mount, job.mount_timeout):
            raise NotMounted(
                f"{job.wait_for_mount} holds no tls.crt and tls.key after "
                f"{job.mount_timeout:g}s: is secret {namespace}/{job.secret} mounted there?"
            )
        log.info("%s holds the serving certificate", job.wait_for_mount)


def main(job: CertsJob, account_dir: Path | None = None) -> int:
    """`pollen webhook certs` in a pod: exit 0 when everything is in place."""
    from agent.kube.api import SERVICE_ACCOUNT_DIR

    account = account_dir or SERVICE_ACCOUNT_DIR
    namespace = job.namespace or KubeAPI.in_cluster_namespace(account)
    if not namespace:
        log.error("no namespace: pass --namespace (not running in a pod)")
        return 2
    try:
        api = KubeAPI.in_cluster(account_dir=account)
    except KubeError as exc:
        log.error("cannot reach the Kubernetes API: %s", exc.message)
        return 2

    async def go() -> None:
        try:
            await run_certs(api, job, namespace)
        finally:
            await api.aclose()

    try:
        trio.run(go)
    except (KubeError, NotMounted) as exc:
        log.error("webhook certs: %s", exc)
        return 1
    return 0

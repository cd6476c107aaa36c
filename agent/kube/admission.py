"""The admission webhook's decisions, without I/O: an AdmissionReview in, a JSONPatch and the
pull secrets it needs out.

Theory of operation
-------------------
The API server calls the webhook only for pods that asked for P2P (docs/ARCHITECTURE.md: a
namespace or a pod labelled ``k8s.aliyun.com/image-accelerate-mode: p2p``, two webhook entries), so
what to do with a pod is a pure function of the review and the settings -- `review_decision`. It

- leaves alone the webhook's own namespace, kube-system, a pod whose own label says anything
  but ``p2p`` (an opt-out), and a pod that already carries the ``p2p-config`` annotation (it
  was rewritten before: re-invocation changes nothing);
- rewrites the image of every container, init container and ephemeral container whose
  registry host matches ``webhook.registries`` to ``<first label>.distributed.<rest of
  host>:<endpointPort>/<path>`` (``distributed-<port>`` for a registry on a port other than
  443), keeping the tag and the digest;
- adds the two annotations (``p2p-config`` records every original image) and appends
  ``acr-credential-S-p2p`` to ``imagePullSecrets`` for each pull secret ``S``.

The pull secrets themselves are written by the caller (agent/kube/webhook.py) *before* it answers,
from `Decision.secrets`; what each copy holds is `agent.kube.pullsecrets`' business. A review
that is not a well-formed admission.k8s.io/v1 AdmissionReview raises `ReviewError` (HTTP 400).

Image references follow Docker's normalisation: a first path component containing ``.`` or
``:`` (or ``localhost``) is the registry host; otherwise the host is ``docker.io`` and a
one-component path gets ``library/``. The P2P name carries the agent's port, so the
registry's own port, if any, moves into the marker label (``distributed-5000``): the
naming and its inverse live in agent/core/p2pnames.py, shared with the agent
(agent/registry/upstreams.py) and `pollen doctor hosts` (agent/node/mirrors.py).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.core.p2pnames import DISTRIBUTED_LABEL, p2p_host

__all__ = [
    "CONFIG_ANNOTATION",
    "CONTAINER_KINDS",
    "DISTRIBUTED_LABEL",
    "LABEL",
    "MODE",
    "SYSTEM_NAMESPACES",
    "AdmissionSettings",
    "Decision",
    "ImageRef",
    "ReviewError",
    "SecretPlan",
    "allowed_response",
    "decode_review",
    "host_matches",
    "p2p_host",
    "p2p_secret_name",
    "parse_image",
    "review_decision",
    "rewrite_image",
]

LABEL = "k8s.aliyun.com/image-accelerate-mode"
MODE = "p2p"
CONFIG_ANNOTATION = "k8s.aliyun.com/p2p-config"
SYSTEM_NAMESPACES = ("kube-system",)
CONTAINER_KINDS = ("initContainers", "containers", "ephemeralContainers")
EPHEMERAL_SUBRESOURCE = "ephemeralcontainers"
REVIEW_API_VERSION = "admission.k8s.io/v1"
DOCKER_HUB = "docker.io"
_MAX_NAME = 253


class ReviewError(ValueError):
    """The request is not a well-formed AdmissionReview; the message is the 400's reason."""


@dataclass(frozen=True, kw_only=True)
class AdmissionSettings:
    """What the decision depends on besides the pod: `webhook.*` keys and our namespace."""

    registries: tuple[str, ...]
    endpoint_port: int
    own_namespace: str = ""


# --------------------------------------------------------------------------------------------
# Image references and host names

_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_PORT_RE = re.compile(r"[0-9]{1,5}")
# An object name (DNS-1123 subdomain): a pull secret's name goes into API URLs as it is.
_NAMESPACE_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")  # a DNS-1123 label
_OBJECT_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference; `host` is lower-case `host[:port]`, `docker.io` when implied."""

    host: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def hostname(self) -> str:
        return self.host.rsplit(":", 1)[0] if ":" in self.host else self.host

    def with_host(self, host: str) -> str:
        text = f"{host}/{self.path}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _valid_hostport(host: str) -> bool:
    name, sep, port = host.partition(":")
    if sep and not (_PORT_RE.fullmatch(port) and 1 <= int(port) <= 65535):
        return False
    return all(_LABEL_RE.fullmatch(label) for label in name.split("."))


def parse_image(reference: str) -> ImageRef:
    """Split an image reference into host, path, tag and digest; ValueError if malformed.

    Registry hosts that are IP literals in brackets are not handled (they are never eligible).
    """
    if not isinstance(reference, str) or not reference or reference != reference.strip():
        raise ValueError(f"not an image reference: {reference!r}")
    rest, at, digest = reference.partition("@")
    if at and not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"bad digest in {reference!r}")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host = first.lower()
        if not _valid_hostport(host):
            raise ValueError(f"bad registry host in {reference!r}")
        name = remainder
    else:
        host, name = DOCKER_HUB, rest
    tag: str | None = None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(f"bad tag in {reference!r}")
    components = name.split("/")
    if not name or not all(_PATH_COMPONENT_RE.fullmatch(c) for c in components):
        raise ValueError(f"bad repository name in {reference!r}")
    if host == DOCKER_HUB and len(components) == 1:
        name = f"library/{name}"
    return ImageRef(host=host, path=name, tag=tag, digest=digest if at else None)


def host_matches(host: str, patterns: Sequence[str]) -> bool:
    """Does `host[:port]` match any of `webhook.registries`?

    `*.example.com` matches names with one or more labels before `example.com`; a pattern
    without a port matches the host on any port, one with a port only that port.
    """
    host = host.lower()
    hostname, _, port = host.partition(":")
    for pattern in patterns:
        p_host, p_sep, p_port = pattern.lower().partition(":")
        if p_sep and p_port != port:
            continue
        if p_host.startswith("*."):
            if hostname.endswith(p_host[1:]) and len(hostname) > len(p_host) - 1:
                return True
        elif hostname == p_host:
            return True
    return False


def rewrite_image(image: object, settings: AdmissionSettings) -> str | None:
    """The P2P form of an eligible image, or None to leave it as it is."""
    if not isinstance(image, str):
        return None
    try:
        ref = parse_image(image)
    except ValueError:
        return None
    if not host_matches(ref.host, settings.registries):
        return None
    new_host = p2p_host(ref.host, settings.endpoint_port)
    return None if new_host is None else ref.with_host(new_host)


def p2p_secret_name(source: str) -> str:
    return f"acr-credential-{source}-p2p"


# --------------------------------------------------------------------------------------------
# The decision


@dataclass(frozen=True)
class SecretPlan:
    """A pull secret to write before answering: `target` in `namespace`, copied from `source`."""

    namespace: str
    source: str
    target: str


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What to answer. An empty `patch` means "allowed, unchanged" and `reason` says why."""

    uid: str
    patch: tuple[dict[str, Any], ...] = ()
    secrets: tuple[SecretPlan, ...] = ()
    reason: str = ""
    dry_run: bool = False
    namespace: str = ""
    pod: str = ""
    rewritten: tuple[tuple[str, str], ...] = field(default=())

    def response(self) -> dict[str, Any]:
        """The AdmissionReview to send back, with the patch (if any)."""
        if not self.patch:
            return allowed_response(self.uid)
        body = allowed_response(self.uid)
        patch = json.dumps(list(self.patch), separators=(",", ":")).encode()
        body["response"]["patchType"] = "JSONPatch"
        body["response"]["patch"] = base64.b64encode(patch).decode("ascii")
        return body


def allowed_response(uid: str, warning: str | None = None) -> dict[str, Any]:
    """An AdmissionReview allowing the object unchanged (with a warning kubectl shows)."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if warning:
        response["warnings"] = [warning]
    return {"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": response}


def _pointer(*parts: str | int) -> str:
    """A JSON pointer (RFC 6901) from path parts."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _mapping(value: object, what: str, *, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise ReviewError(f"{what} must be an object")
    return value


def _string_map(value: object, what: str) -> dict[str, str]:
    found = _mapping(value, what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in found.items()):
        raise ReviewError(f"{what} must map strings to strings")
    return found


def _containers(spec: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    value = spec.get(kind)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise ReviewError(f"spec.{kind} must be a list of objects")
    for c in value:
        if not isinstance(c.get("name"), str):
            raise ReviewError(f"spec.{kind}[].name must be a string")
        if "image" in c and not isinstance(c["image"], str):
            raise ReviewError(f"spec.{kind}[].image must be a string")
    return value


def _pull_secret_names(spec: dict[str, Any]) -> list[str]:
    value = spec.get("imagePullSecrets")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
        raise ReviewError("spec.imagePullSecrets must be a list of objects")
    names = []
    for s in value:
        name = s.get("name")
        if name is not None and not isinstance(name, str):
            raise ReviewError("spec.imagePullSecrets[].name must be a string")
        if name:
            names.append(name)
    return names


def decode_review(body: bytes) -> object:
    """The JSON document of a POSTed review; ReviewError (400) when the body is not JSON.

    The body is the API server's, but the port is reachable by anything in the cluster, so
    what it decodes to is checked by `review_decision`, never trusted.
    """
    try:
        return json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError included
        raise ReviewError(f"body is not JSON: {exc}") from None
    except RecursionError:  # "[[[[...": the 4 MiB a review may have, nested
        raise ReviewError("body is not JSON this decoder reads: nested too deeply") from None


def _parse_review(review: object) -> tuple[dict[str, Any], str]:
    """Check the envelope; return (request, uid)."""
    if not isinstance(review, dict):
        raise ReviewError("body must be a JSON object (an AdmissionReview)")
    if review.get("apiVersion") != REVIEW_API_VERSION or review.get("kind") != "AdmissionReview":
        raise ReviewError(f"expected kind AdmissionReview, apiVersion {REVIEW_API_VERSION}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise ReviewError("AdmissionReview.request must be an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("AdmissionReview.request.uid must be a non-empty string")
    return request, uid


@dataclass(frozen=True)
class _Pod:
    """The parts of a reviewed Pod the decision reads, each checked for its type."""

    metadata: dict[str, Any]
    spec: dict[str, Any]
    labels: dict[str, str]
    annotations: dict[str, str]
    containers: dict[str, list[dict[str, Any]]]  # by kind, every one of CONTAINER_KINDS
    pull_secrets: list[str]
    namespace: str
    name: str


def _is_ephemeral_update(request: dict[str, Any]) -> bool:
    """Ephemeral containers are added to a running pod by an UPDATE of that subresource."""
    sub = request.get("subResource") or ""
    return request.get("operation") == "UPDATE" and sub == EPHEMERAL_SUBRESOURCE


def _not_rewritten_request(request: dict[str, Any]) -> str | None:
    """Why this request is left alone whatever the pod (not a pod, not a pod creation or
    ephemeral-container update); None when the pod must be looked at."""
    kind = _mapping(request.get("kind"), "request.kind")
    resource = _mapping(request.get("resource"), "request.resource")
    sub = request.get("subResource") or ""
    operation = request.get("operation")
    pod_kind = (kind.get("group", ""), kind.get("kind")) == ("", "Pod")
    if not (pod_kind and resource.get("resource") == "pods"):
        return "not a pod"
    if not (operation == "CREATE" and not sub) and not _is_ephemeral_update(request):
        return f"operation {operation} {sub or ''} is not rewritten"
    return None


def _parse_pod(request: dict[str, Any]) -> _Pod:
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise ReviewError("AdmissionReview.request.object must be a Pod object")
    # Required: the patch adds annotations under it (every pod the API server sends has it).
    metadata = _mapping(pod.get("metadata"), "object.metadata", optional=False)
    spec = _mapping(pod.get("spec"), "object.spec", optional=False)
    labels = _string_map(metadata.get("labels"), "object.metadata.labels")
    annotations = _string_map(metadata.get("annotations"), "object.metadata.annotations")
    containers = {k: _containers(spec, k) for k in CONTAINER_KINDS}
    if not containers["containers"]:
        raise ReviewError("object.spec.containers must list at least one container")
    pull_secrets = _pull_secret_names(spec)
    namespace = request.get("namespace") or metadata.get("namespace") or ""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        # The API server always names it; the pull secrets are read and written there.
        raise ReviewError(f"request.namespace must be a namespace name, got {namespace!r:.80}")
    name = str(metadata.get("name") or metadata.get("generateName") or "")
    return _Pod(metadata, spec, labels, annotations, containers, pull_secrets, namespace, name)


def _left_alone(pod: _Pod, settings: AdmissionSettings, ephemeral: bool) -> str | None:
    """Why this pod is not rewritten (its namespace, an opt-out, already done); None if it is."""
    if pod.namespace in SYSTEM_NAMESPACES or (
        settings.own_namespace and pod.namespace == settings.own_namespace
    ):
        return f"namespace {pod.namespace} is never rewritten"
    if pod.labels.get(LABEL, MODE) != MODE:
        return f"pod label {LABEL}={pod.labels[LABEL]} opts out"
    already = CONFIG_ANNOTATION in pod.annotations
    if ephemeral != already:
        # CREATE: already rewritten, leave alone. Ephemeral UPDATE: only for rewritten pods,
        # whose P2P pull secrets are already in place.
        return "already rewritten" if already else "pod was not rewritten at creation"
    return None


def _image_ops(
    pod: _Pod, kinds: Sequence[str], settings: AdmissionSettings
) -> tuple[list[dict[str, Any]], list[tuple[str, str]], list[dict[str, str]]]:
    """The image replacements: (patch ops, (original, p2p) pairs, the annotation's record)."""
    ops: list[dict[str, Any]] = []
    rewritten: list[tuple[str, str]] = []
    record: list[dict[str, str]] = []
    for k in kinds:
        for i, c in enumerate(pod.containers[k]):
            new = rewrite_image(c.get("image"), settings)
            if new is None:
                continue
            ops.append({"op": "replace", "path": _pointer("spec", k, i, "image"), "value": new})
            rewritten.append((c["image"], new))
            record.append({"kind": k, "name": c["name"], "original": c["image"], "p2p": new})
    return ops, rewritten, record


def _secret_plans(pod: _Pod) -> list[SecretPlan] | str:
    """A P2P copy of each pull secret the pod names (not of copies it already names), in
    order, once each; a reason instead when a name is not an object name (mutating webhooks
    run before the pod is validated, and the name goes into the URLs the webhook reads and
    writes secrets at: "..", "a/b" or "a?b" must never reach them) or a copy's name would be
    too long."""
    secrets = pod.pull_secrets
    unique_sources = [s for i, s in enumerate(secrets) if s not in secrets[:i]]
    sources = [
        s for s in unique_sources if not (s.startswith("acr-credential-") and s.endswith("-p2p"))
    ]
    plans = []
    for source in sources:
        if not _OBJECT_NAME_RE.fullmatch(source):
            return f"pull secret name {source[:80]!r} is not a Kubernetes object name"
        target = p2p_secret_name(source)
        if len(target) > _MAX_NAME:
            return f"pull secret name {source!r} is too long to copy"
        plans.append(SecretPlan(pod.namespace, source, target))
    return plans


def _creation_ops(
    pod: _Pod, record: list[dict[str, str]], plans: Sequence[SecretPlan], endpoint_port: int
) -> list[dict[str, Any]]:
    """What a pod creation gets besides its images: the P2P copies appended to
    ``imagePullSecrets``, the mode label's annotation and ``p2p-config`` (what was rewritten)."""
    ops: list[dict[str, Any]] = []
    new_secrets = [p.target for p in plans if p.target not in pod.pull_secrets]
    if new_secrets and "imagePullSecrets" not in pod.spec:
        value = [{"name": n} for n in new_secrets]
        ops.append({"op": "add", "path": "/spec/imagePullSecrets", "value": value})
    else:
        path = "/spec/imagePullSecrets/-"
        ops += [{"op": "add", "path": path, "value": {"name": n}} for n in new_secrets]
    config = {
        "version": 1,
        "endpointPort": endpoint_port,
        "images": record,
        "pullSecrets": {p.source: p.target for p in plans},
    }
    added = {LABEL: MODE, CONFIG_ANNOTATION: json.dumps(config, separators=(",", ":"))}
    metadata = pod.metadata
    if "annotations" not in metadata or metadata.get("annotations") is None:
        op = "add" if "annotations" not in metadata else "replace"
        ops.append({"op": op, "path": "/metadata/annotations", "value": added})
    else:
        ops += [
            {"op": "add", "path": _pointer("metadata", "annotations", k), "value": v}
            for k, v in added.items()
        ]
    return ops


def review_decision(review: object, settings: AdmissionSettings) -> Decision:
    """Decide what to do with one AdmissionReview (see the module docstring)."""
    request, uid = _parse_review(review)
    skipped = _not_rewritten_request(request)
    if skipped is not None:
        return Decision(uid=uid, reason=skipped)
    ephemeral = _is_ephemeral_update(request)
    pod = _parse_pod(request)
    base = {
        "uid": uid,
        "dry_run": request.get("dryRun") is True,
        "namespace": pod.namespace,
        "pod": pod.name,
    }
    why = _left_alone(pod, settings, ephemeral)
    if why is not None:
        return Decision(**base, reason=why)
    kinds = ("ephemeralContainers",) if ephemeral else CONTAINER_KINDS
    ops, rewritten, record = _image_ops(pod, kinds, settings)
    if not ops:
        return Decision(**base, reason="no image from a P2P registry")
    plans = _secret_plans(pod)
    if isinstance(plans, str):
        return Decision(**base, reason=plans)
    if not ephemeral:  # an ephemeral container uses the pod's secrets and annotations as they are
        ops += _creation_ops(pod, record, plans, settings.endpoint_port)
    return Decision(
        **base,
        patch=tuple(ops),
        secrets=tuple(plans),
        reason=f"{len(rewritten)} image(s) rewritten",
        rewritten=tuple(rewritten),
    )

"""The P2P copies of pull secrets, without I/O: what `acr-credential-S-p2p` must hold.

The webhook rewrites a pod's images to P2P host names (`agent.kube.admission`); the kubelet
then looks for credentials under those names. For each pull secret ``S`` the pod names,
`derive_secret` computes the wanted copy: the same type and credentials, every registry key
that matches ``webhook.registries`` moved to its P2P host, keys of other registries left out
(the pod keeps ``S`` for them). `copy_action` compares it with what is stored: create it,
patch its data, leave it, or -- when a secret Pollen did not make already holds the name --
leave that secret untouched (`is_ours`: the label and annotation every copy carries). The
caller (agent/kube/webhook.py) re-derives the copy at each admission, which is how it
follows ``S``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.core.p2pnames import p2p_host
from agent.kube.admission import AdmissionSettings, SecretPlan, host_matches

MANAGED_BY = ("app.kubernetes.io/managed-by", "pollen")
SOURCE_ANNOTATION = "pollen.io/source-secret"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DOCKERCONFIGJSON = ("kubernetes.io/dockerconfigjson", ".dockerconfigjson")
_DOCKERCFG = ("kubernetes.io/dockercfg", ".dockercfg")


class DeriveError(ValueError):
    """A pull secret cannot be copied for the P2P hosts (wrong type, unreadable data)."""


def _key_host(key: str) -> str:
    """A docker config key (`host`, `https://host/v1/`, `host:port/path`) -> `host[:port]`."""
    text = key.strip().lower()
    if "://" in text:
        text = text.split("://", 1)[1]
    return text.split("/", 1)[0]


def _p2p_keys(key: str, settings: AdmissionSettings) -> list[str]:
    """The P2P hosts that should carry the credentials stored under `key`."""
    host = _key_host(key)
    candidates = ["docker.io", "index.docker.io"] if host in _HUB_ALIASES else [host]
    found = []
    for candidate in candidates:
        if host_matches(candidate, settings.registries):
            new = p2p_host(candidate, settings.endpoint_port)
            if new is not None and new not in found:
                found.append(new)
    return found


def _decode(data: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    raw = data.get(key)
    if not isinstance(raw, str):
        raise DeriveError(f"secret {source} has no {key} data")
    try:
        parsed = json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError, RecursionError) as exc:  # Recursion: "[[[[..."
        raise DeriveError(f"secret {source}: {key} is not base64 JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise DeriveError(f"secret {source}: {key} is not a JSON object")
    return parsed


def _encode(value: object) -> str:
    return base64.b64encode(json.dumps(value, sort_keys=True).encode()).decode("ascii")


def derive_secret(
    source: Mapping[str, Any], plan: SecretPlan, settings: AdmissionSettings
) -> dict[str, Any]:
    """The P2P copy of pull secret `source` (a Secret as the API returns it): the same type
    and credentials, with every registry key that matches `webhook.registries` moved to its
    P2P host. Keys for other registries are left out (the pod keeps `source` for them)."""
    secret_type = source.get("type")
    data = source.get("data") or {}
    if not isinstance(data, Mapping):
        raise DeriveError(f"secret {plan.source} has malformed data")
    if secret_type == _DOCKERCONFIGJSON[0]:
        config = _decode(data, _DOCKERCONFIGJSON[1], plan.source)
        auths = config.get("auths", {})
        if not isinstance(auths, dict):
            raise DeriveError(f"secret {plan.source}: auths is not an object")
        new_auths = {k2: v for k, v in auths.items() for k2 in _p2p_keys(k, settings)}
        payload = {_DOCKERCONFIGJSON[1]: _encode({"auths": new_auths})}
    elif secret_type == _DOCKERCFG[0]:
        config = _decode(data, _DOCKERCFG[1], plan.source)
        payload = {
            _DOCKERCFG[1]: _encode(
                {k2: v for k, v in config.items() for k2 in _p2p_keys(k, settings)}
            )
        }
    else:
        raise DeriveError(
            f"secret {plan.source} has type {secret_type!r}, not a docker config pull secret"
        )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": plan.target,
            "namespace": plan.namespace,
            "labels": {MANAGED_BY[0]: MANAGED_BY[1]},
            "annotations": {SOURCE_ANNOTATION: plan.source},
        },
        "type": secret_type,
        "data": payload,
    }


def is_ours(existing: Mapping[str, Any], source: str) -> bool:
    """Whether a stored secret is Pollen's copy of `source`: it carries both marks
    `derive_secret` puts on every copy. Anything else with the copy's name belongs to someone
    else -- a forged review can name any namespace, so the name alone proves nothing."""
    meta = existing.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    return (
        labels.get(MANAGED_BY[0]) == MANAGED_BY[1] and annotations.get(SOURCE_ANNOTATION) == source
    )


@dataclass(frozen=True)
class CopyAction:
    """What to do about one P2P copy: `kind` is ``create`` (POST `body`), ``patch`` (a JSON
    patch, `ops`), ``unchanged`` or ``foreign`` (a secret we did not make holds the name: leave
    it alone); `reason` says why, for the log."""

    kind: str
    reason: str
    body: Mapping[str, Any] | None = None
    ops: tuple[dict[str, Any], ...] = ()


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def copy_action(
    existing: Mapping[str, Any] | None, desired: Mapping[str, Any], source: str
) -> CopyAction:
    """Decide how to bring the stored copy (`existing`, None when absent) to `desired`.

    An update is a JSON patch that replaces only ``data`` and first *tests*, on the API
    server, the resourceVersion we read and both of our marks: were the secret replaced by
    someone else's between our read and our write, the server refuses the patch (422) instead
    of overwriting it. A copy whose type no longer matches its source cannot be patched (the
    type of a Secret is immutable): DeriveError says so.
    """
    if existing is None:
        return CopyAction("create", "absent", body=desired)
    if not is_ours(existing, source):
        return CopyAction(
            "foreign",
            f"not made by pollen (no {MANAGED_BY[0]}={MANAGED_BY[1]} label and "
            f"{SOURCE_ANNOTATION}={source} annotation)",
        )
    if existing.get("type") != desired["type"]:
        raise DeriveError(
            f"the copy has type {existing.get('type')!r} but its source now has "
            f"{desired['type']!r}; delete the copy and the next pod re-creates it"
        )
    if existing.get("data") == desired["data"]:
        return CopyAction("unchanged", "up to date")
    meta = existing.get("metadata") or {}
    ops: list[dict[str, Any]] = []
    if meta.get("resourceVersion"):
        ops.append(
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
        )
    ops += [
        {
            "op": "test",
            "path": _pointer("metadata", "labels", MANAGED_BY[0]),
            "value": MANAGED_BY[1],
        },
        {
            "op": "test",
            "path": _pointer("metadata", "annotations", SOURCE_ANNOTATION),
            "value": source,
        },
        {"op": "replace", "path": "/data", "value": desired["data"]},
    ]
    return CopyAction("patch", "its source changed", ops=tuple(ops))

"""The P2P copies of pull secrets, without I/O: what `acr-credential-S-p2p` must hold.

The webhook rewrites a pod's images to P2P host names (`agent.kube.admission`); the kubelet
then looks for credentials under those names. For each pull secret ``S`` the pod names,
`derive_secret` computes the wanted copy: the same type and credentials, every registry key
that matches ``webhook.registries`` moved to its P2P host, keys of other registries left out
(the pod keeps ``S`` for them). `secret_differs` says whether a stored copy must be updated
and `merged_secret` is that update, keeping what others put on the object. The caller
(agent/kube/webhook.py) re-derives the copy at each admission, which is how it follows ``S``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from agent.kube.admission import AdmissionSettings, SecretPlan, host_matches, p2p_host

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


def secret_differs(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether the stored copy must be updated: its data, or our label/annotation, differ."""
    if existing.get("data") != desired["data"]:
        return True
    meta = existing.get("metadata") or {}
    want = desired["metadata"]
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    return any(labels.get(k) != v for k, v in want["labels"].items()) or any(
        annotations.get(k) != v for k, v in want["annotations"].items()
    )


def merged_secret(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """`existing` with `desired`'s data, label and annotation, for an update (PUT) that keeps
    the resourceVersion (optimistic concurrency) and anything else others put there."""
    meta = dict(existing.get("metadata") or {})
    meta["labels"] = {**(meta.get("labels") or {}), **desired["metadata"]["labels"]}
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        **desired["metadata"]["annotations"],
    }
    out = dict(existing)
    out["metadata"] = meta
    out["data"] = desired["data"]
    return out

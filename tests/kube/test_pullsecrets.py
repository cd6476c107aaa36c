"""The P2P copies of pull secrets (agent/kube/pullsecrets.py): what the kubelet will find
under the P2P host names, and when a stored copy must be updated."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from agent.kube.admission import SecretPlan
from agent.kube.pullsecrets import (
    MANAGED_BY,
    SOURCE_ANNOTATION,
    DeriveError,
    derive_secret,
    merged_secret,
    secret_differs,
)
from tests.kube.test_admission import ACR, ACR_P2P, SETTINGS


def dockerconfig(auths: dict[str, Any]) -> dict[str, Any]:
    payload = base64.b64encode(json.dumps({"auths": auths}).encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "test-registry", "namespace": "team", "resourceVersion": "41"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": payload},
    }


def decoded(secret: dict[str, Any], key: str = ".dockerconfigjson") -> dict[str, Any]:
    return json.loads(base64.b64decode(secret["data"][key]))


PLAN = SecretPlan("team", "test-registry", "acr-credential-test-registry-p2p")
CREDS = {"username": "u", "password": "p", "auth": base64.b64encode(b"u:p").decode()}


def test_derive_moves_matching_keys_to_the_p2p_hosts() -> None:
    source = dockerconfig(
        {ACR: CREDS, "https://quay.io": {"auth": "eA=="}, "https://index.docker.io/v1/": CREDS}
    )
    secret = derive_secret(source, PLAN, SETTINGS)
    assert secret["metadata"]["name"] == "acr-credential-test-registry-p2p"
    assert secret["metadata"]["namespace"] == "team"
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert decoded(secret) == {
        "auths": {
            ACR_P2P: CREDS,
            "docker.distributed.io:65001": CREDS,  # Hub's key, for the name images use
        }
    }


def test_the_copy_says_who_manages_it_and_where_it_comes_from() -> None:
    secret = derive_secret(dockerconfig({ACR: CREDS}), PLAN, SETTINGS)
    assert secret["metadata"]["labels"] == {MANAGED_BY[0]: MANAGED_BY[1]}
    assert secret["metadata"]["annotations"] == {SOURCE_ANNOTATION: "test-registry"}
    stored = copy.deepcopy(secret)
    del stored["metadata"]["annotations"][SOURCE_ANNOTATION]
    assert secret_differs(stored, secret)  # a copy that lost its source annotation is rewritten


def test_derive_legacy_dockercfg() -> None:
    payload = base64.b64encode(json.dumps({f"https://{ACR}": CREDS}).encode()).decode()
    source = {"type": "kubernetes.io/dockercfg", "data": {".dockercfg": payload}}
    secret = derive_secret(source, PLAN, SETTINGS)
    assert decoded(secret, ".dockercfg") == {ACR_P2P: CREDS}


@pytest.mark.parametrize(
    "source",
    [
        {"type": "Opaque", "data": {"x": "eQ=="}},
        {"type": "kubernetes.io/dockerconfigjson", "data": {}},
        {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "!!"}},
        {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "WzFd"}},
        # "[" nested past the decoder's depth: RecursionError escaped and the webhook said 500.
        {
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(b"[" * 100_000).decode()},
        },
    ],
)
def test_derive_refuses_what_is_not_a_pull_secret(source: dict[str, Any]) -> None:
    with pytest.raises(DeriveError):
        derive_secret(source, PLAN, SETTINGS)


def test_secret_differs_and_merge() -> None:
    desired = derive_secret(dockerconfig({ACR: CREDS}), PLAN, SETTINGS)
    stored = copy.deepcopy(desired)
    stored["metadata"]["resourceVersion"] = "7"
    stored["metadata"]["labels"]["team"] = "x"
    assert not secret_differs(stored, desired)
    changed = derive_secret(dockerconfig({ACR: {"auth": "bmV3Om5ldw=="}}), PLAN, SETTINGS)
    assert secret_differs(stored, changed)
    merged = merged_secret(stored, changed)
    assert merged["data"] == changed["data"]
    assert merged["metadata"]["resourceVersion"] == "7"  # optimistic concurrency
    assert merged["metadata"]["labels"]["team"] == "x"  # others' labels kept
    assert not secret_differs(merged, changed)

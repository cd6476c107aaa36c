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
    copy_action,
    derive_secret,
    is_ours,
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


def test_credentials_for_two_ports_of_one_host_stay_apart() -> None:
    """Issue 13, item 3: `a.cr.aliyuncs.com:5000`'s credential was written under the same P2P
    name as `a.cr.aliyuncs.com`'s, and one replaced the other."""
    source = dockerconfig(
        {"a.cr.aliyuncs.com:5000": {"auth": "NTAwMA=="}, "a.cr.aliyuncs.com": {"auth": "NDQz"}}
    )
    assert decoded(derive_secret(source, PLAN, SETTINGS)) == {
        "auths": {
            "a.distributed-5000.cr.aliyuncs.com:65001": {"auth": "NTAwMA=="},
            "a.distributed.cr.aliyuncs.com:65001": {"auth": "NDQz"},
        }
    }


def test_the_copy_says_who_manages_it_and_where_it_comes_from() -> None:
    secret = derive_secret(dockerconfig({ACR: CREDS}), PLAN, SETTINGS)
    assert secret["metadata"]["labels"] == {MANAGED_BY[0]: MANAGED_BY[1]}
    assert secret["metadata"]["annotations"] == {SOURCE_ANNOTATION: "test-registry"}
    assert is_ours(secret, "test-registry")
    assert not is_ours(secret, "other-source")  # the name is the copy of one source only
    for marks in ("labels", "annotations"):
        stored = copy.deepcopy(secret)
        del stored["metadata"][marks]
        assert not is_ours(stored, "test-registry")  # either mark missing: not ours


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


def test_copy_action_creates_patches_or_leaves_alone() -> None:
    desired = derive_secret(dockerconfig({ACR: CREDS}), PLAN, SETTINGS)
    assert copy_action(None, desired, "test-registry").kind == "create"
    stored = copy.deepcopy(desired)
    stored["metadata"]["resourceVersion"] = "7"
    stored["metadata"]["labels"]["team"] = "x"  # others' marks do not matter
    assert copy_action(stored, desired, "test-registry").kind == "unchanged"
    changed = derive_secret(dockerconfig({ACR: {"auth": "bmV3Om5ldw=="}}), PLAN, SETTINGS)
    action = copy_action(stored, changed, "test-registry")
    assert action.kind == "patch"
    # The API server checks, atomically with the write, that it is still our copy as read.
    assert action.ops == (
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "test", "path": "/metadata/labels/app.kubernetes.io~1managed-by", "value": "pollen"},
        {
            "op": "test",
            "path": "/metadata/annotations/pollen.io~1source-secret",
            "value": "test-registry",
        },
        {"op": "replace", "path": "/data", "value": changed["data"]},
    )


@pytest.mark.parametrize(
    "stored",
    [
        # Someone's own secret under the copy's name (issue 13, item 1).
        {"type": "Opaque", "metadata": {"name": "acr-credential-test-registry-p2p"}, "data": {}},
        # A pull secret that looks like a copy but lacks our marks.
        {
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {
                "name": "acr-credential-test-registry-p2p",
                "labels": {MANAGED_BY[0]: "x"},
            },
            "data": {},
        },
    ],
)
def test_a_secret_pollen_did_not_make_is_foreign(stored: dict[str, Any]) -> None:
    desired = derive_secret(dockerconfig({ACR: CREDS}), PLAN, SETTINGS)
    action = copy_action(stored, desired, "test-registry")
    assert action.kind == "foreign" and not action.ops and action.body is None


def test_a_copy_whose_source_changed_type_is_not_patched() -> None:
    desired = derive_secret(dockerconfig({ACR: CREDS}), PLAN, SETTINGS)
    stored = {**copy.deepcopy(desired), "type": "kubernetes.io/dockercfg"}
    with pytest.raises(DeriveError, match="delete the copy"):
        copy_action(stored, desired, "test-registry")

"""The webhook's decisions (agent/kube/admission.py) on real-shaped AdmissionReview JSON.

Each rule of the webhook is checked by applying the returned JSONPatch to the pod with the
`jsonpatch` library, as the API server would, and looking at the result.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest

from agent.kube.admission import (
    CONFIG_ANNOTATION,
    LABEL,
    AdmissionSettings,
    ImageRef,
    ReviewError,
    SecretPlan,
    decode_review,
    host_matches,
    p2p_host,
    parse_image,
    review_decision,
    rewrite_image,
)

ACR = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
ACR_P2P = "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001"
SETTINGS = AdmissionSettings(
    registries=("*.cr.aliyuncs.com", "registry.example.com:5000", "docker.io"),
    endpoint_port=65001,
    own_namespace="pollen-system",
)
DIGEST = "sha256:" + "ab" * 32


def pod(
    *,
    images: list[str] | None = None,
    init: list[str] | None = None,
    ephemeral: list[str] | None = None,
    secrets: list[str] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Pod as a Deployment's ReplicaSet creates it (generateName, no name yet)."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": f"c{i}",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
            }
            for i, image in enumerate(images or [f"{ACR}/docker-builder/nginx:latest"])
        ],
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "schedulerName": "default-scheduler",
    }
    if init is not None:
        spec["initContainers"] = [{"name": f"i{i}", "image": x} for i, x in enumerate(init)]
    if ephemeral is not None:
        spec["ephemeralContainers"] = [
            {"name": f"e{i}", "image": x, "targetContainerName": "c0"}
            for i, x in enumerate(ephemeral)
        ]
    if secrets is not None:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    metadata: dict[str, Any] = {
        "generateName": "web-7d9c8b6f5-",
        "namespace": "team",
        "labels": {"app": "web", "pod-template-hash": "7d9c8b6f5", **(labels or {})},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-7d9c8b6f5",
                "uid": "5b8f3c2e-0000-4000-8000-000000000001",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": {}}


def review(
    obj: dict[str, Any],
    *,
    namespace: str = "team",
    operation: str = "CREATE",
    sub: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """An AdmissionReview as kube-apiserver sends it (admission.k8s.io/v1)."""
    request: dict[str, Any] = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "operation": operation,
        "userInfo": {
            "username": "system:serviceaccount:kube-system:replicaset-controller",
            "uid": "a6c1f9a2-0000-4000-8000-000000000002",
            "groups": ["system:serviceaccounts", "system:authenticated"],
        },
        "object": obj,
        "oldObject": None,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    if sub:
        request["subResource"] = sub
        request["requestSubResource"] = sub
        request["oldObject"] = copy.deepcopy(obj)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def apply(rev: dict[str, Any], settings: AdmissionSettings = SETTINGS) -> tuple[dict, Any]:
    """(patched pod, decision): the patch decoded from the response and applied."""
    decision = review_decision(rev, settings)
    response = decision.response()
    assert response["apiVersion"] == "admission.k8s.io/v1"
    assert response["kind"] == "AdmissionReview"
    body = response["response"]
    assert body["uid"] == rev["request"]["uid"] and body["allowed"] is True
    obj = rev["request"]["object"]
    if "patch" not in body:
        assert "patchType" not in body
        return obj, decision
    assert body["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(body["patch"]))
    return jsonpatch.apply_patch(obj, ops), decision


def images(p: dict[str, Any], kind: str = "containers") -> list[str]:
    return [c["image"] for c in p["spec"].get(kind, [])]


# --------------------------------------------------------------------------------------------
# Image references


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("nginx", ImageRef("docker.io", "library/nginx")),
        ("nginx:1.25", ImageRef("docker.io", "library/nginx", "1.25")),
        ("team/app", ImageRef("docker.io", "team/app")),
        ("docker.io/team/app:v1", ImageRef("docker.io", "team/app", "v1")),
        (f"{ACR}/a/b:latest", ImageRef(ACR, "a/b", "latest")),
        (f"{ACR}/a/b@{DIGEST}", ImageRef(ACR, "a/b", None, DIGEST)),
        (f"{ACR}/a/b:v1@{DIGEST}", ImageRef(ACR, "a/b", "v1", DIGEST)),
        ("registry.example.com:5000/app", ImageRef("registry.example.com:5000", "app")),
        ("localhost/app", ImageRef("localhost", "app")),
        ("localhost:5000/app:v1", ImageRef("localhost:5000", "app", "v1")),
        ("Reg.Example.COM/app", ImageRef("reg.example.com", "app")),
    ],
)
def test_parse_image(text: str, ref: ImageRef) -> None:
    assert parse_image(text) == ref


@pytest.mark.parametrize(
    "text",
    ["", " nginx", "nginx:", "Nginx", "reg.example.com/", "a//b", "nginx@sha256:zz", "x:-y"],
)
def test_parse_image_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_image(text)


@pytest.mark.parametrize(
    ("host", "patterns", "matches"),
    [
        (ACR, ("*.cr.aliyuncs.com",), True),
        ("cr.aliyuncs.com", ("*.cr.aliyuncs.com",), False),  # * is at least one label
        ("evilcr.aliyuncs.com", ("*.cr.aliyuncs.com",), False),
        ("registry.example.com:5000", ("registry.example.com",), True),  # any port
        ("registry.example.com:5000", ("registry.example.com:5000",), True),
        ("registry.example.com", ("registry.example.com:5000",), False),
        ("registry.example.com:6000", ("registry.example.com:5000",), False),
        ("REGISTRY.example.com", ("registry.example.com",), True),
        ("docker.io", ("*.cr.aliyuncs.com",), False),
    ],
)
def test_host_matches(host: str, patterns: tuple[str, ...], matches: bool) -> None:
    assert host_matches(host, patterns) is matches


@pytest.mark.parametrize(
    ("host", "p2p"),
    [
        (ACR, ACR_P2P),
        # The registry's port stays in the name, in the marker (issue 13, item 3: it was
        # dropped, and the agent sent the pull to the registry on 443).
        ("registry.example.com:5000", "registry.distributed-5000.example.com:65001"),
        ("registry.example.com:443", "registry.distributed.example.com:65001"),  # https's own
        ("registry.example.com:80", "registry.distributed-80.example.com:65001"),
        ("a.distributed-5000.b", None),  # already a P2P name, with a port
        ("docker.io", "docker.distributed.io:65001"),
        ("localhost", None),  # one label: nothing to put the label after
        ("127.0.0.1:5000", None),
        (ACR_P2P, None),  # already a P2P name
    ],
)
def test_p2p_host(host: str, p2p: str | None) -> None:
    assert p2p_host(host, 65001) == p2p


@pytest.mark.parametrize(
    ("image", "rewritten"),
    [
        (f"{ACR}/docker-builder/nginx:latest", f"{ACR_P2P}/docker-builder/nginx:latest"),
        (f"{ACR}/a/b@{DIGEST}", f"{ACR_P2P}/a/b@{DIGEST}"),
        (f"{ACR}/a/b:v2@{DIGEST}", f"{ACR_P2P}/a/b:v2@{DIGEST}"),
        (f"{ACR}/a/b", f"{ACR_P2P}/a/b"),  # no tag stays no tag (the runtime adds latest)
        ("nginx:1.25", "docker.distributed.io:65001/library/nginx:1.25"),
        (
            "registry.example.com:5000/app:v1",
            "registry.distributed-5000.example.com:65001/app:v1",
        ),
        ("registry.example.com/app:v1", None),  # the pattern names port 5000
        ("quay.io/x/y:1", None),
        (f"{ACR_P2P}/a/b:v1", None),
        ("not a reference", None),
    ],
)
def test_rewrite_image(image: str, rewritten: str | None) -> None:
    assert rewrite_image(image, SETTINGS) == rewritten


# --------------------------------------------------------------------------------------------
# Pods


def test_rewrites_every_kind_of_container_and_records_the_originals() -> None:
    obj = pod(
        images=[f"{ACR}/docker-builder/nginx:latest", "quay.io/other/sidecar:1"],
        init=[f"{ACR}/tools/init@{DIGEST}"],
        secrets=["test-registry"],
    )
    patched, decision = apply(review(obj))
    assert images(patched) == [f"{ACR_P2P}/docker-builder/nginx:latest", "quay.io/other/sidecar:1"]
    assert images(patched, "initContainers") == [f"{ACR_P2P}/tools/init@{DIGEST}"]
    annotations = patched["metadata"]["annotations"]
    assert annotations[LABEL] == "p2p"
    config = json.loads(annotations[CONFIG_ANNOTATION])
    assert {(i["kind"], i["name"], i["original"]) for i in config["images"]} == {
        ("containers", "c0", f"{ACR}/docker-builder/nginx:latest"),
        ("initContainers", "i0", f"{ACR}/tools/init@{DIGEST}"),
    }
    assert config["pullSecrets"] == {"test-registry": "acr-credential-test-registry-p2p"}
    assert patched["spec"]["imagePullSecrets"] == [
        {"name": "test-registry"},
        {"name": "acr-credential-test-registry-p2p"},
    ]
    assert decision.secrets == (
        SecretPlan("team", "test-registry", "acr-credential-test-registry-p2p"),
    )
    # Everything else is untouched.
    for key in ("restartPolicy", "dnsPolicy", "serviceAccountName"):
        assert patched["spec"][key] == obj["spec"][key]
    assert patched["metadata"]["labels"] == obj["metadata"]["labels"]


def test_existing_annotations_are_kept() -> None:
    obj = pod(annotations={"prometheus.io/scrape": "true"})
    patched, _ = apply(review(obj))
    annotations = patched["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations[LABEL] == "p2p" and CONFIG_ANNOTATION in annotations


def test_no_pull_secrets_means_none_added() -> None:
    patched, decision = apply(review(pod()))
    assert images(patched) == [f"{ACR_P2P}/docker-builder/nginx:latest"]
    assert "imagePullSecrets" not in patched["spec"]
    assert decision.secrets == ()


def test_each_pull_secret_gets_its_copy_once() -> None:
    obj = pod(secrets=["a", "b", "a", "acr-credential-a-p2p"])
    patched, decision = apply(review(obj))
    names = [s["name"] for s in patched["spec"]["imagePullSecrets"]]
    assert names == ["a", "b", "a", "acr-credential-a-p2p", "acr-credential-b-p2p"]
    assert [p.source for p in decision.secrets] == ["a", "b"]


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../kube-system/x", "a?b", "Upper", "-a"])
def test_a_pull_secret_that_is_no_object_name_leaves_the_pod_alone(name: str) -> None:
    # Found by fuzz/admission_review.py: the webhook runs before the pod is validated, and the
    # name went as it was into the URLs it reads and writes secrets at.
    patched, decision = apply(review(pod(secrets=["ok", name])))
    assert decision.patch == () and decision.secrets == ()
    assert "not a Kubernetes object name" in decision.reason
    assert images(patched) == [f"{ACR}/docker-builder/nginx:latest"]


def test_rewritten_pod_is_left_alone_on_reinvocation() -> None:
    first, _ = apply(review(pod(secrets=["s"])))
    again, decision = apply(review(first))
    assert again == first
    assert decision.patch == () and "already" in decision.reason


@pytest.mark.parametrize("namespace", ["kube-system", "pollen-system"])
def test_own_namespace_and_kube_system_are_skipped(namespace: str) -> None:
    obj = pod()
    patched, decision = apply(review(obj, namespace=namespace))
    assert patched == obj and decision.patch == ()


@pytest.mark.parametrize("value", ["none", "off", "", "P2P"])
def test_pod_labelled_with_another_value_opts_out(value: str) -> None:
    obj = pod(labels={LABEL: value})
    patched, decision = apply(review(obj))
    assert patched == obj and "opts out" in decision.reason


def test_pod_labelled_p2p_is_rewritten() -> None:
    patched, _ = apply(review(pod(labels={LABEL: "p2p"})))
    assert images(patched) == [f"{ACR_P2P}/docker-builder/nginx:latest"]


def test_pod_without_eligible_images_is_unchanged() -> None:
    obj = pod(images=["quay.io/a/b:1", "ghcr.io/c/d:2"], secrets=["s"])
    patched, decision = apply(review(obj))
    assert patched == obj and decision.secrets == ()


def test_dry_run_is_flagged_and_patched_the_same() -> None:
    obj = pod(secrets=["s"])
    live, _ = apply(review(obj))
    dry, decision = apply(review(obj, dry_run=True))
    assert decision.dry_run and dry == live


def test_ephemeral_container_of_a_rewritten_pod() -> None:
    created, _ = apply(review(pod(secrets=["s"])))
    created["spec"]["ephemeralContainers"] = [
        {"name": "debug", "image": f"{ACR}/tools/debug:1", "targetContainerName": "c0"}
    ]
    patched, decision = apply(review(created, operation="UPDATE", sub="ephemeralcontainers"))
    assert images(patched, "ephemeralContainers") == [f"{ACR_P2P}/tools/debug:1"]
    # Only the ephemeral container changes in that subresource; secrets are refreshed.
    assert patched["metadata"] == created["metadata"]
    assert patched["spec"]["containers"] == created["spec"]["containers"]
    assert [p.target for p in decision.secrets] == ["acr-credential-s-p2p"]


def test_ephemeral_container_of_a_pod_not_rewritten_is_left_alone() -> None:
    obj = pod(ephemeral=[f"{ACR}/tools/debug:1"])
    patched, decision = apply(review(obj, operation="UPDATE", sub="ephemeralcontainers"))
    assert patched == obj and decision.patch == ()


@pytest.mark.parametrize(
    ("operation", "sub"), [("UPDATE", None), ("DELETE", None), ("CREATE", "binding")]
)
def test_other_operations_are_allowed_unchanged(operation: str, sub: str | None) -> None:
    rev = review(pod(), operation=operation)
    if sub:
        rev["request"]["subResource"] = sub
    patched, decision = apply(rev)
    assert decision.patch == ()


def test_other_kinds_are_allowed_unchanged() -> None:
    rev = review(pod())
    rev["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    rev["request"]["resource"] = {"group": "apps", "version": "v1", "resource": "deployments"}
    assert review_decision(rev, SETTINGS).patch == ()


def _broken(mutate: Any) -> dict[str, Any]:
    rev = review(pod())
    mutate(rev)
    return rev


@pytest.mark.parametrize(
    ("rev", "reason"),
    [
        (None, "JSON object"),
        ([], "JSON object"),
        ({"kind": "AdmissionReview"}, "apiVersion"),
        (_broken(lambda r: r.__setitem__("apiVersion", "admission.k8s.io/v1beta1")), "v1"),
        (_broken(lambda r: r.pop("request")), "request"),
        (_broken(lambda r: r["request"].pop("uid")), "uid"),
        (_broken(lambda r: r["request"].__setitem__("object", "pod")), "object"),
        (_broken(lambda r: r["request"]["object"].pop("spec")), "spec"),
        # Found by fuzz/admission_review.py: the patch added /metadata/annotations to no
        # metadata, which the API server cannot apply.
        (_broken(lambda r: r["request"]["object"].pop("metadata")), "metadata"),
        (_broken(lambda r: r["request"]["object"].__setitem__("metadata", None)), "metadata"),
        # Found by fuzz/admission_review.py: with no namespace the pull secrets were planned
        # in namespace "" (/api/v1/namespaces//secrets).
        (
            _broken(
                lambda r: (
                    r["request"].pop("namespace"),
                    r["request"]["object"]["metadata"].pop("namespace"),
                )
            ),
            "namespace",
        ),
        (_broken(lambda r: r["request"].__setitem__("namespace", "a/b")), "namespace"),
        (_broken(lambda r: r["request"]["object"]["spec"].__setitem__("containers", [])), "one"),
        (
            _broken(lambda r: r["request"]["object"]["spec"]["containers"][0].update(image=5)),
            "image",
        ),
        (
            _broken(lambda r: r["request"]["object"]["spec"].__setitem__("imagePullSecrets", "s")),
            "imagePullSecrets",
        ),
        (
            _broken(lambda r: r["request"]["object"]["metadata"].__setitem__("labels", [])),
            "labels",
        ),
    ],
)
def test_malformed_reviews_raise_with_a_reason(rev: object, reason: str) -> None:
    with pytest.raises(ReviewError, match=reason):
        review_decision(rev, SETTINGS)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        # Nested past the decoder's depth: RecursionError escaped and the webhook said 500.
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a":' * 100_000, "nested too deeply"),
    ],
)
def test_a_body_that_is_not_json_is_a_review_error(body: bytes, reason: str) -> None:
    with pytest.raises(ReviewError, match=reason):
        decode_review(body)


def test_decision_is_pure() -> None:
    rev = review(pod(secrets=["s"], init=[f"{ACR}/x/y:1"]))
    before = copy.deepcopy(rev)
    first = review_decision(rev, SETTINGS)
    assert rev == before
    assert review_decision(rev, SETTINGS) == first

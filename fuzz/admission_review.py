"""Target: a POSTed AdmissionReview as the webhook reads it (`agent.kube.webhook`): the body's
JSON (`agent.kube.admission.decode_review`), the decision (`review_decision`) and the answer.

The input is the request body.

Contract: the only error is ReviewError (a 400 with its reason); the answer encodes as the
webhook sends it; a patch applies to the reviewed pod (the API server applies it, and one
that does not apply fails the pod's creation), puts the rewritten images where it says, and
is final (the patched pod reviewed again gets no patch); every pull secret the webhook will
read and write is named in the API's grammar (the names go into API URLs) and lives in the
pod's namespace.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonpatch

from agent.http.responses import json_response
from agent.kube.admission import AdmissionSettings, ReviewError, decode_review, review_decision

SETTINGS = AdmissionSettings(
    registries=("*.aliyuncs.com", "registry.example.com", "localhost:5000"),
    endpoint_port=65001,
    own_namespace="pollen-system",
)
# Kubernetes object names (DNS-1123 subdomain) and namespaces (DNS-1123 label).
_OBJECT_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def fuzz_one(data: bytes) -> None:
    """One review body through the webhook's decision and answer."""
    try:
        review = decode_review(data)
        decision = review_decision(review, SETTINGS)
    except ReviewError:
        return
    json_response(200, decision.response())
    for plan in decision.secrets:
        assert plan.namespace == decision.namespace
        assert _NAMESPACE_RE.fullmatch(plan.namespace) and len(plan.namespace) <= 63, plan
        for name in (plan.source, plan.target):
            assert _OBJECT_NAME_RE.fullmatch(name) and len(name) <= 253, plan
    if not decision.patch:
        return
    assert isinstance(review, dict)
    request: dict[str, Any] = review["request"]
    patched = jsonpatch.apply_patch(request["object"], list(decision.patch))
    images = {op["path"]: op["value"] for op in decision.patch if op["path"].endswith("/image")}
    for path, image in images.items():
        assert jsonpatch.JsonPointer(path).resolve(patched) == image
    assert sorted(images.values()) == sorted(new for _, new in decision.rewritten)
    again = review_decision({**review, "request": {**request, "object": patched}}, SETTINGS)
    assert not again.patch, (again.reason, again.patch)
    json.dumps(patched)

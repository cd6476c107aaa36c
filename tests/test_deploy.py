"""deploy/kubernetes: the manifests render with kustomize, parse, pass the Kubernetes schema
(the `kubernetes` client's models), and agree with the code: config keys and defaults,
ports, the webhook's label and path, the commands the containers run, the image `make image`
builds and the user each container runs as in it."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import build_parser
from agent.core.config import ENV_VARS, load_config
from agent.kube.admission import LABEL, MODE, SYSTEM_NAMESPACES

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
WORKLOADS = ("DaemonSet", "StatefulSet", "Deployment")
DEFAULTS = load_config({})


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


def with_images(obj: Any, images: dict[str, str]) -> Any:
    if isinstance(obj, dict):
        out = {k: with_images(v, images) for k, v in obj.items()}
        if isinstance(out.get("image"), str):
            name = out["image"].split(":", 1)[0]
            out["image"] = images.get(name, out["image"])
        return out
    if isinstance(obj, list):
        return [with_images(x, images) for x in obj]
    return obj


def load_objects() -> list[dict[str, Any]]:
    """The objects `kubectl apply -k` creates: the listed resources, images set (all this
    kustomization uses, so that kustomize v2 -- Debian's kubectl 1.20 -- renders it too)."""
    k = kustomization()
    assert set(k) <= {"apiVersion", "kind", "resources", "images"}
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in k.get("images", [])}
    objects = []
    for name in k["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            if doc is not None:
                objects.append(with_images(doc, images))
    return objects


OBJECTS = load_objects()


def ident(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in OBJECTS if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, (kind, name, [ident(o) for o in found])
    return found[0]


def pod_specs() -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in OBJECTS if o["kind"] in WORKLOADS]


def containers(spec: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    return list(spec["containers"]) + (list(spec.get("initContainers", [])) if init else [])


# --------------------------------------------------------------------------------------------
# Render, parse, schema


def test_kustomize_renders_exactly_these_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian kubernetes-client; make system-deps)")
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    assert sorted(rendered, key=ident) == sorted(OBJECTS, key=ident)


def test_the_expected_objects_are_there() -> None:
    assert sorted(ident(o) for o in OBJECTS) == sorted(
        [
            "Namespace/pollen-system",
            "ConfigMap/pollen-config",
            "ServiceAccount/pollen-agent",
            "ServiceAccount/pollen-webhook",
            "ClusterRole/pollen-webhook",
            "ClusterRoleBinding/pollen-webhook",
            "DaemonSet/pollen-agent",
            "Service/pollen-root",
            "StatefulSet/pollen-root",
            "Deployment/pollen-webhook",
            "Service/pollen-webhook",
            "MutatingWebhookConfiguration/pollen-webhook",
            "NetworkPolicy/pollen-webhook",
        ]
    )


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


@pytest.mark.parametrize("obj", OBJECTS, ids=ident)
def test_object_passes_the_kubernetes_schema(obj: dict[str, Any]) -> None:
    """Deserialised into the client's typed model (types and required fields checked) and
    serialised back unchanged: a misspelt or misplaced field would be dropped on the way."""
    client = pytest.importorskip("kubernetes.client")
    version = obj["apiVersion"].rsplit("/", 1)[-1]
    model = f"{version.capitalize()}{obj['kind']}"
    api = client.ApiClient()
    typed = api._ApiClient__deserialize(obj, model)  # type: ignore[attr-defined]
    assert type(typed).__name__ == model
    assert _drop_nulls(api.sanitize_for_serialization(typed)) == obj


@pytest.mark.parametrize("obj", OBJECTS, ids=ident)
def test_namespaced_objects_live_in_pollen_system(obj: dict[str, Any]) -> None:
    cluster_scoped = {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
    }
    if obj["kind"] in cluster_scoped:
        assert "namespace" not in obj["metadata"]
    else:
        assert obj["metadata"]["namespace"] == "pollen-system"


# --------------------------------------------------------------------------------------------
# Agreement with the code


def config_map() -> dict[str, str]:
    return the("ConfigMap", "pollen-config")["data"]


def test_config_map_keys_are_config_keys_and_load() -> None:
    data = config_map()
    assert set(data) <= ENV_VARS
    config = load_config({**data, "POLLEN_CLUSTER_TOKEN": "t"})
    assert config.proxy_port == DEFAULTS.proxy_port
    assert config.p2p_port == DEFAULTS.p2p_port
    assert config.exporter_port == DEFAULTS.exporter_port
    assert config.webhook_port == DEFAULTS.webhook_port
    assert config.webhook_endpoint_port == DEFAULTS.webhook_endpoint_port == config.proxy_port
    assert config.cache_path == DEFAULTS.cache_path


def test_every_pollen_env_var_in_the_manifests_is_a_config_key() -> None:
    for spec in pod_specs():
        for c in containers(spec):
            for env in c.get("env", []):
                if env["name"].startswith("POLLEN_"):
                    assert env["name"] in ENV_VARS, env["name"]
            assert {"configMapRef": {"name": "pollen-config"}} in c.get("envFrom", [])


def test_every_pod_turns_service_links_off() -> None:
    # A Service named pollen-webhook would inject POLLEN_WEBHOOK_PORT=tcp://..., which the
    # config parser rightly refuses.
    for spec in pod_specs():
        assert spec["enableServiceLinks"] is False


def test_each_container_loads_its_config() -> None:
    """The env each container gets (ConfigMap, then its own env) is a valid configuration."""
    for spec in pod_specs():
        for c in containers(spec):
            env = dict(config_map())
            for item in c.get("env", []):
                env[item["name"]] = item.get("value", "from-secret-or-field")
            env["POLLEN_NODE_IP"] = "10.0.0.1"
            env = {k: v for k, v in env.items() if not k.startswith("POLLEN_TLS_")}
            load_config(env)


def test_daemonset_ports_resources_and_cache_match_the_config() -> None:
    agent = the("DaemonSet", "pollen-agent")["spec"]["template"]["spec"]
    assert agent["hostNetwork"] is True
    assert agent["dnsPolicy"] == "ClusterFirstWithHostNet"
    (main,) = agent["containers"]
    ports = {p["name"]: (p["containerPort"], p["hostPort"]) for p in main["ports"]}
    assert ports == {
        "proxy": (DEFAULTS.proxy_port,) * 2,
        "p2p": (DEFAULTS.p2p_port,) * 2,
        "metrics": (DEFAULTS.exporter_port,) * 2,
    }
    assert main["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    volumes = {v["name"]: v for v in agent["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert volumes[mounts[DEFAULTS.cache_path]]["hostPath"]["path"] == DEFAULTS.cache_path


def test_probes_on_every_workload() -> None:
    for obj in OBJECTS:
        if obj["kind"] not in WORKLOADS:
            continue
        for c in obj["spec"]["template"]["spec"]["containers"]:
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", ident(obj)
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", ident(obj)


def test_roots_behind_a_headless_service_named_in_roots() -> None:
    service = the("Service", "pollen-root")
    roots = the("StatefulSet", "pollen-root")
    assert service["spec"]["clusterIP"] == "None"
    assert roots["spec"]["serviceName"] == "pollen-root"
    assert service["spec"]["selector"] == roots["spec"]["template"]["metadata"]["labels"]
    assert config_map()["POLLEN_ROOTS"].startswith("pollen-root.pollen-system.svc")
    assert {p["port"] for p in service["spec"]["ports"]} >= {DEFAULTS.p2p_port}


def test_webhook_configuration_matches_the_code() -> None:
    mwc = the("MutatingWebhookConfiguration")
    entries = {w["name"]: w for w in mwc["webhooks"]}
    assert len(entries) == 2
    by_namespace = entries["namespaces.p2p.pollen.io"]
    by_pod = entries["pods.p2p.pollen.io"]
    assert {"key": LABEL, "operator": "In", "values": [MODE]} in by_namespace["namespaceSelector"][
        "matchExpressions"
    ]
    # Pods with a label of their own go to the other entry (p2p) or nowhere (opt-out).
    assert by_namespace["objectSelector"] == {
        "matchExpressions": [{"key": LABEL, "operator": "DoesNotExist"}]
    }
    assert by_pod["objectSelector"] == {"matchLabels": {LABEL: MODE}}
    service = the("Service", "pollen-webhook")
    deployment = the("Deployment", "pollen-webhook")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for entry in entries.values():
        excluded = next(
            e["values"]
            for e in entry["namespaceSelector"]["matchExpressions"]
            if e["key"] == "kubernetes.io/metadata.name"
        )
        assert set(excluded) >= {*SYSTEM_NAMESPACES, "pollen-system"}
        assert entry["failurePolicy"] == "Ignore"
        assert entry["sideEffects"] == "NoneOnDryRun"
        assert entry["admissionReviewVersions"] == ["v1"]
        assert "caBundle" not in entry["clientConfig"]  # `pollen webhook certs` fills it
        ref = entry["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"], ref["path"]) == (
            "pollen-webhook",
            "pollen-system",
            "/mutate",
        )
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]]
        assert container_ports[port["targetPort"]] == DEFAULTS.webhook_port
        resources = {r for rule in entry["rules"] for r in rule["resources"]}
        assert resources == {"pods", "pods/ephemeralcontainers"}


def test_rbac_is_limited_to_what_the_webhook_does() -> None:
    role = the("ClusterRole", "pollen-webhook")
    assert role["rules"] == [
        # patch, not update: every write is a JSON patch the API server checks (issue 13).
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": ["pollen-webhook"],
            "verbs": ["get", "update"],
        },
    ]
    binding = the("ClusterRoleBinding", "pollen-webhook")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pollen-webhook", "namespace": "pollen-system"}
    ]
    assert the("ServiceAccount", "pollen-agent")["automountServiceAccountToken"] is False
    for name in ("DaemonSet", "StatefulSet"):
        spec = the(name)["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False


def test_container_commands_are_pollen_commands() -> None:
    parser = build_parser()
    seen = set()
    for spec in pod_specs():
        for c in containers(spec):
            command = c["command"]
            assert command[0] == "pollen"
            args = parser.parse_args(command[1:])
            seen.add(
                (
                    args.command,
                    getattr(args, "webhook_command", None) or getattr(args, "doctor_command", None),
                )
            )
    assert seen == {
        ("agent", None),
        ("root", None),
        ("webhook", None),
        ("webhook", "certs"),
        ("doctor", "hosts"),
    }
    assert all(c["image"] == "pollen:0.1.0" for s in pod_specs() for c in containers(s))


def test_network_policy_lets_in_only_the_webhook_port_and_out_only_to_the_api_server() -> None:
    """Issue 13, item 1: no NetworkPolicy was shipped; anything could reach the webhook on any
    port and the webhook could reach anything. Issue 14, item 3: and its metrics port."""
    policy = the("NetworkPolicy", "pollen-webhook")["spec"]
    deployment = the("Deployment", "pollen-webhook")["spec"]["template"]
    assert policy["podSelector"] == {"matchLabels": deployment["metadata"]["labels"]}
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (container,) = deployment["spec"]["containers"]
    serving, metrics = container["ports"]
    assert serving["containerPort"] == DEFAULTS.webhook_port
    assert metrics["containerPort"] == DEFAULTS.exporter_port
    # The serving port, from any peer: the API server calls from the host network or from
    # outside the cluster, which no selector matches (the manifest says so); and the metrics
    # port, in a rule of its own that an operator can narrow to Prometheus.
    assert policy["ingress"] == [
        {"ports": [{"port": serving["name"], "protocol": "TCP"}]},
        {"ports": [{"port": metrics["name"], "protocol": "TCP"}]},
    ]
    # Only the API server's ports (Service port and the usual endpoint port); no DNS, since
    # KUBERNETES_SERVICE_HOST is an address.
    (egress,) = policy["egress"]
    assert egress == {
        "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]
    }
    # Every other pod in the namespace is untouched by it.
    for obj in OBJECTS:
        if obj["kind"] in WORKLOADS and obj is not the("Deployment", "pollen-webhook"):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert not policy["podSelector"]["matchLabels"].items() <= labels.items()


def test_webhook_serves_the_mounted_secret_and_exports_metrics() -> None:
    """Issue 14, item 3: the webhook took a renewed certificate only with a restart (its init
    container copied the Secret into an emptyDir once), and nothing scraped its counters."""
    deployment = the("Deployment", "pollen-webhook")["spec"]["template"]
    spec = deployment["spec"]
    (webhook,) = spec["containers"]
    (certs,) = spec["initContainers"]
    env = {e["name"]: e.get("value") for e in webhook["env"]}
    cert_dir = str(Path(env["POLLEN_TLS_CERT"]).parent)
    assert Path(env["POLLEN_TLS_KEY"]).parent == Path(cert_dir)
    # The files the webhook reads are the TLS Secret's, as the kubelet keeps them up to date
    # (a whole-volume mount: subPath mounts are never updated).
    (volume,) = [v for v in spec["volumes"] if v["name"] == "tls"]
    mounts = {m["mountPath"]: m for m in webhook["volumeMounts"]}
    assert mounts[cert_dir]["name"] == "tls" and "subPath" not in mounts[cert_dir]
    args = build_parser().parse_args(certs["command"][1:])
    assert volume["secret"]["secretName"] == args.secret
    assert volume["secret"]["optional"] is True  # made by the init container on first install
    # ... which then waits for the kubelet to fill the volume, so the webhook starts with it.
    assert args.wait_for_mount == Path(cert_dir) and args.out_dir is None
    assert {m["mountPath"]: m["name"] for m in certs["volumeMounts"]}[cert_dir] == "tls"
    # Readable by the webhook's user through its group.
    assert volume["secret"]["defaultMode"] == 0o440
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    # Metrics: enabled by the ConfigMap, on the exporter port, announced to Prometheus.
    config = load_config({**config_map(), "POLLEN_CLUSTER_TOKEN": "t"})
    assert config.exporter_enable and config.exporter_standalone_port
    ports = {p["name"]: p["containerPort"] for p in webhook["ports"]}
    assert ports["metrics"] == config.exporter_port
    annotations = deployment["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(config.exporter_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    service = the("Service", "pollen-webhook")["spec"]["ports"]
    assert {"name": "metrics", "port": 65003, "targetPort": "metrics", "protocol": "TCP"} in service


# --------------------------------------------------------------------------------------------
# The image (`make image`, Containerfile) and who runs in it

REPO = DEPLOY.parents[1]


def image_user() -> int:
    """The uid of the Containerfile's last USER: what a container runs as unless told."""
    users = [
        line.split()[1]
        for line in (REPO / "Containerfile").read_text().splitlines()
        if line.startswith("USER ")
    ]
    uid, _, gid = users[-1].partition(":")
    assert uid == gid, "the image's user has the group of the same number"
    return int(uid)


def test_the_manifests_run_the_image_make_image_builds() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    makefile = (REPO / "Makefile").read_text()
    (image,) = re.findall(r"^IMAGE \?= (\S+)$", makefile, flags=re.M)
    built = image.replace("$(IMAGE_VERSION)", version)
    (entry,) = kustomization()["images"]
    assert f"{entry['newName']}:{entry['newTag']}" == built == f"pollen:{version}"
    # The label a build without `make image` (docker build) gets.
    assert f"ARG VERSION={version}" in (REPO / "Containerfile").read_text().splitlines()
    assert all(c["image"] == built for s in pod_specs() for c in containers(s))


def writable_host_paths(spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    host = {v["name"] for v in spec["volumes"] if "hostPath" in v}
    return [
        m["mountPath"]
        for m in container.get("volumeMounts", [])
        if m["name"] in host and not m.get("readOnly", False)
    ]


def test_only_containers_writing_a_host_path_run_as_root_and_none_keeps_a_capability() -> None:
    """Root (uid 0) only where a host directory that the kubelet or the node made root's must
    be written (the agent's cache, containerd's certs.d), and even there no capability: uid 0
    owns those directories (tests/integration/test_image.py measures both). Every other
    container runs as the image's user, and every pod under the runtime's seccomp profile."""
    user = image_user()
    as_root = set()
    for obj in OBJECTS:
        if obj["kind"] not in WORKLOADS:
            continue
        spec = obj["spec"]["template"]["spec"]
        pod = spec.get("securityContext", {})
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, ident(obj)
        for c in containers(spec):
            context = c["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert "privileged" not in context
            uid = context.get("runAsUser", pod.get("runAsUser", user))
            gid = context.get("runAsGroup", pod.get("runAsGroup", user))
            if writable_host_paths(spec, c):
                assert (uid, gid) == (0, 0), (ident(obj), c["name"])
                as_root.add((obj["metadata"]["name"], c["name"]))
            else:
                assert (uid, gid) == (user, user), (ident(obj), c["name"])
                assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True
    assert as_root == {("pollen-agent", "agent"), ("pollen-agent", "containerd-hosts")}


def test_roots_own_their_empty_dirs() -> None:
    spec = the("StatefulSet", "pollen-root")["spec"]["template"]["spec"]
    assert all("emptyDir" in v for v in spec["volumes"])
    assert spec["securityContext"]["fsGroup"] == image_user()

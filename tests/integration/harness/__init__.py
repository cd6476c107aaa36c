"""Start REAL parts on loopback for integration tests: a Distribution registry, a Docker
token issuer, a private containerd (ctr and CRI), skopeo, test images and certificates.

One module, one job:
- procs:      free ports, child processes by PID with log files, bounded readiness polls
- tlsutil:    a throwaway CA and server certificate; a Secret volume written as the kubelet does
- tokens:     the token issuer the registry's token mode trusts
- registry:   `docker-registry serve` and its access log ("counted at the registry")
- images:     OCI layouts built in Python; skopeo push/pull and blob verification
- cri:        CRI ImageService over grpc with hand-encoded protobuf
- containerd: a private containerd daemon, hosts.toml, ctr and CRI pulls
- containers: an image's containers run by that containerd (`ctr run`, runc), seccomp profiles
- etchosts:   a temporary /etc/hosts line
- agent:      a real `pollen agent` process
- fronts:     a counting/faulting HTTP front for a registry, and a tiny object server
- rawhttp:    one raw request, every header line and a cut-short body kept
- calls:      the small GETs, status reads and pulls tests make of agents and registries
"""

from .agent import AgentProcess
from .calls import (
    agent_status,
    blob_gets,
    blob_url,
    cache_blob_dir,
    http_get,
    pull_dir,
    pull_from,
    raw_get,
)
from .containerd import Containerd, hosts_toml, write_hosts_toml
from .etchosts import etc_hosts_entry
from .fronts import Fault, ObjectServer, RegistryFront, SeenRequest, blob_path_pattern
from .images import (
    Image,
    IndexImage,
    Layer,
    build_image,
    build_index_image,
    dir_manifest_digest,
    push_image,
    skopeo_copy_to_dir,
    skopeo_copy_to_registry,
    verify_dir_blobs,
    write_authfile,
    write_registries_conf,
)
from .procs import (
    HarnessError,
    ManagedProcess,
    ProcessDied,
    free_port,
    http_status,
    memory_mib,
    run,
    start_process,
    wait_http_ok,
    wait_until,
)
from .rawhttp import RawResponse, raw_request
from .registry import Registry, parse_access_line
from .tlsutil import (
    TLSFiles,
    client_context,
    make_ca_and_cert,
    make_cert_dir,
    write_secret_volume,
)
from .tokens import Account, TokenIssuer, libtrust_key_id

__all__ = [
    "AgentProcess",
    "Account",
    "Containerd",
    "Fault",
    "HarnessError",
    "Image",
    "IndexImage",
    "Layer",
    "ManagedProcess",
    "memory_mib",
    "ObjectServer",
    "ProcessDied",
    "RawResponse",
    "Registry",
    "RegistryFront",
    "SeenRequest",
    "TLSFiles",
    "TokenIssuer",
    "agent_status",
    "blob_gets",
    "blob_path_pattern",
    "cache_blob_dir",
    "blob_url",
    "build_image",
    "build_index_image",
    "client_context",
    "dir_manifest_digest",
    "etc_hosts_entry",
    "free_port",
    "hosts_toml",
    "http_get",
    "http_status",
    "libtrust_key_id",
    "make_ca_and_cert",
    "make_cert_dir",
    "parse_access_line",
    "pull_dir",
    "pull_from",
    "push_image",
    "raw_get",
    "raw_request",
    "run",
    "skopeo_copy_to_dir",
    "skopeo_copy_to_registry",
    "start_process",
    "verify_dir_blobs",
    "write_secret_volume",
    "wait_http_ok",
    "wait_until",
    "write_authfile",
    "write_hosts_toml",
    "write_registries_conf",
]

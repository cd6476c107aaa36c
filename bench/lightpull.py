"""A light image pull for bench/swarm.py's `--client light`: resolve the manifest, fetch the
config and every layer at once (as containerd does), check each against its digest, keep
nothing.

Why: the benches squeeze a whole cluster onto one 2-core machine, and skopeo writing its copy
costs about 10 CPU-s per GiB here (fresh page-cache pages are dear in this VM), more than all
of Pollen. With this client the machine's CPU goes to Pollen and the network, so the figure
shows the swarm rather than the co-located clients. Standard library only.

    python3 bench/lightpull.py [--ready] HOST:PORT/REPO:TAG

`--ready`: print "ready" once started and wait for a line on stdin before the first request,
so that a bench's clock runs from the pull's first request, not from Python's start-up (about
0.1-0.2 s when eight start at once on this machine; containerd is a running daemon).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import sys
import threading

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
READ = 1 << 20


def get(host: str, path: str, accept: str | None = None) -> tuple[bytes, str]:
    conn = http.client.HTTPConnection(host, timeout=600)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        return body, response.getheader("Content-Type", "")
    finally:
        conn.close()


def fetch_blob(host: str, repo: str, digest: str, errors: list[str]) -> None:
    """Stream one blob, hashing it; a mismatch or a short body goes to `errors`."""
    conn = http.client.HTTPConnection(host, timeout=600)
    try:
        conn.request("GET", f"/v2/{repo}/blobs/{digest}")
        response = conn.getresponse()
        if response.status != 200:
            errors.append(f"{digest}: {response.status}")
            return
        hasher = hashlib.sha256()
        buffer = bytearray(READ)
        view = memoryview(buffer)
        while n := response.readinto(view):
            hasher.update(view[:n])
        if "sha256:" + hasher.hexdigest() != digest:
            errors.append(f"{digest}: the bytes do not match")
    except OSError as exc:
        errors.append(f"{digest}: {exc}")
    finally:
        conn.close()


def main() -> int:
    args = sys.argv[1:]
    if args[0] == "--ready":
        args = args[1:]
        print("ready", flush=True)
        sys.stdin.readline()
    host, _, rest = args[0].partition("/")
    repo, _, tag = rest.rpartition(":")
    body, kind = get(host, f"/v2/{repo}/manifests/{tag}", ACCEPT)
    manifest = json.loads(body)
    if kind in INDEX_TYPES or "manifests" in manifest:
        digest = manifest["manifests"][0]["digest"]
        body, kind = get(host, f"/v2/{repo}/manifests/{digest}", ACCEPT)
        manifest = json.loads(body)
    blobs = [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]
    errors: list[str] = []
    threads = [threading.Thread(target=fetch_blob, args=(host, repo, d, errors)) for d in blobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""Temporary /etc/hosts entries, for tests that need a registry *name* (e.g. a
`.distributed.` host) to resolve to loopback without DNS.

Go programs (registry, containerd, skopeo) read /etc/hosts directly, so one line is
enough. Only loopback addresses are accepted (the network rule).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import secrets
from collections.abc import Iterator
from pathlib import Path

ETC_HOSTS = Path("/etc/hosts")


@contextlib.contextmanager
def etc_hosts_entry(name: str, ip: str = "127.0.0.1", *, path: Path = ETC_HOSTS) -> Iterator[str]:
    """Append `<ip> <name>` (tagged with a unique comment) and remove exactly that line.

    The file is rewritten in place (not replaced), because in containers /etc/hosts is
    often a bind mount that a rename would break. Removal runs even if the block fails,
    and leaves every other line, including ones added meanwhile, untouched.
    """
    if not ipaddress.ip_address(ip).is_loopback:
        raise ValueError(f"refusing non-loopback address {ip!r} for {name!r}")
    if not name or any(c.isspace() for c in name) or "#" in name:
        raise ValueError(f"bad host name {name!r}")
    line = f"{ip} {name} # pollen-test {secrets.token_hex(6)}"
    with open(path, "r+") as f:
        # flock: two harness users (e.g. parallel test workers) never interleave edits.
        fcntl.flock(f, fcntl.LOCK_EX)
        original = f.read()
        prefix = "" if original.endswith("\n") or not original else "\n"
        f.write(f"{prefix}{line}\n")
    try:
        yield line
    finally:
        with open(path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            lines = f.read().splitlines(keepends=True)
            kept = [entry for entry in lines if entry.rstrip("\n") != line]
            f.seek(0)
            f.write("".join(kept))
            f.truncate()

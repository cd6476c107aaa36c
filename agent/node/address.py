"""Which address peers use to reach this node, when `nodeIP` is not configured."""

from __future__ import annotations

import socket


def detect_node_ip() -> str:
    """The address this node's default route leaves from, for peers to reach it.

    Connecting a UDP socket only picks a route and a source address -- no packet is sent --
    so this works offline and without privileges.  The probe addresses are documentation
    ranges (TEST-NET-1, 2001:db8::) that nothing answers.  IPv4 first, then IPv6; with no
    route at all, 127.0.0.1 (a single-node setup still works).
    """
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                address = str(s.getsockname()[0])
        except OSError:
            continue
        if address not in ("0.0.0.0", "::"):
            return address
    return "127.0.0.1"

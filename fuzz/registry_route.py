"""Target: a proxy-port request's method, target and Host header, through the router
(`agent.registry.routes.parse_target`) and the upstream choice (`upstreams.choose_upstream`),
as `RegistryProxy.handle` calls them.

The input is ``<method> <target>[\\n<host header>]`` in latin-1, as `request_from_head` decodes
a head.

Contract: the only error is RegistryError with a 4xx status and a JSON body; an accepted
route's repository name and digest are in the distribution grammar (they go into upstream URLs
and cache paths) and the route parses back the same from the target it would be fetched as;
the upstream chosen is one of the configured ones (the agent is never an open proxy).
"""

from __future__ import annotations

import json

from agent.core.errors import RegistryError
from agent.core.upstream import Upstream
from agent.registry.routes import (
    Blob,
    Manifest,
    parse_digest,
    parse_target,
    validate_name,
)
from agent.registry.upstreams import choose_upstream

UPSTREAMS = (
    Upstream(scheme="https", host="registry-1.docker.io", port=443),
    Upstream(scheme="https", host="registry.cn-hangzhou.aliyuncs.com", port=443),
    Upstream(scheme="http", host="10.0.0.5", port=5000),
    Upstream(scheme="http", host="fd00::5", port=5000),
)


def fuzz_one(data: bytes) -> None:
    """One request line (and Host header) through the proxy's routing."""
    text = data.decode("latin-1")
    method, _, rest = text.partition(" ")
    target, newline, host = rest.partition("\n")
    try:
        parsed = parse_target(method, target)
        upstream = choose_upstream(
            ns=parsed.ns,
            host_header=host if newline else None,
            upstreams=UPSTREAMS,
            default=UPSTREAMS[0],
        )
    except RegistryError as err:
        assert 400 <= err.status <= 499, f"{err.status} for {target!r}"
        json.loads(err.body())
        return
    assert upstream in UPSTREAMS
    route = parsed.route
    if isinstance(route, Manifest):
        assert validate_name(route.name) == route.name
        if route.digest is not None:
            assert str(parse_digest(route.reference)) == route.reference == str(route.digest)
        again = parse_target("GET", f"/v2/{route.name}/manifests/{route.reference}").route
        assert again == route, (again, route)
    elif isinstance(route, Blob):
        assert validate_name(route.name) == route.name
        assert parse_digest(str(route.digest)) == route.digest
        again = parse_target("GET", f"/v2/{route.name}/blobs/{route.digest}").route
        assert again == route, (again, route)

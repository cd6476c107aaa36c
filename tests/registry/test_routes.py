"""Tests for agent/registry/routes.py: request target -> route, table-driven as Spegel does.

Pure: parse_target takes strings and returns dataclasses, so no sockets and no event loop.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.errors import RegistryError
from agent.registry.routes import (
    Blob,
    Digest,
    Health,
    Manifest,
    Metrics,
    Ready,
    Status,
    Target,
    V2Base,
    parse_target,
)

# The limits are spelled out, not imported, so that changing them in routes.py fails here.
NAME_MAX = 255  # distribution/reference
TARGET_MAX = 8192
HEX64 = "0123456789abcdef" * 4
HEX128 = HEX64 * 2
SHA256 = Digest(algorithm="sha256", hex=HEX64)
SHA512 = Digest(algorithm="sha512", hex=HEX128)


def error_of(method: str, target: str) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        parse_target(method, target)
    return info.value


# --------------------------------------------------------------------------------------------
# Routes that parse


@pytest.mark.parametrize(
    ("target", "route"),
    [
        ("/v2/", V2Base()),
        ("/v2", V2Base()),
        ("/healthz", Health()),
        ("/readyz", Ready()),
        ("/_pollen/status", Status()),
        ("/metrics", Metrics()),
        # manifests by tag
        ("/v2/nginx/manifests/latest", Manifest(name="nginx", reference="latest", digest=None)),
        (
            "/v2/library/nginx/manifests/1.25-alpine",
            Manifest(name="library/nginx", reference="1.25-alpine", digest=None),
        ),
        ("/v2/a/b/c/manifests/v1.0", Manifest(name="a/b/c", reference="v1.0", digest=None)),
        ("/v2/x/manifests/_tag", Manifest(name="x", reference="_tag", digest=None)),
        ("/v2/x/manifests/" + "t" * 128, Manifest(name="x", reference="t" * 128, digest=None)),
        (
            "/v2/x/manifests/UPPER_case.Tag",
            Manifest(name="x", reference="UPPER_case.Tag", digest=None),
        ),
        # manifests by digest
        (
            f"/v2/library/nginx/manifests/sha256:{HEX64}",
            Manifest(name="library/nginx", reference=f"sha256:{HEX64}", digest=SHA256),
        ),
        (
            f"/v2/x/manifests/sha512:{HEX128}",
            Manifest(name="x", reference=f"sha512:{HEX128}", digest=SHA512),
        ),
        # blobs
        (f"/v2/library/nginx/blobs/sha256:{HEX64}", Blob(name="library/nginx", digest=SHA256)),
        (f"/v2/a/b/c/blobs/sha512:{HEX128}", Blob(name="a/b/c", digest=SHA512)),
        # name separators: ".", "_", "__", runs of "-"
        (f"/v2/my.org/app/blobs/sha256:{HEX64}", Blob(name="my.org/app", digest=SHA256)),
        (f"/v2/my_app/blobs/sha256:{HEX64}", Blob(name="my_app", digest=SHA256)),
        (f"/v2/my__app/blobs/sha256:{HEX64}", Blob(name="my__app", digest=SHA256)),
        (f"/v2/my-app/blobs/sha256:{HEX64}", Blob(name="my-app", digest=SHA256)),
        (f"/v2/my---app/blobs/sha256:{HEX64}", Blob(name="my---app", digest=SHA256)),
        (f"/v2/0/9/blobs/sha256:{HEX64}", Blob(name="0/9", digest=SHA256)),
        # a component spelled like an endpoint keyword is still a name component
        (
            "/v2/a/blobs/b/manifests/latest",
            Manifest(name="a/blobs/b", reference="latest", digest=None),
        ),
        (
            "/v2/a/manifests/b/manifests/latest",
            Manifest(name="a/manifests/b", reference="latest", digest=None),
        ),
        (f"/v2/a/blobs/b/blobs/sha256:{HEX64}", Blob(name="a/blobs/b", digest=SHA256)),
        (f"/v2/manifests/x/blobs/sha256:{HEX64}", Blob(name="manifests/x", digest=SHA256)),
        # the longest name allowed
        (
            "/v2/" + "n" * NAME_MAX + "/manifests/latest",
            Manifest(name="n" * NAME_MAX, reference="latest", digest=None),
        ),
        # the path is percent-decoded before it is parsed, as distribution's router does
        (
            "/v2/library%2Fnginx/manifests/1%2E25",
            Manifest(name="library/nginx", reference="1.25", digest=None),
        ),
        (f"/v2/my%2Dapp/blobs/sha256%3A{HEX64}", Blob(name="my-app", digest=SHA256)),
        # absolute-form targets (RFC 9112 §3.2.2) route on their path
        ("http://127.0.0.1:65001/v2/", V2Base()),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_routes(method: str, target: str, route: object) -> None:
    assert parse_target(method, target) == Target(route=route, ns=None)


@pytest.mark.parametrize(
    ("query", "ns"),
    [
        ("", None),
        ("?ns=docker.io", "docker.io"),
        ("?ns=127.0.0.1%3A5000", "127.0.0.1:5000"),
        ("?ns=127.0.0.1:5000", "127.0.0.1:5000"),
        ("?ns=%5B%3A%3A1%5D%3A5000", "[::1]:5000"),
        ("?other=1&ns=registry.example.com", "registry.example.com"),
        ("?ns=first.example&ns=second.example", "first.example"),
    ],
)
def test_ns_parameter(query: str, ns: str | None) -> None:
    got = parse_target("GET", f"/v2/library/nginx/manifests/latest{query}")
    assert got.ns == ns
    assert got.route == Manifest(name="library/nginx", reference="latest", digest=None)
    assert parse_target("GET", f"/v2/{query}") == Target(route=V2Base(), ns=ns)


@pytest.mark.parametrize("query", ["?ns=", "?ns", "?x=1&ns="])
def test_empty_ns_is_400(query: str) -> None:
    err = error_of("GET", f"/v2/x/manifests/latest{query}")
    assert err.status == 400


# --------------------------------------------------------------------------------------------
# Requests that are refused


@pytest.mark.parametrize(
    "name",
    [
        "Nginx",  # upper case
        "library/NGINX",
        "-nginx",  # leading separator
        ".nginx",
        "_nginx",
        "nginx-",  # trailing separator
        "nginx.",
        "a..b",  # two dots are not a separator
        "..",
        "a/../b",
        "a/./b",
        "a___b",  # three underscores are not a separator
        "a._b",
        "",  # empty
        "a//b",  # empty component
        "a/",
        "a b",
        "a%20b",
        "a%00b",
        "caf%C3%A9",  # non-ASCII
        "n" * (NAME_MAX + 1),  # too long
        "/".join(["abcdefg"] * 40),  # too long, every component valid
    ],
)
@pytest.mark.parametrize("kind", ["manifests/latest", f"blobs/sha256:{HEX64}"])
def test_invalid_names_are_400_name_invalid(name: str, kind: str) -> None:
    err = error_of("GET", f"/v2/{name}/{kind}")
    assert (err.status, err.code) == (400, "NAME_INVALID")


@pytest.mark.parametrize(
    "tag",
    [
        "-latest",  # must start with a word character
        ".latest",
        "t" * 129,  # at most 128
        "a+b",
        "a%20b",
        "a@b",
        "caf%C3%A9",
    ],
)
def test_invalid_tags_are_400_tag_invalid(tag: str) -> None:
    err = error_of("GET", f"/v2/library/nginx/manifests/{tag}")
    assert (err.status, err.code) == (400, "TAG_INVALID")


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + HEX64[:-1],  # too short
        "sha256:" + HEX64 + "0",  # too long
        "sha256:" + HEX128,  # sha512's length
        "sha512:" + HEX64,  # sha256's length
        "sha256:" + HEX64.upper(),  # upper-case hex
        "sha256:" + "g" * 64,  # not hex
        "sha256:",
        ":" + HEX64,
        "md5:" + "0" * 32,  # an algorithm we cannot verify
        "sha384:" + "0" * 96,
        "SHA256:" + HEX64,
        "sha256:" + HEX64 + ":",
    ],
)
@pytest.mark.parametrize("kind", ["manifests", "blobs"])
def test_invalid_digests_are_400_digest_invalid(digest: str, kind: str) -> None:
    err = error_of("GET", f"/v2/library/nginx/{kind}/{digest}")
    assert (err.status, err.code) == (400, "DIGEST_INVALID")


@pytest.mark.parametrize("ref", ["latest", "sha256" + HEX64, "uploads"])
def test_a_blob_needs_a_digest(ref: str) -> None:
    # The same text names a tag under manifests/.
    err = error_of("GET", f"/v2/library/nginx/blobs/{ref}")
    assert (err.status, err.code) == (400, "DIGEST_INVALID")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get", "head"])
@pytest.mark.parametrize(
    "target",
    ["/v2/", "/v2/x/manifests/latest", f"/v2/x/blobs/sha256:{HEX64}", "/v2/x/blobs/uploads/"],
)
def test_other_methods_are_405(method: str, target: str) -> None:
    assert error_of(method, target).status == 405


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/foo",
        "/v1/",
        "/V2/",
        "/v2x",
        "/healthz/",
        "/v2/_catalog",
        "/v2/x/tags/list",
        "/v2/library/nginx/tags/list?n=10",
        "/v2/x/referrers/sha256:" + HEX64,
        # push endpoints
        "/v2/x/blobs/uploads/",
        "/v2/x/blobs/uploads/3f2a8c1e-uuid",
        "/v2/x/blobs/uploads/3f2a8c1e-uuid?digest=sha256:" + HEX64,
        # nothing, or more than one path segment, after the keyword
        "/v2/x/manifests/",
        "/v2/x/blobs/",
        "/v2/x/manifests/latest/",
        "/v2/x/manifests/latest/extra",
        "/v2/manifests/latest",  # no name at all
        "/v2/blobs/sha256:" + HEX64,
        "*",
    ],
)
def test_unknown_paths_are_404(target: str) -> None:
    assert error_of("GET", target).status == 404


def test_target_limit() -> None:
    prefix = "/v2/x/manifests/latest?pad="
    at_limit = prefix + "p" * (TARGET_MAX - len(prefix))
    assert len(at_limit) == TARGET_MAX
    assert parse_target("GET", at_limit).route == Manifest(
        name="x", reference="latest", digest=None
    )
    err = error_of("GET", at_limit + "p")
    assert err.status == 414


def test_target_limit_is_checked_before_anything_else() -> None:
    assert error_of("POST", "/nowhere/" + "x" * TARGET_MAX).status == 414


@pytest.mark.parametrize("name", ["a/manifests/b", "org/manifests", "a/b/manifests/c"])
def test_blob_of_a_name_with_a_manifests_component(name: str) -> None:
    # Regression: the parser once stopped at the first "/manifests/" and answered 404.
    target = f"/v2/{name}/blobs/sha256:{HEX64}"
    assert parse_target("GET", target).route == Blob(name=name, digest=SHA256)


@pytest.mark.parametrize(
    "target",
    [
        # Regression: patterns ending in "$" used with re.match let a trailing newline through
        # into upstream URLs and cache paths.
        "/v2/nginx%0A/manifests/latest",
        "/v2/nginx/manifests/latest%0A",
        f"/v2/nginx/manifests/sha256:{HEX64}%0A",
        f"/v2/nginx%0A/blobs/sha256:{HEX64}",
        f"/v2/nginx/blobs/sha256:{HEX64}%0A",
    ],
)
def test_trailing_newline_is_refused(target: str) -> None:
    assert error_of("GET", target).status == 400


@pytest.mark.parametrize("target", ["//manifes[ts/x", "//[", "http://[::1/v2/", "//[x]y/v2/"])
def test_malformed_authority_is_400(target: str) -> None:
    # Found by fuzz/registry_route.py: urlsplit's ValueError escaped, and the proxy answered 500.
    err = error_of("GET", target)
    assert err.status == 400
    assert "malformed request target" in err.message


# --------------------------------------------------------------------------------------------
# Properties

_ALNUM = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8),
    # path keywords are valid components too
    st.sampled_from(["v2", "manifests", "blobs", "uploads", "tags", "list"]),
)
_SEPARATOR = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def components(draw: st.DrawFn) -> str:
    parts = [draw(_ALNUM)]
    for _ in range(draw(st.integers(0, 3))):
        parts += [draw(_SEPARATOR), draw(_ALNUM)]
    return "".join(parts)


names = (
    st.lists(components(), min_size=1, max_size=5)
    .map("/".join)
    .filter(lambda n: len(n) <= NAME_MAX)
)
digests = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map(
        lambda h: Digest(algorithm="sha256", hex=h)
    ),
    st.text(alphabet="0123456789abcdef", min_size=128, max_size=128).map(
        lambda h: Digest(algorithm="sha512", hex=h)
    ),
)
tags = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")


@given(name=names, digest=digests, method=st.sampled_from(["GET", "HEAD"]))
def test_valid_blob_round_trips(name: str, digest: Digest, method: str) -> None:
    got = parse_target(method, f"/v2/{name}/blobs/{digest}")
    assert got == Target(route=Blob(name=name, digest=digest), ns=None)


@given(name=names, digest=digests)
def test_valid_manifest_digest_round_trips(name: str, digest: Digest) -> None:
    got = parse_target("GET", f"/v2/{name}/manifests/{digest}?ns=docker.io")
    assert got == Target(
        route=Manifest(name=name, reference=str(digest), digest=digest), ns="docker.io"
    )


@given(name=names, tag=tags)
def test_valid_manifest_tag_round_trips(name: str, tag: str) -> None:
    got = parse_target("HEAD", f"/v2/{name}/manifests/{tag}")
    assert got == Target(route=Manifest(name=name, reference=tag, digest=None), ns=None)

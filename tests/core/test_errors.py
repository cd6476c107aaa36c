"""Tests for agent/core/errors.py: the registry's JSON error shape and keyed config errors."""

from __future__ import annotations

import json

import pytest

from agent.core.config import load_config
from agent.core.errors import ConfigError, RegistryError

DIGEST = "sha256:" + "0" * 64


def test_registry_error_body_shape() -> None:
    err = RegistryError(404, "BLOB_UNKNOWN", "blob unknown to registry")
    assert isinstance(err.body(), bytes)
    assert json.loads(err.body()) == {
        "errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry"}]
    }


@pytest.mark.parametrize(
    "detail",
    [{"digest": DIGEST}, [{"Type": "repository", "Name": "library/nginx"}], "text", 0, False, {}],
)
def test_registry_error_body_detail(detail: object) -> None:
    err = RegistryError(401, "UNAUTHORIZED", "authentication required", detail=detail)
    assert json.loads(err.body()) == {
        "errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": detail}]
    }


def test_registry_error_body_escapes() -> None:
    message = 'invalid tag "a\nb" in caf\u00e9 \u2014 </script>'
    body = RegistryError(400, "TAG_INVALID", message).body()
    body.decode("ascii")  # one line of plain JSON, whatever the message holds
    assert b"\n" not in body
    assert json.loads(body)["errors"][0]["message"] == message


def test_registry_error_attributes() -> None:
    headers = [(b"www-authenticate", b'Bearer realm="https://auth.example/token"')]
    err = RegistryError(401, "UNAUTHORIZED", "authentication required", headers=headers)
    assert (err.status, err.code, err.message) == (401, "UNAUTHORIZED", "authentication required")
    assert err.detail is None
    assert err.headers == headers
    assert "401" in str(err)
    assert "UNAUTHORIZED" in str(err)
    assert "authentication required" in str(err)
    assert isinstance(err, Exception)


def test_registry_error_headers_are_not_shared() -> None:
    a = RegistryError(400, "X", "x")
    b = RegistryError(400, "X", "x")
    assert a.headers == [] and b.headers == []
    a.headers.append((b"k", b"v"))
    assert b.headers == []
    assert RegistryError(400, "X", "x").headers == []


def test_config_error_names_its_key() -> None:
    err = ConfigError("cache.capacity", "expected a size like 4GiB, got 'lots'")
    assert err.key == "cache.capacity"
    assert "cache.capacity" in str(err)
    assert "expected a size like 4GiB, got 'lots'" in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("environ", "key", "env"),
    [
        ({"POLLEN_CACHE_CAPACITY": "lots"}, "cache.capacity", "POLLEN_CACHE_CAPACITY"),
        ({"POLLEN_PROXY_PORT": "http"}, "proxyPort", "POLLEN_PROXY_PORT"),
        (
            {"POLLEN_UPSTREAMS": "a.example", "POLLEN_DEFAULT_UPSTREAM": "b.example"},
            "defaultUpstream",
            "POLLEN_DEFAULT_UPSTREAM",
        ),
    ],
)
def test_load_config_errors_name_the_key(environ: dict[str, str], key: str, env: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ)
    assert info.value.key == key
    assert key in str(info.value)
    assert env in str(info.value)

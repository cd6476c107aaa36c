"""Registry credentials for preheat (agent/preheat/auth.py): challenges, token URLs and
replies, and the credential files skopeo and docker read."""

from __future__ import annotations

import base64
import urllib.parse
from pathlib import Path

import pytest

from agent.preheat.auth import (
    DEFAULT_TOKEN_SECONDS,
    Challenge,
    CredentialError,
    Credentials,
    authfile_candidates,
    find_credentials,
    parse_challenge,
    parse_creds,
    parse_token_reply,
    token_url,
)


def auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_challenges_parse_as_registries_send_them() -> None:
    bearer = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:team/app:pull"'
    )
    assert bearer == Challenge(
        "bearer",
        {
            "realm": "https://auth.example/token",
            "service": "registry.example",
            "scope": "repository:team/app:pull",
        },
    )
    assert parse_challenge('Basic realm="pollen-test"') == Challenge(
        "basic", {"realm": "pollen-test"}
    )
    assert (
        parse_challenge('Bearer realm="a \\"quoted\\" realm"').params["realm"] == 'a "quoted" realm'
    )  # type: ignore[union-attr]
    assert parse_challenge("") is None and parse_challenge(None) is None


def test_the_token_url_asks_for_a_pull_of_the_repository() -> None:
    challenge = Challenge("bearer", {"realm": "https://auth.example/token?x=1", "service": "reg"})
    url = token_url(challenge, "team/app")
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "auth.example", "/token")
    assert urllib.parse.parse_qs(parts.query) == {
        "x": ["1"],
        "service": ["reg"],
        "scope": ["repository:team/app:pull"],
    }
    with pytest.raises(ValueError, match="not an http"):
        token_url(Challenge("bearer", {"realm": "file:///etc/passwd"}), "team/app")
    with pytest.raises(ValueError, match="not an http"):
        token_url(Challenge("bearer", {}), "team/app")


def test_token_replies_give_the_token_and_how_long_it_lasts() -> None:
    assert parse_token_reply(b'{"token": "t1", "expires_in": 300}') == ("t1", 300.0)
    assert parse_token_reply(b'{"access_token": "t2"}') == ("t2", DEFAULT_TOKEN_SECONDS)
    assert parse_token_reply(b'{"token": "t3", "expires_in": -5}')[1] == DEFAULT_TOKEN_SECONDS
    for bad in (b"", b"[]", b'{"token": ""}', b'{"token": 5}', b'{"token": "a\\nb"}'):
        with pytest.raises(ValueError):
            parse_token_reply(bad)


def test_creds_are_user_colon_password() -> None:
    assert parse_creds("alice:pw:with:colons") == Credentials("alice", "pw:with:colons")
    assert Credentials("alice", "pw").basic() == b"Basic " + base64.b64encode(b"alice:pw")
    for bad in ("alice", ":pw", ""):
        with pytest.raises(CredentialError):
            parse_creds(bad)


def test_the_auth_file_entry_for_a_registry_and_repository_is_found() -> None:
    doc = {
        "auths": {
            "127.0.0.1:5000": auth("alice", "a"),
            "127.0.0.1:5000/team": auth("team", "t"),
            "127.0.0.1:5000/team/app": auth("app", "x"),
            "https://index.docker.io/v1/": auth("hub", "h"),
            "other.example": {"username": "u", "password": "p"},
            "helper.example": {},  # a credential helper's: nothing stored here
        }
    }
    assert find_credentials(doc, "127.0.0.1:5000", "team/app") == Credentials("app", "x")
    assert find_credentials(doc, "127.0.0.1:5000", "team/other") == Credentials("team", "t")
    assert find_credentials(doc, "127.0.0.1:5000", "teamwork/app") == Credentials("alice", "a")
    assert find_credentials(doc, "docker.io", "library/ubuntu") == Credentials("hub", "h")
    assert find_credentials(doc, "registry-1.docker.io", "x/y") == Credentials("hub", "h")
    assert find_credentials(doc, "other.example", "a") == Credentials("u", "p")
    assert find_credentials(doc, "helper.example", "a") is None
    assert find_credentials(doc, "127.0.0.1:5001", "team/app") is None
    assert find_credentials({}, "127.0.0.1:5000", "a") is None
    assert find_credentials({"auths": []}, "127.0.0.1:5000", "a") is None
    with pytest.raises(CredentialError, match="not base64"):
        find_credentials({"auths": {"r.example": {"auth": "!!"}}}, "r.example", "a")


def test_credential_files_are_looked_for_where_skopeo_and_docker_look() -> None:
    home = Path("/home/u")
    assert authfile_candidates({}, home) == [home / ".docker" / "config.json"]
    env = {
        "REGISTRY_AUTH_FILE": "/etc/auth.json",
        "XDG_RUNTIME_DIR": "/run/user/1",
        "DOCKER_CONFIG": "/etc/docker",
    }
    assert authfile_candidates(env, home) == [
        Path("/etc/auth.json"),
        Path("/run/user/1/containers/auth.json"),
        Path("/etc/docker/config.json"),
    ]

"""How preheat answers a registry's 401 (agent/preheat/manifests.py `RepoAccess`), against a
fake token service: Basic only with credentials, a bearer token fetched with them (or
anonymously) for the repository, and fetched again when it nears its end."""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from agent.core.upstream import Upstream
from agent.preheat.auth import Credentials
from agent.preheat.images import PreheatError
from agent.preheat.manifests import RepoAccess

UPSTREAM = Upstream("https", "reg.example", 443)
REALM = 'Bearer realm="https://auth.example/token",service="reg.example"'


@dataclass
class Answer:
    status: int
    body: bytes

    async def read_all(self, limit: int) -> bytes:
        return self.body


@dataclass
class FakeTokenService:
    """Hands out token-1, token-2, ... lasting `seconds`; records each request."""

    seconds: int = 300
    status: int = 200
    asked: list[tuple[str, list[tuple[bytes, bytes]]]] = field(default_factory=list)

    @asynccontextmanager
    async def request(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]]
    ) -> AsyncIterator[Answer]:
        self.asked.append((url, headers))
        token = {"token": f"token-{len(self.asked)}", "expires_in": self.seconds}
        yield Answer(self.status, json.dumps(token).encode())


def access(service: FakeTokenService, creds: Credentials | None) -> RepoAccess:
    return RepoAccess(UPSTREAM, "team/app", "reg.example", creds, service)  # type: ignore[arg-type]


async def test_basic_is_answered_only_with_credentials() -> None:
    service = FakeTokenService()
    anonymous = access(service, None)
    with pytest.raises(PreheatError) as refused:
        await anonymous.answer('Basic realm="r"')
    assert "asks for credentials to read team/app" in refused.value.message
    assert "--creds" in refused.value.message and "reg.example" in refused.value.message
    alice = access(service, Credentials("alice", "pw"))
    await alice.answer('Basic realm="r"')
    assert await alice.header() == b"Basic " + base64.b64encode(b"alice:pw")
    assert alice.what == "credentials" and service.asked == []
    assert "refused the credentials of 'alice'" in alice.refused().message


async def test_a_bearer_token_is_fetched_for_the_repository_and_renewed(
    autojump_clock: trio.abc.Clock,
) -> None:
    service = FakeTokenService(seconds=100)
    alice = access(service, Credentials("alice", "pw"))
    await alice.answer(REALM)
    assert await alice.header() == b"Bearer token-1" and alice.what == "a pull token"
    [(url, headers)] = service.asked
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query == {"service": ["reg.example"], "scope": ["repository:team/app:pull"]}
    assert headers == [(b"authorization", b"Basic " + base64.b64encode(b"alice:pw"))]
    await trio.sleep(70)  # within 80% of its life: still good
    assert await alice.header() == b"Bearer token-1"
    await trio.sleep(15)
    assert await alice.header() == b"Bearer token-2"  # renewed before it ran out
    assert len(service.asked) == 2


async def test_an_anonymous_token_is_asked_without_credentials() -> None:
    service = FakeTokenService()
    anonymous = access(service, None)
    await anonymous.answer(REALM)
    assert await anonymous.header() == b"Bearer token-1"
    assert service.asked[0][1] == []


@pytest.mark.parametrize(
    ("challenge", "status", "words"),
    [
        (None, 200, "without a challenge"),
        ('Negotiate x="y"', 200, "negotiate auth"),
        ('Bearer realm="ftp://auth.example/token"', 200, "not an http(s) URL"),
        (REALM, 401, "refused a token for 'alice' for team/app: status 401"),
    ],
)
async def test_a_challenge_preheat_cannot_answer_says_why(
    challenge: str | None, status: int, words: str
) -> None:
    service = FakeTokenService(status=status)
    with pytest.raises(PreheatError) as refused:
        await access(service, Credentials("alice", "pw")).answer(challenge)
    assert words in refused.value.message

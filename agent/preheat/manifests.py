"""Reading an image's manifests from its registry, with the registry's auth: the blobs to warm.

The registry is asked as a pull asks it, through the same client the agent uses for its
upstreams (retries, the upstream CA): the tag with every manifest type in ``Accept``; for an
index, the manifest of each platform asked for, by digest. Every manifest is hashed against
its digest (the one asked for, else the registry's ``Docker-Content-Digest``). A 401 is
answered once, the way a pull answers it (`agent.preheat.auth`); the resulting
``Authorization`` is what the roots get for that repository's blobs. A bearer token is
fetched again when it nears its end, so a long preheat does not hand a root a dead one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from agent.core.errors import RegistryError
from agent.core.upstream import Upstream
from agent.http.client import HttpClient, HttpClientError
from agent.preheat.auth import (
    MAX_TOKEN_REPLY,
    Challenge,
    Credentials,
    parse_challenge,
    parse_token_reply,
    token_url,
)
from agent.preheat.images import (
    ACCEPT,
    MANIFEST_LIMIT,
    Descriptor,
    ImageManifest,
    ImageName,
    Index,
    ManifestError,
    Platform,
    PreheatError,
    parse_manifest,
    select_manifests,
)
from agent.preheat.progress import ImageReport
from agent.registry.client import RegistryClient

TOKEN_MARGIN = 0.8  # a token is fetched again after this share of its life
ERROR_BODY_LIMIT = 64 * 1024

CredentialSource = Callable[[str, str], Credentials | None]  # (registry host, repo) -> creds


@dataclass(eq=False)
class RepoAccess:
    """The ``Authorization`` a pull of one repository of one registry sends (None: none)."""

    upstream: Upstream
    repo: str
    host: str  # the registry as the image names it, for credential files and messages
    credentials: Credentials | None
    http: HttpClient
    authorization: bytes | None = None
    challenge: Challenge | None = field(default=None, repr=False)
    renew_at: float = math.inf

    async def header(self) -> bytes | None:
        """The current Authorization, a bearer token renewed when it nears its end."""
        if self.challenge is not None and trio.current_time() >= self.renew_at:
            await self._fetch_token(self.challenge)
        return self.authorization

    async def answer(self, header: str | None) -> None:
        """Work out the Authorization a 401 with this WWW-Authenticate asks for."""
        challenge = parse_challenge(header)
        where = f"registry {self.upstream.key}"
        if challenge is None:
            raise PreheatError(f"{where} answered 401 to {self.repo} without a challenge")
        if challenge.scheme == "basic":
            if self.credentials is None:
                raise PreheatError(self._needs_credentials())
            self.authorization = self.credentials.basic()
        elif challenge.scheme == "bearer":
            self.challenge = challenge
            await self._fetch_token(challenge)
        else:
            raise PreheatError(f"{where} asks for {challenge.scheme} auth, which preheat lacks")

    @property
    def what(self) -> str:
        """What the Authorization holds, for messages."""
        return "a pull token" if self.challenge is not None else "credentials"

    def refused(self) -> PreheatError:
        """The error for a 401 to credentials already given."""
        if self.credentials is None:
            return PreheatError(self._needs_credentials())
        return PreheatError(
            f"registry {self.upstream.key} refused the credentials of "
            f"{self.credentials.username!r} for {self.repo}"
        )

    def _needs_credentials(self) -> str:
        return (
            f"registry {self.upstream.key} asks for credentials to read {self.repo}: give "
            f"--creds USER:PASSWORD, or an auth file (--authfile, ~/.docker/config.json) entry "
            f"for {self.host}"
        )

    async def _fetch_token(self, challenge: Challenge) -> None:
        try:
            url = token_url(challenge, self.repo)
        except ValueError as exc:
            raise PreheatError(f"registry {self.upstream.key}: {exc}") from None
        headers = [(b"authorization", self.credentials.basic())] if self.credentials else []
        try:
            async with self.http.request("GET", url, headers) as response:
                body = await response.read_all(MAX_TOKEN_REPLY)
        except HttpClientError as exc:
            raise PreheatError(f"token service of {self.upstream.key}: {exc}") from None
        if response.status != 200:
            who = f"for {self.credentials.username!r}" if self.credentials else "anonymously"
            raise PreheatError(
                f"the token service of {self.upstream.key} refused a token {who} for "
                f"{self.repo}: status {response.status}"
            )
        try:
            token, seconds = parse_token_reply(body)
        except ValueError as exc:
            raise PreheatError(f"token service of {self.upstream.key}: {exc}") from None
        self.authorization = b"Bearer " + token.encode()
        self.renew_at = trio.current_time() + seconds * TOKEN_MARGIN


@dataclass(frozen=True)
class BlobRef:
    """A blob to warm: which, how big, from which repository, with which access."""

    descriptor: Descriptor
    kind: str  # "config" or "layer"
    access: RepoAccess


class ManifestReader:
    """Resolves images to their blobs; one `RepoAccess` per registry and repository."""

    def __init__(
        self, registry: RegistryClient, http: HttpClient, credentials: CredentialSource
    ) -> None:
        self._registry = registry
        self._http = http
        self._credentials = credentials
        self._access: dict[tuple[str, str], RepoAccess] = {}

    def access(self, upstream: Upstream, host: str, repo: str) -> RepoAccess:
        key = (upstream.key, repo)
        if key not in self._access:
            creds = self._credentials(host, repo)
            self._access[key] = RepoAccess(upstream, repo, host, creds, self._http)
        return self._access[key]

    @property
    def accesses(self) -> list[RepoAccess]:
        return list(self._access.values())

    async def resolve(
        self, name: ImageName, upstream: Upstream, platforms: Sequence[Platform]
    ) -> tuple[ImageReport, list[BlobRef]]:
        """The image's manifests for `platforms` (any one for a single-platform image) and
        the blobs they name, config blobs first."""
        access = self.access(upstream, name.host, name.repo)
        body, content_type, digest = await self._manifest(access, name.reference, name.text)
        doc = self._parse(body, content_type, name.text)
        images: list[tuple[str | None, str, ImageManifest]] = []
        if isinstance(doc, Index):
            try:
                chosen = select_manifests(doc, platforms)
            except ManifestError as exc:
                raise PreheatError(f"image {name.text}: {exc}") from None
            for platform, descriptor in chosen:
                body, content_type, _ = await self._manifest(access, descriptor.digest, name.text)
                inner = self._parse(body, content_type, name.text)
                if not isinstance(inner, ImageManifest):
                    raise PreheatError(
                        f"image {name.text}: the {platform} entry is an index too (nested "
                        "indexes are not supported)"
                    )
                images.append((str(platform), descriptor.digest, inner))
        else:
            images.append((None, digest, doc))
        blobs: list[BlobRef] = []
        for _, _, manifest in images:
            for blob in manifest.blobs():
                kind = "config" if blob is manifest.config else "layer"
                blobs.append(BlobRef(blob, kind, access))
        report = ImageReport(
            image=name.text,
            registry=upstream.key,
            repository=name.repo,
            reference=name.reference,
            manifests=tuple((p, d) for p, d, _ in images),
        )
        return report, blobs

    @staticmethod
    def _parse(body: bytes, content_type: str | None, image: str) -> Index | ImageManifest:
        try:
            return parse_manifest(body, content_type)
        except ManifestError as exc:
            raise PreheatError(f"image {image}: {exc}") from None

    async def _manifest(
        self, access: RepoAccess, reference: str, image: str
    ) -> tuple[bytes, str | None, str]:
        """GET a manifest (answering one 401); (body, content type, digest), verified."""
        path = f"/v2/{access.repo}/manifests/{reference}"
        upstream = access.upstream
        for attempt in range(2):
            headers = [(b"accept", t.encode()) for t in ACCEPT]
            authorization = await access.header()
            if authorization:
                headers.append((b"authorization", authorization))
            try:
                async with self._registry.open(
                    "GET", upstream, path, headers, follow_redirects=False
                ) as resp:
                    status = resp.status
                    if status == 200:
                        body = await resp.read_all(MANIFEST_LIMIT)
                        content_type = resp.header("content-type")
                        header_digest = resp.header("docker-content-digest")
                    else:
                        body = await resp.read_all(ERROR_BODY_LIMIT)
                        challenge = resp.header("www-authenticate")
            except RegistryError as exc:
                raise PreheatError(f"image {image}: {exc.message}") from None
            except HttpClientError as exc:
                raise PreheatError(f"image {image}: registry {upstream.key}: {exc}") from None
            if status == 401 and attempt == 0:
                await access.answer(challenge)
                continue
            if status == 401:
                raise access.refused()
            if status != 200:
                raise PreheatError(_refusal(image, upstream.key, status, body))
            digest = _verified(body, reference, header_digest, image)
            return body, content_type, digest
        raise AssertionError("unreachable")


def _refusal(image: str, registry: str, status: int, body: bytes) -> str:
    """The registry's no, with its error code (MANIFEST_UNKNOWN, NAME_UNKNOWN, DENIED...)."""
    detail = ""
    try:
        errors = json.loads(body).get("errors") or []
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors[:3])
    except (ValueError, AttributeError, TypeError):
        pass
    what = "not found" if status == 404 else f"refused ({status})"
    return f"image {image} {what} at registry {registry}" + (f" ({detail})" if detail else "")


def _verified(body: bytes, reference: str, header_digest: str | None, image: str) -> str:
    """The manifest's digest, after checking the body against the one asked for (or the
    registry's header); the body's sha256 when neither names one."""
    expected = reference if ":" in reference else header_digest
    algorithm, _, hexpart = (expected or "").partition(":")
    if algorithm in ("sha256", "sha512"):
        actual = hashlib.new(algorithm, body).hexdigest()
        if actual != hexpart:
            raise PreheatError(f"image {image}: manifest does not match its digest {expected}")
        return f"{algorithm}:{actual}"
    return "sha256:" + hashlib.sha256(body).hexdigest()

"""Errors shared by every layer; the bottom of the import graph."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what was expected."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config {key}: {message}")
        self.key = key


class RegistryError(Exception):
    """A failure the client must see as a registry v2 error response.

    Raised anywhere below the HTTP front end; the front end turns it into the status and the
    registry's JSON error body, so one place decides how errors look on the wire.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        detail: object = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or []

    def body(self) -> bytes:
        """The registry's JSON error body, so clients print our message like a registry's."""
        import json

        err: dict[str, object] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            err["detail"] = self.detail
        return json.dumps({"errors": [err]}).encode()

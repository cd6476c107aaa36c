"""detect_node_ip picks the default route's source address without sending a packet."""

from __future__ import annotations

import socket
import typing

import pytest

from agent.node import address as nodeaddr

# --- node address ---------------------------------------------------------------------------


class FakeUDPSocket:
    """Stands in for socket.socket: records connect() and reports a source address."""

    routes: typing.ClassVar[dict[int, str | None]] = {}

    def __init__(self, family: int, kind: int) -> None:
        assert kind == socket.SOCK_DGRAM
        self.family = family
        self.address: str | None = None

    def __enter__(self) -> FakeUDPSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def connect(self, address: tuple[str, int]) -> None:
        source = self.routes.get(self.family)
        if source is None:
            raise OSError(101, "Network is unreachable")
        self.address = source

    def getsockname(self) -> tuple[str, int]:
        assert self.address is not None
        return (self.address, 40000)

    def send(self, data: bytes) -> int:  # pragma: no cover - must never be called
        raise AssertionError("detect_node_ip must not send")


@pytest.mark.parametrize(
    ("routes", "want"),
    [
        ({socket.AF_INET: "10.1.2.3", socket.AF_INET6: "fd00::3"}, "10.1.2.3"),
        ({socket.AF_INET6: "fd00::3"}, "fd00::3"),
        ({}, "127.0.0.1"),
    ],
)
def test_detect_node_ip(monkeypatch: pytest.MonkeyPatch, routes: dict[int, str], want: str) -> None:
    monkeypatch.setattr(FakeUDPSocket, "routes", routes)
    monkeypatch.setattr(socket, "socket", FakeUDPSocket)  # undone after the test
    assert nodeaddr.detect_node_ip() == want

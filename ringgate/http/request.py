"""What a handler gets (Request) and what it returns (Answer), and how a route is declared."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import parse_qs

SINGLE_HEADERS = (b"authorization", b"content-type", b"content-encoding", b"content-length")
"""Headers that mean two different requests when repeated (a proxy may check one, we another)."""


class Request:
    """One HTTP request: its ASGI scope and receive, headers as a dict (names are lower case in
    ASGI), path parameters from the route, and when it arrived."""

    __slots__ = ("scope", "receive", "headers", "params", "received_ns", "repeated", "_query")

    def __init__(self, scope: dict, receive, params: dict[str, str] | None = None) -> None:
        self.received_ns = time.time_ns()
        self.scope = scope
        self.receive = receive
        raw = scope["headers"]
        self.headers: dict[bytes, bytes] = dict(raw)
        self.repeated = len(self.headers) != len(raw)  # some name came twice: see repeated_single
        self.params = params or {}
        self._query: dict[str, list[str]] | None = None

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def path(self) -> str:
        return self.scope["path"]

    def query(self, name: str) -> str | None:
        """The last value of a query parameter, or None."""
        if self._query is None:
            raw = self.scope.get("query_string", b"")
            self._query = parse_qs(raw.decode("latin-1"), keep_blank_values=True) if raw else {}
        values = self._query.get(name)
        return values[-1] if values else None

    def repeated_single(self) -> bytes | None:
        """The first of SINGLE_HEADERS that this request carries more than once."""
        if not self.repeated:
            return None
        seen = set()
        for name, _ in self.scope["headers"]:
            if name in SINGLE_HEADERS:
                if name in seen:
                    return name
                seen.add(name)
        return None

    @property
    def client(self) -> str:
        client = self.scope.get("client")
        return client[0] if client else ""


class Answer(NamedTuple):
    """A NamedTuple: the hot path builds one per request with tuple.__new__, no Python frame."""

    status: int
    body: bytes = b""
    content_type: bytes | None = b"application/json"
    headers: list[tuple[bytes, bytes]] | tuple = ()


Handler = Callable[[Request], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Route:
    """`path` is literal or has `{name}` segments; `source` names the source whose records this
    route takes (its answers are counted in ringgate_requests_total)."""

    path: str
    handler: Handler
    methods: tuple[str, ...] = ("POST",)
    source: str = ""

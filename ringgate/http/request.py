"""What a handler gets (Request) and what it returns (Answer), and how a route is declared."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import parse_qs

SINGLE_HEADERS = (b"authorization", b"content-type", b"content-encoding", b"content-length")
"""Headers that mean two different requests when repeated (a proxy may check one, we another)."""


class Request(NamedTuple):
    """One HTTP request: its ASGI scope and receive, headers as a dict (names are lower case in
    ASGI), path parameters from the route, when it arrived, and whether a header name came twice.

    A NamedTuple built by `of` with tuple.__new__: one is made per request, and a class with an
    __init__ costs a Python frame more."""

    scope: dict
    receive: object
    headers: dict[bytes, bytes]
    params: dict[str, str]
    received_ns: int
    repeated: bool
    """Some header name came twice (see repeated_single)."""

    @classmethod
    def of(cls, scope: dict, receive, params: dict[str, str] | None = None) -> Request:
        raw = scope["headers"]
        headers = dict(raw)
        return _new_tuple(cls, (scope, receive, headers, params or {}, time.time_ns(), len(headers) != len(raw)))

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def path(self) -> str:
        return self.scope["path"]

    def query(self, name: str) -> str | None:
        """The last value of a query parameter, or None."""
        raw = self.scope.get("query_string", b"")
        values = parse_qs(raw.decode("latin-1"), keep_blank_values=True).get(name) if raw else None
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


_new_tuple = tuple.__new__


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

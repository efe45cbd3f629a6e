"""`create_app(settings)`: the ASGI application of one HTTP worker.

Routes come from the sources (ringgate.sources, one module per protocol) and the status
endpoints; the router is a dict of literal paths plus the few `{name}` patterns, in front of
plain ASGI (no framework objects on the hot path). Each Granian worker builds its app through
this factory and attaches to the rings at startup; it never creates or unlinks them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
from time import time_ns

from .. import sources
from ..config import Settings
from ..errors import ConfigurationError
from ..gateway import Gateway
from ..keys import Keys
from ..metrics import STATUS_COLUMN_OF
from ..process import REQUEST_ID, SUPERVISOR_PID_ENV, configure_logging, die_with_supervisor
from ..ring import RingError
from . import status
from .answers import json_answer
from .body import Disconnected
from .request import Request, Route

log = logging.getLogger("ringgate.http")

_PARAM = re.compile(r"\{(\w+)\}")
_new_tuple = tuple.__new__
_set_request_id = REQUEST_ID.set
# a client's X-Request-ID is kept when it is 1-128 visible ASCII characters (no space, no control:
# it goes into log lines as it is), else replaced by one of ours
_client_request_id = re.compile(rb"[\x21-\x7e]{1,128}").fullmatch


ID_BATCH = 512


def fresh_request_ids() -> list[bytes]:
    """ID_BATCH new request ids: 16 hex digits of os.urandom each, made in one go (three C calls
    per batch), so a request pays one list.pop: formatting one id per request cost ~2,800
    instructions (callgrind), more than the rest of the request id's work together."""
    return os.urandom(8 * ID_BATCH).hex(" ", 8).encode().split()


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.literal: dict[str, list[Route]] = {}
        self.patterns: list[tuple[re.Pattern, list[Route]]] = []
        by_pattern: dict[str, list[Route]] = {}
        for route in routes:
            if "{" in route.path:
                by_pattern.setdefault(route.path, []).append(route)
            else:
                self.literal.setdefault(route.path, []).append(route)
        # (method, literal path) → route: the hot path's one lookup (HEAD and 405 go through match)
        self.exact = {(m, r.path): r for r in reversed(routes) if "{" not in r.path for m in r.methods}
        for path, group in by_pattern.items():
            regex = re.compile("^" + _PARAM.sub(r"(?P<\1>[^/]+)", re.escape(path).replace(r"\{", "{").replace(r"\}", "}")) + "$")
            self.patterns.append((regex, group))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, path parameters, path known); HEAD is answered by a GET route without its body."""
        params: dict[str, str] = {}
        group = self.literal.get(path)
        if group is None:
            for regex, candidates in self.patterns:
                found = regex.match(path)
                if found:
                    group, params = candidates, found.groupdict()
                    break
            else:
                return None, params, False
        for route in group:
            if method in route.methods:
                return route, params, True
        if method == "HEAD":
            for route in group:
                if "GET" in route.methods:
                    return route, params, True
        return None, params, True


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gateway = Gateway(settings)
        self.router = Router(sources.routes(self.gateway) + status.routes(self.gateway))
        self._ids = fresh_request_ids()

    def start(self) -> None:
        if self.gateway.started:
            return
        self._ids = fresh_request_ids()  # a worker forked after the app was built draws its own
        configure_logging(self.settings.log_format, self.settings.log_level)
        die_with_supervisor()
        if _under_supervisor():
            try:  # SIGHUP in the loop, between requests, rather than between two bytecodes
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_keys)
            except RuntimeError:
                pass  # started outside the loop: the handler create_app set stays
        try:
            self.gateway.start()
        except (OSError, RingError) as exc:
            log.critical("cannot attach the rings of instance %s: %s", self.settings.instance, exc)
            raise

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        if not self.gateway.rings:
            self.start()
        method = scope["method"]
        raw = scope["headers"]
        headers = dict(raw)  # Request.of, written out: this runs per request
        request_id = headers.get(b"x-request-id")
        if request_id is None or not _client_request_id(request_id):
            ids = self._ids
            if not ids:
                ids = self._ids = fresh_request_ids()
            request_id = ids.pop()
        _set_request_id(request_id)
        route = self.router.exact.get((method, scope["path"]))
        params: dict[str, str] = {}
        known = True
        if route is None:
            route, params, known = self.router.match(method, scope["path"])
        if route is None:
            if known:
                answer = json_answer(405, {"error": "method_not_allowed", "detail": f"{method} is not allowed here"})
            else:
                answer = json_answer(404, {"error": "not_found", "detail": f"no such endpoint: {scope['path']}"})
        else:
            try:
                req = _new_tuple(Request, (scope, receive, headers, params, time_ns(), len(headers) != len(raw)))
                answer = await route.handler(req)
            except Disconnected:
                return
            except Exception:
                log.exception("%s %s failed", method, scope["path"])
                answer = json_answer(500, {"error": "internal_error", "detail": "the gateway failed; see its log"})
            if route.source:
                self.gateway.metrics.row[STATUS_COLUMN_OF[answer.status]] += 1
        if answer.content_type is None:
            headers = [(b"x-request-id", request_id), *answer.headers]
        else:
            headers = [(b"content-type", answer.content_type), (b"x-request-id", request_id), *answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else answer.body})

    def reload_keys(self) -> None:
        """SIGHUP (the supervisor passes it on): re-read RINGGATE_API_KEYS_FILE and swap this
        worker's Keys; a request holds the Keys it started with. A file that cannot be read or
        holds no key leaves the keys in force as they were (auth never fails open)."""
        gw = self.gateway
        if not self.settings.api_keys_file:
            return
        try:
            keys = Keys.from_settings(self.settings)
        except ConfigurationError as exc:
            log.error("SIGHUP: API keys not reloaded, the %d in force stay: %s", len(gw.keys.names), exc)
            return
        gw.keys = keys
        if gw.metrics is not None:
            gw.register_clients()
        log.info("SIGHUP: API keys reloaded from RINGGATE_API_KEYS_FILE: %d key(s)", len(keys.names))

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.start()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which stops
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _under_supervisor() -> bool:
    return SUPERVISOR_PID_ENV in os.environ and threading.current_thread() is threading.main_thread()


def create_app(settings: Settings | None = None) -> App:
    """The worker's app; without settings, those the supervisor handed down (or the environment).

    Under a supervisor, SIGHUP is caught before the key file is first read, so no reload falls in
    between; App.start moves the handler into the event loop."""
    made: list[App] = []
    if _under_supervisor():
        signal.signal(signal.SIGHUP, lambda *_: made and made[0].reload_keys())
    app = App(settings if settings is not None else Settings.from_child_environ())
    made.append(app)
    return app

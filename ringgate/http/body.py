"""Reading a request body within the worker's byte budget and the body deadline (§9).

Bytes count against RINGGATE_WORKER_INFLIGHT_BYTES as they arrive, not by a declared
Content-Length, so a client that declares 16 MiB and sends one byte holds one byte; a body not
complete within RINGGATE_BODY_TIMEOUT_S is a 408 and the connection is closed. Slow clients
cannot lock the others out.
"""

from __future__ import annotations

import asyncio
import time

from ..errors import Refusal
from ..gateway import Gateway
from .request import Request


class Disconnected(Exception):
    """The client went away before its body was complete: there is no one to answer."""


def declared_length(req: Request) -> int | None:
    value = req.headers.get(b"content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise Refusal(400, "bad_request", f"Content-Length is not a number: {value[:40]!r}")
    return int(value)


class Deadlines:
    """The body deadlines of one worker's event loop, enforced by one watchdog task that wakes
    every `tick` seconds and cancels the reads past theirs. A timer per request (asyncio.timeout)
    costs ~4 µs on the hot path; this costs a dict insert and a delete. A read is cancelled
    between its deadline and one tick later."""

    def __init__(self) -> None:
        self.reading: dict[asyncio.Task, float] = {}
        self.expired: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def enter(self, timeout_s: float) -> asyncio.Task:
        task = asyncio.current_task()
        self.reading[task] = time.monotonic() + timeout_s
        if self._watchdog is None or self._watchdog.done() or self._loop is not asyncio.get_running_loop():
            self._loop = asyncio.get_running_loop()
            self._watchdog = self._loop.create_task(self._watch(self._loop, min(1.0, timeout_s / 4)))
        return task

    def leave(self, task: asyncio.Task) -> None:
        self.reading.pop(task, None)

    def timed_out(self, task: asyncio.Task) -> bool:
        """True (once) when `task` was cancelled by its deadline; it is uncancelled then."""
        if task not in self.expired:
            return False
        self.expired.discard(task)
        task.uncancel()
        return True

    async def _watch(self, loop: asyncio.AbstractEventLoop, tick: float) -> None:
        while self.reading:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for task, deadline in list(self.reading.items()):
                if deadline <= now and task.get_loop() is loop:
                    del self.reading[task]
                    self.expired.add(task)
                    task.cancel()


_deadlines = Deadlines()


async def read_body(gw: Gateway, req: Request, limit: int) -> tuple[bytes, int]:
    """(body, bytes held against the budget); the caller releases what is held once done."""
    declared = declared_length(req)
    if declared is not None and declared > limit:
        raise Refusal(413, "body_too_large", f"Content-Length {declared} exceeds RINGGATE_MAX_BODY_BYTES ({limit})")
    chunks: list[bytes] = []
    held = 0
    task = _deadlines.enter(gw.settings.body_timeout_s)
    try:
        while True:
            message = await req.receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            if chunk:
                if held + len(chunk) > limit:
                    raise Refusal(413, "body_too_large", f"body exceeds RINGGATE_MAX_BODY_BYTES ({limit})")
                gw.hold(len(chunk))
                held += len(chunk)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        gw.release(held)
        if not _deadlines.timed_out(task):
            raise
        raise Refusal(
            408, "body_timeout",
            f"the body was not complete within RINGGATE_BODY_TIMEOUT_S ({gw.settings.body_timeout_s:g}s); "
            f"{held} bytes arrived",
        ) from None
    except BaseException:
        gw.release(held)
        raise
    finally:
        _deadlines.leave(task)
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), held

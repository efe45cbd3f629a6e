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


class Deadlines:
    """The body deadlines of one worker's event loop, enforced by one watchdog task that wakes
    every `tick` seconds and cancels the reads past theirs. A timer per request (asyncio.timeout)
    costs ~4 µs on the hot path; this costs a dict insert and a delete. A read is cancelled
    between its deadline and one tick later."""

    def __init__(self) -> None:
        self.reading: dict[asyncio.Task, float] = {}
        self.expired: set[asyncio.Task] = set()
        self.watchdog: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start_watchdog(self, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.watchdog = self.loop.create_task(self._watch(self.loop, min(1.0, timeout_s / 4)))

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
                if deadline <= now and task.get_loop() is loop and task not in self.expired:
                    self.expired.add(task)  # read_body takes it out of `reading`
                    task.cancel()


_deadlines = Deadlines()


async def read_body(gw: Gateway, req: Request, limit: int) -> tuple[bytes, int]:
    """(body, bytes held against the budget); the caller releases what is held once done."""
    declared = req.headers.get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        if not declared.isdigit():
            raise Refusal(400, "bad_request", f"Content-Length is not a number: {declared[:40]!r}")
        raise Refusal(413, "body_too_large", f"Content-Length {int(declared)} exceeds RINGGATE_MAX_BODY_BYTES ({limit})")
    chunks: list[bytes] = []
    held = 0
    budget = gw.settings.worker_inflight_bytes
    # _deadlines.enter, written out: this runs per request
    task = asyncio.current_task()
    _deadlines.reading[task] = time.monotonic() + gw.settings.body_timeout_s
    watchdog = _deadlines.watchdog
    if watchdog is None or watchdog.done() or _deadlines.loop is not asyncio.get_running_loop():
        _deadlines.start_watchdog(gw.settings.body_timeout_s)
    try:
        while True:
            message = await req.receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            if chunk:
                n = len(chunk)
                if held + n > limit:
                    raise Refusal(413, "body_too_large", f"body exceeds RINGGATE_MAX_BODY_BYTES ({limit})")
                if gw.inflight_bytes + n > budget:
                    raise Refusal(429, "overloaded", "this worker holds too many request bytes; retry shortly", 1)
                gw.inflight_bytes += n
                held += n
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        gw.inflight_bytes -= held
        if not _deadlines.timed_out(task):
            raise
        raise Refusal(
            408, "body_timeout",
            f"the body was not complete within RINGGATE_BODY_TIMEOUT_S ({gw.settings.body_timeout_s:g}s); "
            f"{held} bytes arrived",
        ) from None
    except BaseException:
        gw.inflight_bytes -= held
        raise
    finally:
        del _deadlines.reading[task]
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), held

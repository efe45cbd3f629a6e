"""What every child process does first: die with the supervisor, and log the way it is told to."""

from __future__ import annotations

import contextvars
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable

SUPERVISOR_PID_ENV = "RINGGATE_SUPERVISOR_PID"
RING_COUNT_ENV = "RINGGATE_RING_COUNT"  # rings of this run: adopted ones may outnumber RINGGATE_FLUSHERS
PR_SET_PDEATHSIG = 1

REQUEST_ID: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("ringgate_request_id", default=None)
"""The X-Request-ID of the request this task serves (ringgate.http.app sets it per request); every
log line written while it is set carries it: `request_id` in JSON, ` request_id=<id>` in text."""


def die_with_supervisor() -> None:
    """PR_SET_PDEATHSIG(SIGKILL), then check the parent is still the supervisor that started us.

    The signal fires when the *thread* that forked us exits, so the supervisor starts children
    only from threads that live as long as it does. The check closes the race where the
    supervisor died before the prctl.
    """
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if expected is None:
        return  # not started by a supervisor (tests, tools)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(expected):
        os._exit(1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


PROCESS_STATES = {"R": "running", "S": "sleeping", "D": "disk-wait", "T": "stopped", "t": "traced",
                  "Z": "zombie", "X": "dead", "I": "idle"}


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat from field 3 on (after the command name, which may hold spaces); None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def process_state(pid: int) -> str | None:
    """What the kernel says the process is doing (/proc/<pid>/stat field 3); None when gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    code = fields[0].decode()
    return PROCESS_STATES.get(code, code)


def process_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (/proc/<pid>/stat field 22); None when gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def process_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={request_id}" if request_id else line


def _with_request_id(record: logging.LogRecord) -> bool:
    """A handler filter: the record takes the request id of the task that logs it."""
    if not hasattr(record, "request_id"):
        request_id = REQUEST_ID.get()
        record.request_id = request_id.decode("ascii") if request_id is not None else None
    return True


class _ScrubbingFormatter(logging.Formatter):
    """Any formatter's line with the sink URLs' passwords replaced by ***: messages, arguments and
    tracebacks alike (a library's exception text may quote a URL or a connection string)."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        from .sinks import scrub

        # before formatting too: JSON escaping would hide a password with '"' or '\\' in it
        clean = logging.makeLogRecord(record.__dict__)
        clean.msg, clean.args = scrub(record.getMessage(), self.secrets), None
        if record.exc_info:
            clean.exc_text = scrub(self.inner.formatException(record.exc_info), self.secrets)
            clean.exc_info = None
        return scrub(self.inner.format(clean), self.secrets)


def settings_secrets(settings) -> list[str]:
    """What the logs must never show: the passwords in RINGGATE_SINK and RINGGATE_DLQ."""
    from .sinks import url_secrets

    return url_secrets(settings.sink) + url_secrets(settings.dlq)


def configure_logging(fmt: str, level: str, secrets: Iterable[str] | None = None) -> None:
    """`secrets`: strings never to print; by default those of the RINGGATE_SINK and
    RINGGATE_DLQ this process was started with (every child inherits them)."""
    if secrets is None:
        from .sinks import url_secrets

        secrets = [s for name in ("RINGGATE_SINK", "RINGGATE_DLQ") for s in url_secrets(os.environ.get(name, ""))]
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        inner: logging.Formatter = _JsonFormatter()
    else:
        inner = _TextFormatter("%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    handler.setFormatter(_ScrubbingFormatter(inner, secrets))
    handler.addFilter(_with_request_id)
    root = logging.getLogger("ringgate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False

"""Supervisor (`ringgate serve`): rings, flushers, Granian, drain.

Order of a run: validate settings (exit 2), take the instance lock (exit 1 if another supervisor
holds it), adopt the rings a crashed run left behind or create new ones, start the flushers from
a thread that lives as long as we do (PR_SET_PDEATHSIG fires when the forking *thread* exits),
run Granian in the main thread, and when it returns (SIGTERM/SIGINT) tell every flusher to drain.
Drained within RINGGATE_DRAIN_TIMEOUT_S: unlink the rings, exit 0. Otherwise exit 1 and leave
the rings for the next run: nothing acknowledged is lost.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from . import ratelimit
from .config import Settings
from .errors import ConfigurationError, UntrustedFileError
from .metrics import Metrics
from .process import RING_COUNT_ENV, SUPERVISOR_PID_ENV, configure_logging, settings_secrets
from .ring import IMPL_NAME, Ring, RingError, existing_rings, segment_name, segment_path
from .shm import open_private
from .sinks import redact

log = logging.getLogger("ringgate.supervisor")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
#: header bytes an HTTP/2 client may send (RINGGATE_HTTP=auto): Granian's default is 16 MiB, far
#: past what HTTP/1.1 allows it (its 416 KiB read buffer), and each stream may use it
HTTP2_MAX_HEADER_BYTES = 64 * 1024


class InstanceLock:
    """One live supervisor per instance: an flock the kernel drops when we die.

    The file is ours alone (open_private): one another user made could be flock'ed by them,
    keeping every supervisor of the instance out, or be a symlink that ftruncate would follow."""

    def __init__(self, instance: str) -> None:
        self.path = segment_path(f"{instance}.lock")
        self.fd = open_private(self.path, create=True)

    def acquire(self) -> bool:
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            # a supervisor that exits unlinks the file: if we locked a file no longer at the path,
            # another supervisor may hold the new one, so lock what the path names now
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(self.fd)
            if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                break
            os.close(self.fd)
            self.fd = open_private(self.path, create=True)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return True

    def holder(self) -> str:
        return os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"

    def release(self, unlink: bool) -> None:
        """Unlink when this instance leaves nothing behind (unlink first, still holding the lock)."""
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self.fd)


class FlusherManager(threading.Thread):
    """Starts, watches and restarts one flusher process per ring; drains them on request."""

    def __init__(self, settings: Settings, ring_count: int, env: dict[str, str]) -> None:
        super().__init__(name="flusher-manager", daemon=True)
        self.settings = settings
        self.env = env
        self.procs: list[subprocess.Popen | None] = [None] * ring_count
        self.restarts = [0] * ring_count
        self.next_start = [0.0] * ring_count
        self.draining = threading.Event()
        self.stopped = threading.Event()
        self.finished = threading.Event()
        self.exit_codes: dict[int, int] = {}

    def _start(self, index: int) -> None:
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-m", "ringgate", "flusher", str(index)], env=self.env, close_fds=True
        )
        log.info("flusher %d started (pid %d)", index, self.procs[index].pid)

    def run(self) -> None:
        try:
            for i in range(len(self.procs)):
                self._start(i)
            while not self.stopped.is_set():
                for i, proc in enumerate(self.procs):
                    if proc is None:
                        if time.monotonic() >= self.next_start[i] and not self.stopped.is_set():
                            self._start(i)
                        continue
                    code = proc.poll()
                    if code is None:
                        continue
                    if code == 0 and self.draining.is_set():
                        self.exit_codes[i] = 0
                        continue
                    self.restarts[i] += 1
                    delay = min(5.0, 0.1 * 2 ** min(self.restarts[i], 6))
                    log.error("flusher %d (pid %d) exited with %s; restarting in %.1fs",
                              i, proc.pid, code, delay)
                    self.procs[i] = None
                    self.next_start[i] = time.monotonic() + delay
                if self.draining.is_set() and len(self.exit_codes) == len(self.procs):
                    break
                self.stopped.wait(0.1)
        finally:
            self.finished.set()
            # the thread that forked the flushers must outlive them (PDEATHSIG): wait here
            self.stopped.wait()

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def serve(settings: Settings) -> int:
    configure_logging(settings.log_format, settings.log_level, secrets=settings_secrets(settings))
    try:
        lock = InstanceLock(settings.instance)
        acquired = lock.acquire()
    except UntrustedFileError as exc:
        print(f"ringgate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not acquired:
        print(
            f"ringgate: instance {settings.instance!r} is already served by supervisor pid {lock.holder()} "
            f"({lock.path}); stop it or set RINGGATE_INSTANCE",
            file=sys.stderr,
        )
        lock.release(unlink=False)  # not ours
        return EXIT_FAILED
    try:
        _check_listen(settings)
    except OSError as exc:
        print(f"ringgate: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        lock.release(unlink=True)
        return EXIT_FAILED
    try:
        rings = _open_shared_memory(settings)
    except UntrustedFileError as exc:
        print(f"ringgate: {exc}", file=sys.stderr)
        lock.release(unlink=True)
        return EXIT_FAILED
    except ConfigurationError as exc:
        print(f"ringgate: {exc}", file=sys.stderr)
        lock.release(unlink=True)
        return EXIT_CONFIG
    except (RingError, OSError) as exc:
        print(f"ringgate: cannot open the rings of instance {settings.instance!r}: {exc}", file=sys.stderr)
        lock.release(unlink=True)
        return EXIT_FAILED

    child_env = dict(os.environ)
    child_env.update(settings.to_child_environ())
    child_env[RING_COUNT_ENV] = str(len(rings))
    child_env[SUPERVISOR_PID_ENV] = str(os.getpid())
    child_env["RINGGATE_IMPL"] = IMPL_NAME
    os.environ.update(child_env)  # Granian forks its workers from this process

    manager = FlusherManager(settings, len(rings), child_env)
    manager.start()
    log.info(
        "serving %s:%d with %d workers, %d rings of %d bytes (%s ring), sink %s",
        settings.host, settings.port, settings.workers, len(rings), rings[0].capacity, IMPL_NAME,
        redact(settings.sink),
    )
    failed = False
    try:
        if not _run_granian(settings):
            log.error("the HTTP server stopped without being asked to (worker crash loop?): draining")
            failed = True
    except Exception:
        log.exception("HTTP server failed")
        failed = True
    code = _drain(settings, rings, manager, lock)
    return EXIT_FAILED if failed else code


def _check_listen(settings: Settings) -> None:
    """Fail before creating anything when the address is taken (Granian would only raise later)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((settings.host, settings.port))


def _open_shared_memory(settings: Settings) -> list[Ring]:
    """The metrics segment, then the rings; nothing of ours is left behind if either is refused
    (UntrustedFileError), and nothing of anyone else's is changed."""
    Metrics.create(settings.instance)
    limited = False
    try:
        if settings.rate_limit:
            ratelimit.create(settings.instance)
            limited = True
        return _open_rings(settings)
    except BaseException:
        Metrics.unlink(settings.instance)
        if limited:  # only what we made: a refused segment is someone else's
            ratelimit.unlink(settings.instance)
        raise


def _open_rings(settings: Settings) -> list[Ring]:
    """Adopt what a crashed run left (its capacity and count win until drained), else create."""
    found = existing_rings(settings.instance)
    if found:
        rings = [Ring.attach(segment_name(settings.instance, i)) for i in found]
        held = sum(r.producer_position - r.consumer_position for r in rings)
        log.warning(
            "adopting %d ring(s) of %d bytes left by a previous run of %s, holding %d bytes: "
            "they are delivered first", len(rings), rings[0].capacity, settings.instance, held,
        )
        return rings
    rings = []
    try:
        for i in range(settings.flushers):
            rings.append(Ring.create(segment_name(settings.instance, i), settings.ring_bytes))
    except BaseException:
        for ring in rings:
            ring.close()
            ring.unlink()
        raise
    return rings


def _run_granian(settings: Settings) -> bool:
    """Serve until SIGTERM/SIGINT; False if Granian stopped on its own (e.g. a worker crash loop)."""
    from pathlib import Path

    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP2Settings

    # HTTPS only when configured (Granian then speaks no cleartext on the port); HTTP/2 only
    # when asked for: Granian's default, auto, also accepts cleartext HTTP/2 (h2c prior knowledge)
    tls = {"ssl_cert": Path(settings.tls_cert), "ssl_key": Path(settings.tls_key)} if settings.tls_cert else {}
    server = Granian(
        "ringgate.http.app:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.uvloop,
        respawn_failed_workers=True,
        log_level=settings.log_level if settings.log_level != "warning" else "warn",
        http=HTTPModes.auto if settings.http == "auto" else HTTPModes.http1,
        http2_settings=HTTP2Settings(max_headers_size=HTTP2_MAX_HEADER_BYTES),
        **tls,
    )
    # Granian's own SIGHUP respawns every worker (a new one, 3.5 s, then SIGTERM to the old, whose
    # keep-alive connections close under their clients); ours only has each worker re-read the
    # key file in place. Granian installs `self.signal_handler_reload` when serve() starts.
    server.signal_handler_reload = functools.partial(_reload_keys_in_workers, server, settings, os.getpid())
    server.serve()
    return bool(getattr(server, "interrupt_signal", True))


def _reload_keys_in_workers(server, settings: Settings, supervisor_pid: int, *_args) -> None:
    """SIGHUP: pass it to every HTTP worker, which re-reads RINGGATE_API_KEYS_FILE (ringgate.http.app)."""
    if os.getpid() != supervisor_pid:
        return  # a worker forked with this handler, before it set its own: it reads the file next
    if not settings.api_keys_file:
        log.warning("SIGHUP: RINGGATE_API_KEYS_FILE is not set, so there is nothing to re-read")
        return
    pids = [pid for pid in (worker._id() for worker in list(server.wrks)) if pid]
    log.info("SIGHUP: %d HTTP worker(s) re-read RINGGATE_API_KEYS_FILE", len(pids))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            pass  # exited: its successor reads the file when it starts


def _drain(settings: Settings, rings: list[Ring], manager: FlusherManager, lock: InstanceLock) -> int:
    log.info("stopping: draining %d ring(s) (up to %.0fs)", len(rings), settings.drain_timeout_s)
    for ring in rings:
        ring.draining = True
    manager.draining.set()
    deadline = time.monotonic() + settings.drain_timeout_s
    while not manager.finished.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    drained = manager.finished.is_set() and all(r.consumer_position >= r.producer_position for r in rings)
    manager.kill_all()
    manager.stopped.set()
    if not drained:
        left = sum(r.producer_position - r.consumer_position for r in rings)
        log.error(
            "drain timed out after %.0fs with %d bytes undelivered: leaving the rings for the next run",
            settings.drain_timeout_s, left,
        )
        for ring in rings:
            ring.draining = False
            ring.close()
        lock.release(unlink=True)
        return EXIT_FAILED
    for ring in rings:
        ring.close()
        ring.unlink()
    Metrics.unlink(settings.instance)
    ratelimit.unlink(settings.instance)
    log.info("drained: every acknowledged record is delivered")
    lock.release(unlink=True)
    return EXIT_OK


def check_tls(settings: Settings) -> None:
    """ConfigurationError unless RINGGATE_TLS_CERT / RINGGATE_TLS_KEY (when set) are readable PEM
    files holding a certificate and its unencrypted key: found now, not by every worker failing
    its TLS set-up in a respawn loop."""
    if not settings.tls_cert:
        return
    import ssl

    for name, path in (("RINGGATE_TLS_CERT", settings.tls_cert), ("RINGGATE_TLS_KEY", settings.tls_key)):
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 20)
        except OSError as exc:
            raise ConfigurationError(f"{name} must be a readable PEM file: {path}: {exc.strerror}") from None
        if b"-----BEGIN " not in head:
            raise ConfigurationError(f"{name} must be a PEM file (-----BEGIN ...): {path}")

    def no_password() -> bytes:
        raise ValueError("the key is encrypted")

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(settings.tls_cert, settings.tls_key, no_password)
    except (ssl.SSLError, ValueError) as exc:
        why = getattr(exc, "reason", None) or str(exc)
        raise ConfigurationError(
            "RINGGATE_TLS_CERT and RINGGATE_TLS_KEY must be a PEM certificate (chain) and its unencrypted "
            f"private key: {settings.tls_cert}, {settings.tls_key}: {why}"
        ) from None


def main() -> int:
    try:
        settings = Settings.from_environ()
        check_tls(settings)
    except ConfigurationError as exc:
        print(f"ringgate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return serve(settings)

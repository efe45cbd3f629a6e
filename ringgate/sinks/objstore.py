"""Object storage through obstore: S3, GCS, Azure, local files, memory. One object per batch.

Key: `<prefix>/dt=YYYY-MM-DD/hour=HH/<batch.name>.ndjson[.gz|.zst]`, date and hour (UTC) from the
batch's first record. A batch is always the same records under the same name, so a retried or
replayed batch overwrites its own object: never two objects holding the same record.

Up to one part (`part_bytes`) an object is one PUT. Larger, it streams as a multipart upload
through `obstore.open_writer` used as a context manager: an exception inside the block aborts the
upload. obstore 0.12 has no other abort or list-uploads call, so an upload whose abort cannot reach
the server (the network is down) stays until a bucket lifecycle rule expires incomplete uploads.

Every failure is a `RetryableSinkError` whose message names the cause: object stores never refuse
content, so the flusher retries with backoff until the fault is fixed. obstore's own retries are
kept low (`retry_max`) so the flusher sees failures and counts them; the sink never sleeps.

S3-compatible endpoints (MinIO, Ceph, moto...) need only the standard variables:
`AWS_ENDPOINT_URL=http://host:port`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`
and, for plain http, `AWS_ALLOW_HTTP=true`. obstore sends path-style requests unless
`AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`.
"""

from __future__ import annotations

import errno
import os
import re
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import obstore
import zstandard
from obstore.store import LocalStore, MemoryStore, from_url

from ..errors import ConfigurationError, RetryableSinkError
from . import redact, sink_kind
from .base import Batch

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

MIB = 1 << 20
#: S3's smallest part (every part but the last); GCS and Azure accept it too.
MIN_PART_BYTES = 5 * MIB
COMPRESSIONS = ("none", "gzip", "zstd")
SUFFIXES = {"none": ".ndjson", "gzip": ".ndjson.gz", "zstd": ".ndjson.zst"}
CONTENT_TYPES = {"none": "application/x-ndjson", "gzip": "application/gzip", "zstd": "application/zstd"}
#: gzip level 1: 2.6x the speed of the default 6 on ~128-byte JSON events (144 vs 55 MB/s)
#: for 11% larger objects (ratio 0.287 vs 0.258); a flusher
#: compresses a whole batch between ring reads, so speed wins. zstd 3 is zstd's own default.
GZIP_LEVEL = 1
ZSTD_LEVEL = 3
#: input bytes compressed per step: the compressor's output is collected into part-sized pieces
COMPRESS_STEP = 1 * MIB

#: prefix of the provider's environment variables, which obstore's builders read
ENV_PREFIXES = {"s3": "AWS_", "gs": "GOOGLE_", "az": "AZURE_"}
#: ClientConfig keys obstore would read as <PREFIX><KEY> from the environment. Passing
#: `client_options` replaces everything the builder read from there (AWS_ALLOW_HTTP=true is
#: silently dropped and http endpoints fail with "builder error"), so read them ourselves.
CLIENT_ENV_KEYS = (
    "allow_http",
    "allow_invalid_certificates",
    "connect_timeout",
    "default_content_type",
    "http1_only",
    "http2_only",
    "http2_keep_alive_interval",
    "http2_keep_alive_timeout",
    "http2_keep_alive_while_idle",
    "pool_idle_timeout",
    "pool_max_idle_per_host",
    "proxy_url",
    "proxy_ca_certificate",
    "proxy_excludes",
    "randomize_addresses",
    "read_timeout",
    "root_certificate",
    "timeout",
    "user_agent",
)


def sink_name(url: str) -> str:
    """The sink's label ("file", "s3", "gs", "az", "memory") for a URL; ConfigurationError if none.
    The schemes are those of `ringgate.sinks.KINDS`."""
    kind = sink_kind(url)
    if kind is None or not kind.object_store:
        raise ConfigurationError(
            f"object store URL must be file://, s3://, gs://, az:// or memory://: {redact(url)!r}"
        )
    return kind.label


def open_store(url: str, *, retry_max: int = 1, timeout_s: float = 30) -> tuple[ObjectStore, str]:
    """Turn a sink URL into an obstore store and the key prefix inside it ("" for none).

    - `file:///abs/path`, `file://./relative` (resolved against the current directory now) → a
      LocalStore rooted at that directory, created if missing; prefix "".
    - `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` → a store for the
      bucket, configured from the provider's environment variables (obstore's `from_env`);
      prefix "prefix".
    - `memory://` → a MemoryStore (this process only).

    Raises ConfigurationError for a URL or configuration that can never work, and
    RetryableSinkError when the local directory cannot be created (yet).
    """
    name = sink_name(url)
    parts = urllib.parse.urlsplit(url)
    if name == "file":
        directory = _local_directory(parts)
        try:
            os.makedirs(directory, exist_ok=True)
            return LocalStore(directory), ""
        except Exception as exc:
            raise RetryableSinkError(
                f"file sink cannot use directory {directory}: {describe(exc)}",
                reason=f"cannot create its directory: {_cause(exc, str(exc)) or type(exc).__name__}",
            ) from exc
    prefix = parts.path.strip("/")
    if name == "memory":
        return MemoryStore(), "/".join(p for p in (parts.netloc, prefix) if p)
    if not parts.netloc:
        raise ConfigurationError(f"object store URL names no bucket or container: {redact(url)!r}")
    retry: RetryConfig = {
        "max_retries": retry_max,
        "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=1)},
        "retry_timeout": timedelta(seconds=timeout_s * (retry_max + 1)),
    }
    try:
        store = from_url(
            f"{parts.scheme}://{parts.netloc}",
            retry_config=retry,
            client_options=_client_options(ENV_PREFIXES[name], timeout_s),
        )
    except Exception as exc:
        raise ConfigurationError(f"cannot configure object store {redact(url)!r}: {describe(exc)}") from exc
    return store, prefix


def _local_directory(parts: urllib.parse.SplitResult) -> str:
    # file:///abs → netloc "" ; file://./rel → netloc "." ; file://localhost/abs is absolute too.
    # Anything else in the netloc (file://data/x) is read as a relative path, as an operator meant.
    if parts.netloc in ("", "localhost"):
        path = urllib.parse.unquote(parts.path) or "/"
    else:
        path = urllib.parse.unquote(parts.netloc + parts.path)
    return os.path.abspath(path)


def _client_options(env_prefix: str, timeout_s: float) -> ClientConfig:
    options: dict[str, Any] = {
        "timeout": timedelta(seconds=timeout_s),
        "connect_timeout": timedelta(seconds=min(timeout_s, 10)),
    }
    for key in CLIENT_ENV_KEYS:
        value = os.environ.get(env_prefix + key.upper())
        if value is not None and value.strip():
            options[key] = value.strip()  # obstore parses strings ("true", "30s") itself
    return options  # type: ignore[return-value]


class ObjectStoreSink:
    """One object per batch, NDJSON, optionally gzip or zstd; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        part_bytes: int = 8 * MIB,
        compression: str = "none",
        retry_max: int = 1,
        timeout_s: float = 30.0,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ConfigurationError(
                f"RINGGATE_OBJECT_COMPRESSION must be one of {', '.join(COMPRESSIONS)}: {compression!r}"
            )
        if part_bytes < MIN_PART_BYTES:
            raise ConfigurationError(
                f"RINGGATE_OBJECT_PART_BYTES must be at least {MIN_PART_BYTES} (S3's smallest part): {part_bytes}"
            )
        self.url = url
        self.name = sink_name(url)
        self.part_bytes = part_bytes
        self.compression = compression
        self._retry_max = retry_max
        self._timeout_s = timeout_s
        # LocalStore refuses attributes (NotImplementedError); the extension says it all there.
        self._attributes = None if self.name == "file" else {"Content-Type": CONTENT_TYPES[compression]}
        self._store: ObjectStore | None = None
        self.prefix = ""
        try:
            self._open()
        except RetryableSinkError:
            pass  # e.g. a directory that cannot be created yet: every deliver tries again and says why

    def _open(self) -> ObjectStore:
        store, self.prefix = open_store(self.url, retry_max=self._retry_max, timeout_s=self._timeout_s)
        self._store = store
        return store

    def key(self, batch: Batch) -> str:
        """`<prefix>/dt=YYYY-MM-DD/hour=HH/<batch.name>.ndjson[.gz|.zst]`, UTC of the first record."""
        t = time.gmtime(int(batch.received_ns[0]) // 1_000_000_000)
        key = f"dt={t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}/hour={t.tm_hour:02d}/{batch.name}"
        key += SUFFIXES[self.compression]
        return f"{self.prefix}/{key}" if self.prefix else key

    def deliver(self, batch: Batch) -> None:
        if batch.count == 0:
            return
        store = self._store if self._store is not None else self._open()
        key = self.key(batch)
        pieces = self._pieces(batch.ndjson())
        try:
            first = next(pieces)
            second = next(pieces, None)
            if second is None and len(first) <= self.part_bytes:
                obstore.put(store, key, first, attributes=self._attributes, use_multipart=False)
                return
        except Exception as exc:
            raise RetryableSinkError(self._message(key, exc), reason=failure_class(exc)) from exc
        head = [first] if second is None else [first, second]
        del first, second  # the writer holds each piece only until its part is uploaded
        self._multipart(store, key, head, pieces)

    def _multipart(self, store: ObjectStore, key: str, head: list[Any], rest: Iterator[Any]) -> None:
        stage = "upload"
        try:
            # max_concurrency=0: every write first waits for the parts already in flight. A part
            # that fails then raises inside the block, where __exit__ aborts the upload; left to
            # the close, object_store's WriteMultipart::finish returns a failed part's error
            # without aborting. It also keeps memory to one part in flight plus the next one.
            with obstore.open_writer(
                store, key, buffer_size=self.part_bytes, attributes=self._attributes, max_concurrency=0
            ) as writer:
                while head:
                    writer.write(head.pop(0))
                for piece in rest:
                    writer.write(piece)
                writer.write(b"")  # wait for every full part; only the tail and the completion remain
                stage = "complete"
        except Exception as exc:
            # A failure inside the block raises from __exit__ only if the abort failed too; the
            # original error is then its __context__ (nothing in the block runs in a handler).
            if stage == "upload" and exc.__context__ is not None:
                message = (
                    f"{self._message(key, exc.__context__)}; aborting the multipart upload also "
                    f"failed ({describe(exc)}): an incomplete upload may remain until a lifecycle "
                    "rule expires it"
                )
            elif stage == "complete" and _code(str(exc)) != "NoSuchUpload":
                message = (
                    f"{self._message(key, exc)} (while completing the multipart upload: an incomplete "
                    "upload may remain until a lifecycle rule expires it)"
                )
            else:
                message = self._message(key, exc)
            raise RetryableSinkError(message, reason=failure_class(exc.__context__ or exc)) from exc

    def _pieces(self, data: memoryview) -> Iterator[Any]:
        """The object's bytes in pieces of about one part: zero-copy slices, or compressed output."""
        size = self.part_bytes
        if self.compression == "none":
            for offset in range(0, len(data), size):
                yield data[offset : offset + size]
            return
        if self.compression == "gzip":
            # wbits 31: a gzip member, mtime 0 and no name, so a retried batch is byte-identical
            compressor: Any = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        else:
            # the pledged size puts the content size in the frame header (zstd -d, decompress())
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj(size=len(data))
        pending: list[bytes] = []
        pending_bytes = 0
        for offset in range(0, len(data), COMPRESS_STEP):
            out = compressor.compress(data[offset : offset + COMPRESS_STEP])
            if out:
                pending.append(out)
                pending_bytes += len(out)
                if pending_bytes >= size:
                    yield b"".join(pending)
                    pending, pending_bytes = [], 0
        pending.append(compressor.flush())
        yield b"".join(pending)

    def _message(self, key: str, exc: BaseException) -> str:
        return f"{self.name} sink could not write {key} to {redact(self.url)}: {describe(exc)}"

    def close(self) -> None:
        self._store = None  # obstore stores hold no handles to release


_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_OS_ERROR = re.compile(r"os error (\d+)")
_OS_CODE = re.compile(r"Os \{\s*code: (\d+)")
_OS_MESSAGE = re.compile(r'Os \{[^}]*message: "([^"]+)"')
_LOST_CONNECTION = (
    "ConnectionReset",
    "connection reset",
    "IncompleteMessage",
    "connection closed",
    "BrokenPipe",
    "error sending request",
)
_THROTTLE_CODES = ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests")


def _code(text: str) -> str | None:
    match = _CODE.search(text)
    return match.group(1) if match else None


def describe(exc: BaseException) -> str:
    """One line for an operator: the cause in words, then obstore's own summary of the request."""
    text = str(exc)
    summary = " ".join(text.split("\n\nDebug source:", 1)[0].split())
    if len(summary) > 500:
        summary = summary[:500] + "..."
    cause = _cause(exc, text)
    return f"{cause}: {summary}" if cause else summary or type(exc).__name__


def failure_class(exc: BaseException) -> str:
    """What went wrong, without the endpoint, bucket, key or path: for /readyz."""
    return _cause(exc, str(exc)) or f"request failed ({type(exc).__name__})"


def _cause(exc: BaseException, text: str) -> str | None:
    status_match = _STATUS.search(text)
    status = int(status_match.group(1)) if status_match else None
    code = _code(text)
    os_errno = exc.errno if isinstance(exc, OSError) and exc.errno else None
    if os_errno is None and (match := _OS_ERROR.search(text) or _OS_CODE.search(text)):
        os_errno = int(match.group(1))
    if code == "NoSuchBucket":
        return "the bucket does not exist (NoSuchBucket)"
    if code == "NoSuchUpload":
        return "the server no longer knows the multipart upload (NoSuchUpload); the next attempt starts again from the first part"
    if code in _THROTTLE_CODES or status == 429:
        return f"throttled by the server ({code or status}): slow down and retry"
    if isinstance(exc, obstore.exceptions.PermissionDeniedError) or status == 403:
        return f"permission denied (403{' ' + code if code else ''}): check the credentials and the bucket policy"
    if isinstance(exc, obstore.exceptions.UnauthenticatedError) or status == 401:
        return f"not authenticated (401{' ' + code if code else ''}): check the credentials"
    if status is not None and status >= 500:
        return f"server error {status}{' ' + code if code else ''}"
    if "BadScheme" in text:
        return "an http:// endpoint needs AWS_ALLOW_HTTP=true (GOOGLE_/AZURE_ALLOW_HTTP for gs/az)"
    os_message = _OS_MESSAGE.search(text)
    detail = f" ({os_message.group(1).lower()})" if os_message else ""
    if "ConnectionRefused" in text or "Connection refused" in text:
        return "connection refused by the endpoint"
    if "dns error" in text or "failed to lookup address" in text:
        return "the endpoint's host name does not resolve"
    if "TimedOut" in text or "timed out" in text:
        return "the request timed out"
    if "tcp connect error" in text:
        return f"cannot connect to the endpoint{detail}"
    if any(marker in text for marker in _LOST_CONNECTION):
        return f"the connection to the endpoint was lost{detail}"
    if os_errno is not None:
        name = errno.errorcode.get(os_errno, str(os_errno))
        return f"{os.strerror(os_errno).lower()} ({name})"
    if status is not None:
        return f"HTTP {status}{' ' + code if code else ''}"
    return None

"""Content-Encoding: gzip and zstd, decoded within the body limit, in time linear in the bytes.

Concatenated gzip members and zstd frames are allowed (RFC 1952 and RFC 8878 both permit them;
`gzip -c a b` makes them), at most MAX_MEMBERS per body: each member is read from a window of
the body, so no member re-copies the rest of it (160,000 empty members used to cost seconds).
Decompression never produces more than `limit + 1` bytes, so a bomb costs its limit, not its
ratio.
"""

from __future__ import annotations

import enum
import functools
import threading
import zlib
from types import ModuleType

from ..errors import Refusal
from .records import shown

MAX_MEMBERS = 64
_WINDOW = 64 << 10  # compressed bytes handed to zlib at once: bounds what unused_data copies
_ZSTD_READ = 256 << 10


class Encoding(enum.Enum):
    IDENTITY = "identity"
    GZIP = "gzip"
    ZSTD = "zstd"


@functools.cache
def _zstandard() -> ModuleType | None:
    """The `zstandard` module, imported on first use; None where it is not installed."""
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


@functools.lru_cache(maxsize=64)
def parse_encoding(content_encoding: str | None) -> Encoding:
    """A missing, empty or `identity` Content-Encoding means no coding; `gzip`/`x-gzip` and (where
    the zstandard package imports) `zstd` are decoded; anything else is 415 `unsupported_encoding`."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return Encoding.IDENTITY
    if coding in ("gzip", "x-gzip"):
        return Encoding.GZIP
    if coding == "zstd" and _zstandard() is not None:
        return Encoding.ZSTD
    if coding == "zstd":
        why = "zstd is not available here (the zstandard package is not installed)"
    elif "," in coding:
        why = "at most one content coding is supported"
    else:
        why = "supported: gzip, x-gzip, zstd, identity"
    raise Refusal(415, "unsupported_encoding", f"unsupported Content-Encoding {shown(content_encoding or '')}; {why}")


def decode(body: bytes, encoding: Encoding, limit: int) -> bytes:
    """The body with its content coding removed; 413 past `limit` decoded bytes, 400 `bad_encoding`."""
    if encoding is Encoding.IDENTITY:
        if len(body) > limit:
            raise Refusal(413, "body_too_large", f"body is {len(body)} bytes; the limit is {limit} bytes")
        return body
    if encoding is Encoding.GZIP:
        return gunzip(body, limit)
    return unzstd(body, limit)


def _too_large(limit: int, coding: str) -> Refusal:
    return Refusal(413, "body_too_large", f"{coding} body decodes to more than the limit of {limit} bytes")


def _too_many_members(coding: str, unit: str) -> Refusal:
    return Refusal(400, "bad_encoding", f"{coding} body has more than {MAX_MEMBERS} {unit}")


def gunzip(data: bytes, limit: int) -> bytes:
    """gzip → bytes, never producing more than limit + 1 bytes; up to MAX_MEMBERS members."""
    view = memoryview(data)
    n = len(data)
    parts: list[bytes] = []
    total = 0
    position = 0
    members = 0
    while True:
        members += 1
        if members > MAX_MEMBERS:
            raise _too_many_members("gzip", "members")
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing only
        while not d.eof:
            if position >= n:
                raise Refusal(400, "bad_encoding", "gzip body is empty or truncated (no end of stream)")
            end = min(position + _WINDOW, n)
            try:
                # max_length is what bounds memory against bombs; reaching it means the limit is
                # passed (it is >= 1 here: 0 would mean unlimited)
                part = d.decompress(view[position:end], limit + 1 - total)
            except zlib.error as exc:
                raise Refusal(400, "bad_encoding", f"gzip body does not decode: {exc}") from None
            total += len(part)
            if total > limit:
                raise _too_large(limit, "gzip")
            parts.append(part)
            position = end - len(d.unused_data)  # unused_data: at most one window, after this member
        if position >= n:
            break
        if view[position : position + 2] != b"\x1f\x8b":
            raise Refusal(400, "bad_encoding", f"{n - position} bytes of trailing garbage after the gzip stream")
    return parts[0] if len(parts) == 1 else b"".join(parts)


_thread_state = threading.local()


def _zstd_decompressor(zstandard: ModuleType):
    """One ZstdDecompressor per thread: creating one costs ~14 µs, and one must not be shared
    between threads at once (large bodies are decoded off the event loop)."""
    dctx = getattr(_thread_state, "zstd", None)
    if dctx is None:
        dctx = _thread_state.zstd = zstandard.ZstdDecompressor()
    return dctx


def unzstd(data: bytes, limit: int) -> bytes:
    """zstd → bytes, never producing more than limit + 1 bytes; up to MAX_MEMBERS frames."""
    zstandard = _zstandard()
    if zstandard is None:
        raise Refusal(415, "unsupported_encoding", "zstd is not available here (the zstandard package is not installed)")
    try:
        declared = zstandard.frame_content_size(data)  # -1 when the frame does not say
    except zstandard.ZstdError as exc:
        raise Refusal(400, "bad_encoding", f"zstd body does not decode: {exc}") from None
    if declared > limit:
        raise _too_large(limit, "zstd")
    dctx = _zstd_decompressor(zstandard)
    view = memoryview(data)
    parts: list[bytes] = []
    total = 0
    try:
        # First the read, bounded by the limit: a bomb stops at limit + 1 bytes.
        reader = dctx.stream_reader(view, read_across_frames=True)
        size = declared + 1 if declared >= 0 else _ZSTD_READ  # one past a declared size: a lie shows
        while True:
            part = reader.read(min(size, limit + 1 - total))
            if not part:
                break
            total += len(part)
            if total > limit:
                raise _too_large(limit, "zstd")
            parts.append(part)
            size = _ZSTD_READ
        # Then the frame walk: it counts frames and finds truncation (the reader ends quietly at
        # a truncated frame). Each frame is fed from a window of the body; the read above bounded
        # the whole output by the limit, so no call here can make more.
        frames = 0
        position = 0
        n = len(data)
        while position < n:
            frames += 1
            if frames > MAX_MEMBERS:
                raise _too_many_members("zstd", "frames")
            dobj = dctx.decompressobj()
            while not dobj.eof:
                if position >= n:
                    raise Refusal(400, "bad_encoding", "zstd body is truncated (incomplete frame)")
                end = min(position + _WINDOW, n)
                dobj.decompress(view[position:end])
                position = end - len(dobj.unused_data)
    except zstandard.ZstdError as exc:
        raise Refusal(400, "bad_encoding", f"zstd body does not decode: {exc}") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)

"""Sinks: where flushers deliver batches. psycopg and obstore are imported only below this package.

`KINDS` is the one table of sink URLs: each kind's label, the schemes that name it, whether it can
hold dead letters, and the rule its URL must meet. `config` checks RINGGATE_SINK and RINGGATE_DLQ
against it before anything starts (exit 2), `make_sink` builds from it, and nothing imported here
needs psycopg or obstore.

A URL may carry a password (`postgresql://user:secret@host/db`). `redact(url)` is the only form
of a sink URL that is ever printed; `url_secrets(url)` lists what the logs scrub on top of that.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from .base import Batch, Sink

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "KINDS", "Batch", "Sink", "SinkKind", "check_url", "make_sink", "redact", "scrub", "sink_kind", "sink_label",
    "url_secrets",
]

MASK = "***"


@dataclass(frozen=True)
class SinkKind:
    label: str  # in metrics, logs, /readyz and dead-letter lines
    schemes: tuple[str, ...]
    #: an obstore store: can also hold dead letters
    object_store: bool
    #: the URL's shape, for messages
    form: str
    #: None if `url` (of one of `schemes`) is usable, else the rule it breaks
    check: Callable[[str], str | None]
    #: RINGGATE_FLUSHERS by default: min(cores, this). A sink whose server does the work per
    #: connection (PostgreSQL parses every row in the backend of the COPY's connection) gains
    #: from one flusher, ring and connection per core; a local or object store does not
    max_default_flushers: int = 1


def _check_file(url: str) -> str | None:
    if not url.lower().startswith("file://"):
        return "written file://"
    if url[len("file://"):] in ("", "/"):
        return "a directory, not the root (file:///absolute/path or file://./relative)"
    return None


def _bucket_rule(word: str, at_allowed: bool = False) -> Callable[[str], str | None]:
    def check(url: str) -> str | None:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            return "a URL"
        if "//" not in url:
            return f"written {parts.scheme}://{word}/prefix"
        if not parts.netloc:
            return f"a URL naming a {word} ({parts.scheme}://{word}/prefix)"
        userinfo = parts.netloc.rpartition("@")[0]
        if (userinfo and not at_allowed) or ":" in userinfo:
            return (f"a URL without credentials (they come from the provider's environment variables): "
                    f"{parts.scheme}://{word}/prefix")
        return None

    return check


def _check_postgresql(url: str) -> str | None:
    """The rules libpq's URI parser applies (fe-connect.c, conninfo_uri_parse_options), plus the
    shapes where libpq would take part of a password for a host, a port or a database name and
    print it in its errors."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "written postgresql://[user[:password]@][host][:port][/dbname][?key=value&...]"
    if re.search(r"%(?![0-9A-Fa-f]{2})", rest):
        return "a URL whose every '%' starts an escape of two hex digits (%40 for '@')"
    if re.search(r"%00", rest):
        return "a URL without %00"
    # libpq: the user name and password end at the first '@', looked for up to the first '/'
    at = rest.split("/", 1)[0].find("@")
    netloc, path, query = re.fullmatch(r"([^/?]*)(/[^?]*)?(?:\?(.*))?", rest[at + 1 :], re.S).groups("")
    if "@" in netloc or "@" in path:
        return "a URL with '@' in the user name or password written %40 and '/' written %2F"
    for host in netloc.split(","):
        if host.startswith("["):
            end = host.find("]")
            if end < 0:
                return "a URL whose IPv6 host is closed with ']'"
            port = host[end + 1 :]
            if port and not port.startswith(":"):
                return "a URL with ':port' after an IPv6 host"
            port = port[1:]
        else:
            port = host.partition(":")[2]
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            return "a URL whose port is a number from 1 to 65535 (a '/' in the password must be written %2F)"
    for param in query.split("&") if query else ():
        if param.count("=") != 1 or param.startswith("="):
            return "a URL whose query is key=value pairs joined by '&'"
    return None


KINDS: tuple[SinkKind, ...] = (
    SinkKind("file", ("file",), True, "file:///abs/path or file://./relative", _check_file),
    SinkKind("s3", ("s3", "s3a"), True, "s3://bucket/prefix", _bucket_rule("bucket")),
    SinkKind("gs", ("gs",), True, "gs://bucket/prefix", _bucket_rule("bucket")),
    # abfs[s]://container@account.dfs.core.windows.net/path names the container before the '@'
    SinkKind("az", ("az", "azure", "abfs", "abfss", "adl"), True, "az://container/prefix",
             _bucket_rule("container", at_allowed=True)),
    SinkKind("memory", ("memory",), True, "memory://", lambda url: None),
    SinkKind("postgresql", ("postgresql", "postgres"), False, "postgresql://user@host:port/db", _check_postgresql,
             max_default_flushers=4),
    SinkKind("stdout", ("stdout",), False, "stdout:", lambda url: None),
)
_BY_SCHEME = {scheme: kind for kind in KINDS for scheme in kind.schemes}


def sink_kind(url: str) -> SinkKind | None:
    scheme, sep, _ = url.partition(":")
    return _BY_SCHEME.get(scheme.strip().lower()) if sep else None


def sink_label(url: str) -> str:
    kind = sink_kind(url)
    return kind.label if kind else "unknown"


def check_url(name: str, value: str, *, dead_letters: bool = False) -> str:
    """`value` if it is a usable sink URL (for `dead_letters`: an object store), else a
    ConfigurationError naming `name` and the rule, and showing the URL only redacted."""
    kinds = [k for k in KINDS if k.object_store or not dead_letters]
    kind = sink_kind(value)
    if kind is None or kind not in kinds:
        forms = ", ".join(k.form for k in kinds)
        raise ConfigurationError(f"{name} must be a URL, one of {forms}: {redact(value)!r}")
    rule = kind.check(value)
    if rule is not None:
        raise ConfigurationError(f"{name} must be {rule}: {redact(value)!r}")
    return value


# ------------------------------------------------------------------------------------ secrets

#: query parameters whose values are secrets (libpq's password and sslpassword, SAS tokens...)
_SECRET_PARAM = re.compile(r"([?&])([A-Za-z_]*(?:password|secret|token|sig))=([^&#]*)", re.IGNORECASE)


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where in `url` a secret may stand: the password, secret query values, and, for a URL that
    does not parse, anything a parser might take for a password (up to the *last* '@', and a
    port that is not a number), so a half-parsed password never shows in part."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return []
    base = len(scheme) + 3
    kind = sink_kind(url)
    valid = kind is not None and kind.check(url) is None
    spans = []
    # a valid URL's user information ends at its first '@' (libpq's rule, and no '@' may follow
    # before the path); in one that does not parse, a password may hold '@', '/' or '?'
    at = rest.split("/", 1)[0].find("@") if valid else rest.rfind("@")
    if at >= 0:
        colon = rest.find(":", 0, at)
        if colon >= 0:
            spans.append((base + colon + 1, base + at))
    elif not valid:
        authority = re.split(r"[/?]", rest, maxsplit=1)[0]
        offset = 0
        for host in authority.split(","):
            port = re.search(r"(?<!\]):([^:\]]*)$", host) if not host.startswith("[") else re.search(r"\]:(.*)$", host)
            if port and not port.group(1).isdigit():
                spans.append((base + offset + port.start(1), base + offset + port.end(1)))
            offset += len(host) + 1
    for match in _SECRET_PARAM.finditer(url):
        if match.group(3):
            spans.append((match.start(3), match.end(3)))
    return sorted(spans)


def redact(url: str) -> str:
    """`url` with every secret replaced by ***: the only way a sink URL is printed."""
    out, last = [], 0
    for start, end in _secret_spans(url):
        if start >= last:
            out += [url[last:start], MASK]
            last = end
    return "".join(out) + url[last:]


def url_secrets(url: str) -> list[str]:
    """The secrets in `url`, as written and percent-decoded, for scrubbing free text."""
    found = set()
    for start, end in _secret_spans(url):
        raw = url[start:end]
        found.update((raw, urllib.parse.unquote(raw)))
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret replaced by ***."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


# ------------------------------------------------------------------------------------ building


def make_sink(settings: Settings) -> Sink:
    label = sink_label(settings.sink)
    if label == "postgresql":
        from .postgres import PostgresCopySink

        return PostgresCopySink(
            settings.sink,
            table=settings.pg_table,
            instance=settings.instance,
            dedup_key=settings.pg_dedup_key,
            partition=settings.pg_partition,
            record_type=settings.pg_record_type,
        )
    if label == "stdout":
        from .stdout import StdoutSink

        return StdoutSink()
    from .objstore import ObjectStoreSink

    return ObjectStoreSink(
        settings.sink, part_bytes=settings.object_part_bytes, compression=settings.object_compression
    )

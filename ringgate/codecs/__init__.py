"""Request bodies → records: pure functions over bytes, no I/O, no HTTP.

One module per body format (json, ndjson, csv, msgpack), one for content codings (compression),
one for what every format ends in (records: `Records`, `Limits` and the record checks). This
module holds the table from media type to format that ringgate's own formats share (§4): the
sources that take "everything /v1/ingest takes" use `decoder_for`.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable

from ..errors import Refusal
from . import csv, json, msgpack, ndjson
from .compression import Encoding, parse_encoding
from .compression import decode as decode_content
from .records import Limits, Records, shown

__all__ = ["BodyFormat", "Decoder", "Encoding", "Limits", "Records", "decode_body", "decode_with", "decoder_for", "parse_headers"]

Decoder = Callable[[bytes, Limits], Records]
"""A format's framing: the body (content coding removed) → records, or a Refusal."""


class BodyFormat(enum.Enum):
    JSON = "json"
    NDJSON = "ndjson"
    CSV = "csv"
    MSGPACK = "msgpack"


MEDIA_TYPES = {
    "application/json": BodyFormat.JSON,
    "application/x-ndjson": BodyFormat.NDJSON,
    "application/jsonl": BodyFormat.NDJSON,
    "text/csv": BodyFormat.CSV,
    "application/msgpack": BodyFormat.MSGPACK,
    "application/x-msgpack": BodyFormat.MSGPACK,
}

_DECODERS: dict[BodyFormat, Decoder] = {
    BodyFormat.JSON: json.decode,
    BodyFormat.NDJSON: ndjson.decode,
    BodyFormat.CSV: csv.decode,
    BodyFormat.MSGPACK: msgpack.decode,
}


def media_type(content_type: str | None) -> str:
    """The media type without parameters, lower case; '' when the header is missing or empty."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_format(content_type: str | None) -> BodyFormat:
    """A missing (or empty) Content-Type is JSON; parameters (`; charset=utf-8`) are ignored."""
    name = media_type(content_type)
    if not name:
        return BodyFormat.JSON
    fmt = MEDIA_TYPES.get(name)
    if fmt is None:
        raise Refusal(
            415, "unsupported_media_type",
            f"unsupported Content-Type {shown(content_type or '')}; expected one of {', '.join(MEDIA_TYPES)}",
        )
    return fmt


def parse_headers(content_type: str | None, content_encoding: str | None) -> tuple[BodyFormat, Encoding]:
    """Body format and content coding from the request headers, checked before the body is read."""
    return parse_format(content_type), parse_encoding(content_encoding)


@functools.lru_cache(maxsize=64)
def decoder_for(content_type: bytes | None, envelope_keys: tuple[str, ...] = json.ENVELOPE_KEYS) -> Decoder:
    """The decoder for one of ringgate's own body formats (415 for any other media type),
    remembered per header value: clients send the same few (refusals are not cached)."""
    fmt = parse_format(content_type.decode("latin-1") if content_type else None)
    if fmt is BodyFormat.JSON and envelope_keys != json.ENVELOPE_KEYS:
        return functools.partial(json.decode, keys=envelope_keys)
    return _DECODERS[fmt]


def decode_body(
    body: bytes, fmt: BodyFormat, encoding: Encoding, *, max_body_bytes: int, max_record_bytes: int,
    max_records: int = 100_000,
) -> Records:
    """The whole decode of a body in one of ringgate's own formats: content coding, then framing.

    Raises Refusal for every client fault and nothing else for any input bytes. The checks run in
    DESIGN §4 order where they can: 413 `body_too_large` (the limit applies to the decoded bytes),
    400 `bad_encoding`, `empty_body`, `invalid_utf8`, `invalid_json` / `bad_csv`, 413
    `record_too_large`, 400 `not_an_object`, `too_deep`."""
    return decode_with(_DECODERS[fmt], bytes(body), encoding, Limits(max_body_bytes, max_record_bytes, max_records))


def decode_with(decode: Decoder, body: bytes, encoding: Encoding, limits: Limits) -> Records:
    """A body through its content coding, the empty-body check, then `decode` (any source's
    framing): every step a Refusal for a client fault."""
    body = decode_content(body, encoding, limits.max_body_bytes)
    # isspace() is ASCII-only and stops at the first other byte: free for any real body.
    if not body or body.isspace():
        decoded = " after decoding" if encoding is not Encoding.IDENTITY else ""
        what = "empty" if not body else "only whitespace"
        raise Refusal(400, "empty_body", f"the body is {what}{decoded}: no records")
    return decode(body, limits)

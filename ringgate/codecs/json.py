"""A JSON body: an array of objects, or an envelope object holding one under a known key.

The hot path never builds Python objects for the records: msgspec decodes them as `Raw` (the
client's bytes, syntax-checked), and `records.finish` checks the rest over the whole blob. The
record count is bounded before that decode: by the commas in the body (free: a memchr-speed
count) or, when those are too many, by counting the array's elements with a scan.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import msgspec

from ..errors import Refusal
from .records import (
    MAX_DEPTH,
    MIN_FRAMED_BYTES,
    Limits,
    Records,
    check_utf8,
    count_elements,
    element_index,
    finish,
    first_deeper,
)

ENVELOPE_KEYS = ("records", "events")
"""ringgate's own envelope keys (§4); a source may accept others (`payload`)."""

_JSON_WS = b" \t\r\n"
_MALFORMED = re.compile(r"JSON is malformed: (.*) \(byte (\d+)\)")
_INT = msgspec.json.Decoder(int)
PRIORITIES = range(0, 11)


def problem(exc: msgspec.DecodeError, length: int, base: int = 0) -> tuple[int, str]:
    """(byte position, what) from msgspec's message, positions shifted by base."""
    message = str(exc)
    match = _MALFORMED.fullmatch(message)
    if match:
        return base + int(match.group(2)), match.group(1)
    if message == "Input data was truncated":
        return base + length, "unexpected end of input"
    return -1, message


def invalid(exc: msgspec.DecodeError, body: bytes) -> Refusal:
    position, what = problem(exc, len(body))
    if position < 0:
        return Refusal(400, "invalid_json", f"invalid JSON: {what}")
    return Refusal(400, "invalid_json", f"invalid JSON at byte {position}: {what}")


class _Decoders:
    """msgspec decoders for one set of envelope keys: records as `list[Raw]`, or as one `Raw`."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        fields = [(k, list[msgspec.Raw] | msgspec.UnsetType, msgspec.UNSET) for k in keys]
        raw_fields = [(k, msgspec.Raw | msgspec.UnsetType, msgspec.UNSET) for k in keys]
        priority = [("priority", msgspec.Raw | msgspec.UnsetType, msgspec.UNSET)]
        # Undeclared keys (batch_id, anything else) are skipped by msgspec unparsed.
        envelope = msgspec.defstruct("Envelope", fields + priority)
        raw_envelope = msgspec.defstruct("RawEnvelope", raw_fields + priority)
        self.full = msgspec.json.Decoder(list[msgspec.Raw] | envelope)
        self.raw = msgspec.json.Decoder(raw_envelope)  # msgspec takes no Raw inside a union
        self.list = msgspec.json.Decoder(list[msgspec.Raw])
        self.key_pattern = re.compile(
            rb'"(?:' + b"|".join(re.escape(k.encode()) for k in keys) + rb')"[ \t\r\n]*:[ \t\r\n]*\Z'
        )
        quoted = [f'"{k}"' for k in keys]
        self.named = ", ".join(quoted[:-1]) + (" or " if len(quoted) > 1 else "") + quoted[-1]


@functools.cache
def _decoders(keys: tuple[str, ...]) -> _Decoders:
    return _Decoders(keys)


_OWN = _decoders(ENVELOPE_KEYS)


def decode(body: bytes, limits: Limits, keys: tuple[str, ...] = ENVELOPE_KEYS) -> Records:
    if not body.isascii():
        check_utf8(body, lines=False)
    d = _OWN if keys is ENVELOPE_KEYS else _decoders(keys)
    bound = (len(body) + 1) // 2  # a record and its comma take two bytes at least
    if (bound > limits.max_records or bound * MIN_FRAMED_BYTES > limits.max_framed_bytes) and not limits.within_count(
        body.count(b",") + 1
    ):
        # maybe too many records: count the array's elements before building one object each
        stripped = body.lstrip(_JSON_WS)
        array = stripped if stripped[:1] == b"[" else bytes(_records_of(_decode(d.raw, body, d), d))
        if array[:1] == b"[":  # anything else is refused below, by the full decode
            limits.check_count(count_elements(array))
    try:
        value = d.full.decode(body)
    except (msgspec.DecodeError, RecursionError):
        value = _decode(d.full, body, d)  # raises the Refusal that says what is wrong
    if type(value) is list:
        return finish(value, limits)
    if d is _OWN and value.events is msgspec.UNSET and value.records is not msgspec.UNSET:
        raws = value.records  # the common envelope, without a call
    else:
        raws = _records_of(value, d)
    priority = None if value.priority is msgspec.UNSET else _priority(value.priority)
    return finish(raws, limits, priority=priority)


def _decode(decoder: msgspec.json.Decoder, body: bytes, d: _Decoders):
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise Refusal(
            400, "invalid_json",
            f"the body must be a JSON array of objects or an envelope object with a {d.named} array: {exc}",
        ) from None
    except msgspec.DecodeError as exc:
        raise invalid(exc, body) from None
    except RecursionError:
        # msgspec has no depth option; past ~1000 levels it runs out of C stack budget.
        raise _too_deep_unparsed(body, d) from None


def _records_of(envelope, d: _Decoders) -> Sequence:
    found = name = None
    for key in d.keys:  # a loop, not a comprehension: this runs per request
        value = getattr(envelope, key)
        if value is not msgspec.UNSET:
            if found is not None:
                raise Refusal(400, "invalid_json", f'the envelope object has both "{name}" and "{key}"; send one')
            found, name = value, key
    if found is None:
        raise Refusal(
            400, "invalid_json",
            f"the envelope object has no {d.named} array (send a JSON array of objects or {{\"{d.keys[0]}\": [...]}})",
        )
    return found


def _priority(raw) -> int:
    try:
        value = _INT.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        value = None
    if value is None or value not in PRIORITIES:
        raise Refusal(400, "invalid_priority", f"priority must be a whole number from 0 to 10: {bytes(raw)[:40]!r}")
    return value


def may_name_priority(body: bytes) -> bool:
    """False when `body` surely names no priority: it holds neither the key as written nor any
    escape (a key spelled with \\u escapes needs a backslash). A memchr and a substring search
    (~5 µs for 13 KB), so a crowded gateway refuses a low-priority JSON body without decoding
    it (http.intake)."""
    return b"\\" in body or b'"priority"' in body


def parse_priority(text: bytes) -> int:
    """An `X-Priority` header's value (§8), 0-10."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value not in PRIORITIES:
        raise Refusal(400, "invalid_priority", f"X-Priority must be a whole number from 0 to 10: {text[:40]!r}")
    return value


def _too_deep_unparsed(body: bytes, d: _Decoders) -> Refusal:
    """too_deep for a JSON body msgspec could not even skip through (RecursionError).

    The records sit inside one container level for an array body, two for an envelope
    ({"records": [ ... ]}); the record's index is the number of commas at that level between
    the container's opening bracket and the point where the nesting gets too deep.
    """
    stripped = body.lstrip(_JSON_WS)
    wrapper = 1 if stripped[:1] == b"[" else 2
    position = first_deeper(body, MAX_DEPTH + wrapper)
    if position < 0:
        return Refusal(400, "too_deep", f"nesting is too deep to decode (records may nest at most {MAX_DEPTH} levels)")
    container, index = element_index(body, position, wrapper)
    if wrapper == 2 and (container < 0 or not d.key_pattern.search(body, max(0, container - 64), container)):
        return Refusal(
            400, "too_deep", f"nesting deeper than {MAX_DEPTH} levels at byte {position}, outside the records array"
        )
    return Refusal(400, "too_deep", f"record {index} nests deeper than {MAX_DEPTH} levels (at byte {position})")


Decoder = Callable[[bytes, Limits], Records]

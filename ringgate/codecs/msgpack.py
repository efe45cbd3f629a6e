"""MessagePack (`application/msgpack`, `application/x-msgpack`): an array of maps, or a stream of
maps one after another. Each map is stored as compact JSON: msgspec decodes and re-encodes it
(integer keys become strings, binary becomes base64, as msgspec's JSON encoder does).

The count comes first: an array's header states it; a stream's objects are counted by
msgpack's `Unpacker.skip`, which builds nothing, stopping one past the limit.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import msgspec

from ..errors import Refusal
from .records import Limits, Records, finish

_ARRAY_DECODER = msgspec.msgpack.Decoder(list[Any])
_JSON = msgspec.json.Encoder()


def _invalid(what: str) -> Refusal:
    return Refusal(400, "invalid_msgpack", f"invalid MessagePack: {what}")


def _array_length(body: bytes) -> int | None:
    """Element count from an array header, or None when the body does not start with one."""
    first = body[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    if first == 0xDC and len(body) >= 3:
        return struct.unpack_from(">H", body, 1)[0]
    if first == 0xDD and len(body) >= 5:
        return struct.unpack_from(">I", body, 1)[0]
    return None


def _stream_length(body: bytes, limits: Limits) -> int:
    unpacker = msgpack.Unpacker(max_buffer_size=len(body) + 1)
    unpacker.feed(body)
    count = 0
    end = 0  # where the last complete object ends
    try:
        while end < len(body) and count <= limits.max_records:
            unpacker.skip()
            count += 1
            end = unpacker.tell()
    except msgpack.OutOfData:
        raise _invalid(f"truncated after {count} complete objects (byte {end})") from None
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise _invalid(f"object {count} at byte {end}: {str(exc) or type(exc).__name__}") from None
    return count


def decode(body: bytes, limits: Limits) -> Records:
    if not body:
        raise Refusal(400, "empty_body", "the body is empty: no records")
    count = _array_length(body)
    if count is not None:
        limits.check_count(count)
        payload = body
    else:
        count = _stream_length(body, limits)
        limits.check_count(count)
        payload = b"\xdd" + struct.pack(">I", count) + body  # the stream, as one array
    try:
        values = _ARRAY_DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        raise _invalid(f"the body must be an array of maps or a stream of maps: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _invalid(str(exc)) from None
    except RecursionError:
        raise Refusal(400, "too_deep", "nesting is too deep to decode") from None
    for index, value in enumerate(values):
        if not isinstance(value, dict):
            raise Refusal(400, "not_an_object", f"record {index} is a MessagePack {type(value).__name__}, not a map")
    try:
        raws = [_JSON.encode(value) for value in values]
    except (TypeError, msgspec.EncodeError) as exc:
        raise _invalid(f"a value has no JSON form: {exc}") from None
    except RecursionError:
        raise Refusal(400, "too_deep", "nesting is too deep to encode as JSON") from None
    return finish(raws, limits)

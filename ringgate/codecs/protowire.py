"""The protobuf wire format, walked without building messages: how the protobuf sources (OTLP,
Loki) count records on the raw bytes before a parser builds one object per record (§9)."""

from __future__ import annotations

from collections.abc import Iterator


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message; the message says what and where."""


def varint(data: bytes, position: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `position`."""
    value = shift = 0
    while position < end and shift < 64:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise WireError(f"truncated or overlong varint at byte {position}")


def fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message in data[start:end]
    (sub-messages, strings, bytes), the other fields skipped. As strict as upb in a tag or a length
    (field number 0, a tag of 32 bits or more, a tag or a length written in more than 5 bytes are a
    WireError): a walk that cuts a message into the pieces a parser then builds one by one must not
    take bytes that the parser would refuse in the whole message. Groups, which proto3 does not
    write, are a WireError too (upb would skip them as unknown fields)."""
    position = start
    while position < end:
        tag = data[position]
        if tag < 0x80:
            position += 1
        else:
            tag, after = varint(data, position, end)
            if after - position > 5 or tag >> 32:
                raise WireError(f"invalid tag at byte {position}")
            position = after
        if tag < 8:
            raise WireError(f"field number 0 at byte {position - 1}")
        kind = tag & 7
        if kind == 2:
            if position >= end:
                raise WireError(f"truncated length at byte {position}")
            length = data[position]
            if length < 0x80:
                position += 1
            elif position + 1 < end and data[position + 1] < 0x80:  # 128 to 16383 bytes: most records
                length = (length & 0x7F) | data[position + 1] << 7
                position += 2
            else:
                length, after = varint(data, position, end)
                if after - position > 5:
                    raise WireError(f"overlong length at byte {position}")
                position = after
            stop = position + length
            if stop > end:
                raise WireError(f"field {tag >> 3} at byte {position} runs past its message (byte {end})")
            yield tag >> 3, position, stop
            position = stop
            continue
        if kind == 0:
            position = varint(data, position, end)[1]
        elif kind == 1:
            position += 8
        elif kind == 5:
            position += 4
        else:
            raise WireError(f"wire type {kind} at byte {position} is not written by proto3")
        if position > end:
            raise WireError(f"a field runs past its message (byte {end})")

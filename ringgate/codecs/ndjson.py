"""NDJSON / JSON Lines: one JSON object per line, blank (whitespace-only) lines skipped."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import msgspec

from ..errors import Refusal
from .json import problem
from .records import MAX_DEPTH, Limits, Records, check_utf8, finish, first_deeper, nonblank_lines

LINE_WS = b" \t\r"  # what surrounds a record on its line ("\r" of "\r\n" endings included)
_LIST_DECODER = msgspec.json.Decoder(list[msgspec.Raw])
_RAW_DECODER = msgspec.json.Decoder(msgspec.Raw)
_NONBLANK_LINE = re.compile(rb"(?m)^[ \t\r]*+[^ \t\r\n][^\n]*")  # anchored, possessive: linear


def decode(body: bytes, limits: Limits) -> Records:
    check_utf8(body, lines=True)
    raws = decode_lines(body, limits)
    return finish(raws, limits, lambda index: locate(body, index))


def decode_lines(body: bytes, limits: Limits) -> Sequence[msgspec.Raw]:
    """The records of an NDJSON body as `Raw`, the count checked before any line is split out.

    Fast path: the non-blank lines become one JSON array, decoded in one call. They are joined by
    "\\n," so that a value spanning two lines would contain a newline, and a line holding two
    values would make more values than lines: either sends the body to the line-by-line path,
    which also finds the exact line of any error.
    """
    if limits.short_enough(body) or limits.within_count(body.count(b"\n") + 1):
        lines = list(filter(None, map(bytes.strip, body.split(b"\n"), itertools.repeat(LINE_WS))))
    else:
        limits.check_count(nonblank_lines(body))
        lines = [line.strip(LINE_WS) for line in _NONBLANK_LINE.findall(body)]  # only non-blank ones
    if not lines:
        raise Refusal(400, "empty_body", "no records (only blank lines)")
    try:
        raws = _LIST_DECODER.decode(b"[" + b"\n,".join(lines) + b"]")
    except (msgspec.DecodeError, RecursionError):
        return _decode_each_line(body)
    if len(raws) != len(lines) or b"\n" in b"".join(raws):
        return _decode_each_line(body)
    return raws


def _nonblank(body: bytes):
    """(line number, offset, line) of each non-blank line, found without splitting the rest."""
    lineno = 1
    previous = 0
    for match in _NONBLANK_LINE.finditer(body):
        lineno += body.count(b"\n", previous, match.start())
        previous = match.start()
        yield lineno, match.start(), match.group()


def _decode_each_line(body: bytes) -> list[msgspec.Raw]:
    """The exact, slower reading: each line on its own; raises for the first bad line."""
    raws: list[msgspec.Raw] = []
    for lineno, offset, line in _nonblank(body):
        try:
            raws.append(_RAW_DECODER.decode(line))
        except msgspec.DecodeError as exc:
            position, what = problem(exc, len(line), base=offset)
            at = f" at byte {position}" if position >= 0 else ""
            raise Refusal(
                400, "invalid_json", f"invalid JSON on line {lineno}{at} (record {len(raws)}): {what}"
            ) from None
        except RecursionError:
            position = first_deeper(line, MAX_DEPTH)
            at = f" at byte {offset + position}" if position >= 0 else ""
            raise Refusal(
                400, "too_deep", f"record {len(raws)} (line {lineno}) nests deeper than {MAX_DEPTH} levels{at}"
            ) from None
    return raws


def locate(body: bytes, index: int) -> str:
    for nonblank, (lineno, _offset, _line) in enumerate(_nonblank(body)):
        if nonblank == index:
            return f"record {index} (line {lineno})"
    return f"record {index}"

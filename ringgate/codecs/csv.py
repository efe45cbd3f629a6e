"""CSV: a header row, then one object of strings per row (§4)."""

from __future__ import annotations

import csv
import io
import itertools

import msgspec

from ..errors import Refusal
from .records import Limits, Records, finish, line_of, shown, utf8_error_offset

_ENCODER = msgspec.json.Encoder()


def decode(body: bytes, limits: Limits) -> Records:
    """A header row, then one object of strings per row; blank lines are skipped.

    Rows are numbered from 1 with the header as row 1, blank lines not counted; details also give
    the physical line, which differs when quoted fields span lines.
    """
    offset = utf8_error_offset(body)
    if offset >= 0:
        raise Refusal(
            400,
            "invalid_utf8",
            f"invalid UTF-8 at byte {offset} (line {line_of(body, offset)}): 0x{body[offset]:02x}",
        )
    nul = body.find(b"\x00")
    if nul >= 0:
        raise Refusal(400, "bad_csv", f"raw NUL byte (0x00) at byte {nul} (line {line_of(body, nul)})")
    text = body.decode("utf-8")
    if text.startswith("\ufeff"):  # byte order mark written by spreadsheet exports
        text = text[1:]
    if not (limits.short_enough(body) or limits.within_count(body.count(b"\n") + 1)):
        limits.check_count(_count_rows(text))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[list[str]] = []
    try:
        rows.extend(filter(None, reader))  # [] is a blank line
    except csv.Error as exc:
        raise Refusal(
            400,
            "bad_csv",
            f"malformed CSV in row {len(rows) + 1} (header is row 1; line {reader.line_num}): {exc}",
        ) from None
    if not rows:
        raise Refusal(400, "empty_body", "no records (the CSV has no header row)")
    header = rows[0]
    for column, name in enumerate(header, 1):
        if not name:
            raise Refusal(400, "bad_csv", f"header (row 1) column {column} has an empty name")
    if len(set(header)) != len(header):
        seen: dict[str, int] = {}
        for column, name in enumerate(header, 1):
            if name in seen:
                raise Refusal(
                    400,
                    "bad_csv",
                    f"header (row 1) repeats the name {shown(name)} in columns {seen[name]} and {column}",
                )
            seen[name] = column
    if len(rows) == 1:
        raise Refusal(400, "empty_body", "no records (the CSV has only a header row)")
    width = len(header)
    if any(len(row) != width for row in rows):
        index = next(i for i, row in enumerate(rows) if len(row) != width)
        raise Refusal(
            400,
            "bad_csv",
            f"row {index + 1} (header is row 1; line {_csvline_of_row(text, index)}) has "
            f"{len(rows[index])} fields; the header has {width}",
        )
    records = list(
        map(_ENCODER.encode, map(dict, map(zip, itertools.repeat(header), itertools.islice(rows, 1, None))))
    )
    return finish(records, limits, _csv_locator, trusted=True)


def _csvline_of_row(text: str, index: int) -> int:
    """Physical line on which non-blank row `index` (0 = header) starts."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    end_of_previous = 0
    seen = 0
    for row in reader:
        if row:
            if seen == index:
                return end_of_previous + 1
            seen += 1
        end_of_previous = reader.line_num
    return end_of_previous


def _csv_locator(index: int) -> str:
    return f"record {index} (row {index + 2}; header is row 1)"


def _count_rows(text: str) -> int:
    """Data rows, counted by reading them one at a time (nothing kept); malformed CSV counts as
    what was read before it, and the parse that follows reports it."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    count = 0
    try:
        for row in reader:
            count += bool(row)
    except csv.Error:
        pass
    return max(0, count - 1)

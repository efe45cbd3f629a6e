"""Request body → records: pure functions over bytes, no I/O, no starlette.

`parse_headers` runs before the body is read (415s); `decode_body` turns the body into `Records`:
every record's compact JSON concatenated in one blob plus an int64 array of lengths, ready to be
copied into a ring in one call. Every client fault is an `IngestError` carrying the HTTP status,
the error code of DESIGN §4 and a detail that names the position, record index, line or row.

The hot path (a JSON envelope of compact records) never builds Python objects for the records:
msgspec decodes them as `Raw` (the client's bytes, syntax-checked), and the remaining rules are
checked over the whole body or blob at once (UTF-8, compactness, object-ness, size, depth).
"""

from __future__ import annotations

import csv
import enum
import functools
import io
import itertools
import re
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

import msgspec
import numpy as np

from .errors import RinggateError

MAX_DEPTH = 64
"""Deepest nesting a record may have; the record `{"a":{"b":1}}` has depth 2."""

_JSON_WS = b" \t\r\n"
_NDJSON_LINE_WS = b" \t\r"  # what surrounds a record on its line ("\r" of "\r\n" endings included)
_SCAN_CHUNK = 1 << 20  # bytes per numpy pass in the slow paths: bounds their temporary memory
_ZSTD_READ = 256 << 10


class IngestError(RinggateError):
    """A client fault in a request: `status` is the HTTP status, `code` the error code of DESIGN §4."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail

    def __reduce__(self):
        return type(self), (self.status, self.code, self.detail)


class BodyFormat(enum.Enum):
    JSON = "json"
    NDJSON = "ndjson"
    CSV = "csv"


class Encoding(enum.Enum):
    IDENTITY = "identity"
    GZIP = "gzip"
    ZSTD = "zstd"


@dataclass(frozen=True, slots=True)
class Records:
    blob: bytes
    """Every record's compact JSON, concatenated in order, no separators."""
    lengths: np.ndarray
    """int64[count]: byte length of each record in `blob`, in order (read-only)."""

    @property
    def count(self) -> int:
        return int(self.lengths.shape[0])


# --------------------------------------------------------------------------------------- headers

_MEDIA_TYPES = {
    "application/json": BodyFormat.JSON,
    "application/x-ndjson": BodyFormat.NDJSON,
    "application/jsonl": BodyFormat.NDJSON,
    "text/csv": BodyFormat.CSV,
}


@functools.cache
def _zstandard() -> ModuleType | None:
    """The `zstandard` module, imported on first use; None where it is not installed."""
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "...")


def parse_headers(content_type: str | None, content_encoding: str | None) -> tuple[BodyFormat, Encoding]:
    """Body format and content coding from the request headers, checked before the body is read.

    A missing (or empty) Content-Type is treated as `application/json`. Media-type parameters
    (`; charset=utf-8`) are ignored and names are case-insensitive. A missing, empty or `identity`
    Content-Encoding means no coding; `gzip`/`x-gzip` and (where the zstandard package imports)
    `zstd` are decoded. Anything else is a 415 `unsupported_media_type` / `unsupported_encoding`.
    """
    if content_type is None or not content_type.strip():
        fmt = BodyFormat.JSON
    else:
        media_type = content_type.split(";", 1)[0].strip().lower()
        fmt = _MEDIA_TYPES.get(media_type)
        if fmt is None:
            raise IngestError(
                415,
                "unsupported_media_type",
                f"unsupported Content-Type {_shown(content_type)}; expected application/json, "
                "application/x-ndjson, application/jsonl or text/csv",
            )
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        encoding = Encoding.IDENTITY
    elif coding in ("gzip", "x-gzip"):
        encoding = Encoding.GZIP
    elif coding == "zstd" and _zstandard() is not None:
        encoding = Encoding.ZSTD
    else:
        if coding == "zstd":
            why = "zstd is not available here (the zstandard package is not installed)"
        elif "," in coding:
            why = "at most one content coding is supported"
        else:
            why = "supported: gzip, x-gzip, zstd, identity"
        raise IngestError(
            415,
            "unsupported_encoding",
            f"unsupported Content-Encoding {_shown(content_encoding or '')}; {why}",
        )
    return fmt, encoding


# ------------------------------------------------------------------------------------------ body


def decode_body(
    body: bytes, fmt: BodyFormat, encoding: Encoding, *, max_body_bytes: int, max_record_bytes: int
) -> Records:
    """Decode a request body into records.

    Raises IngestError for every client fault and nothing else for any input bytes. The checks run
    in DESIGN §4 order where they can: 413 `body_too_large` (the limit applies to the decoded
    bytes; decompression never produces more than `max_body_bytes + 1` bytes), 400 `bad_encoding`,
    `empty_body`, `invalid_utf8`, `invalid_json` / `bad_csv`, 413 `record_too_large` (compact
    size), 400 `not_an_object`, `too_deep`. A raw 0x00 byte is refused in every format.
    """
    if not isinstance(body, bytes):
        body = bytes(body)
    if encoding is Encoding.IDENTITY:
        if len(body) > max_body_bytes:
            raise IngestError(
                413, "body_too_large", f"body is {len(body)} bytes; the limit is {max_body_bytes} bytes"
            )
    elif encoding is Encoding.GZIP:
        body = _gunzip(body, max_body_bytes)
    elif encoding is Encoding.ZSTD:
        body = _unzstd(body, max_body_bytes)
    else:
        raise IngestError(415, "unsupported_encoding", f"unsupported encoding {encoding!r}")

    # isspace() is ASCII-only and stops at the first other byte: free for any real body.
    if not body or body.isspace():
        decoded = " after decoding" if encoding is not Encoding.IDENTITY else ""
        what = "empty" if not body else "only whitespace"
        raise IngestError(400, "empty_body", f"the body is {what}{decoded}: no records")

    if fmt is BodyFormat.CSV:
        return _decode_csv(body, max_record_bytes)
    if fmt is BodyFormat.JSON:
        _check_utf8(body, lines=False)
        raws = _decode_json(body)
        locate: Callable[[int], str] = _json_locator
    elif fmt is BodyFormat.NDJSON:
        _check_utf8(body, lines=True)
        raws = _decode_ndjson(body)
        locate = functools.partial(_ndjson_locator, body)
    else:
        raise IngestError(415, "unsupported_media_type", f"unsupported body format {fmt!r}")
    return _finish(raws, max_record_bytes, locate)


# ------------------------------------------------------------------------------- content coding


def _too_large_decoded(limit: int, coding: str) -> IngestError:
    return IngestError(
        413, "body_too_large", f"{coding} body decodes to more than the limit of {limit} bytes"
    )


def _gunzip(data: bytes, limit: int) -> bytes:
    """gzip → bytes, never producing more than limit + 1 bytes; concatenated members are allowed."""
    parts: list[bytes] = []
    total = 0
    rest = data
    while True:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing only
        try:
            # max_length is what bounds memory against bombs: the excess stays compressed in
            # unconsumed_tail. It is >= 1 here (0 would mean unlimited).
            part = d.decompress(rest, limit + 1 - total)
        except zlib.error as exc:
            raise IngestError(400, "bad_encoding", f"gzip body does not decode: {exc}") from None
        total += len(part)
        if total > limit:
            raise _too_large_decoded(limit, "gzip")
        parts.append(part)
        if not d.eof:
            # Output below max_length means zlib ran out of input before the end of the stream.
            raise IngestError(400, "bad_encoding", "gzip body is empty or truncated (no end of stream)")
        rest = d.unused_data
        if not rest:
            break
        if not rest.startswith(b"\x1f\x8b"):
            raise IngestError(
                400, "bad_encoding", f"{len(rest)} bytes of trailing garbage after the gzip stream"
            )
    return parts[0] if len(parts) == 1 else b"".join(parts)


_thread_state = threading.local()


def _zstd_decompressor(zstandard: ModuleType):
    """One ZstdDecompressor per thread: creating one costs ~14 µs, and one must not be shared
    between threads at once."""
    dctx = getattr(_thread_state, "zstd", None)
    if dctx is None:
        dctx = _thread_state.zstd = zstandard.ZstdDecompressor()
    return dctx


def _unzstd(data: bytes, limit: int) -> bytes:
    """zstd → bytes, never producing more than limit + 1 bytes; concatenated frames are allowed."""
    zstandard = _zstandard()
    if zstandard is None:
        raise IngestError(
            415, "unsupported_encoding", "zstd is not available here (the zstandard package is not installed)"
        )
    try:
        declared = zstandard.frame_content_size(data)  # -1 when the frame does not say
    except zstandard.ZstdError as exc:
        raise IngestError(400, "bad_encoding", f"zstd body does not decode: {exc}") from None
    if declared > limit:
        raise _too_large_decoded(limit, "zstd")
    dctx = _zstd_decompressor(zstandard)
    parts: list[bytes] = []
    total = 0
    try:
        reader = dctx.stream_reader(data, read_across_frames=True)
        # Read one byte past the declared size so a lying header shows up as more data.
        size = declared + 1 if declared >= 0 else _ZSTD_READ
        while True:
            part = reader.read(min(size, limit + 1 - total))
            if not part:
                break
            total += len(part)
            if total > limit:
                raise _too_large_decoded(limit, "zstd")
            parts.append(part)
            size = _ZSTD_READ
        # The stream reader ends quietly at a truncated frame; decompressobj leaves eof False
        # there. Its output is the same bytes just read, so this second pass is bounded too.
        rest = data
        while rest:
            dobj = dctx.decompressobj()
            dobj.decompress(rest)
            if not dobj.eof:
                raise IngestError(400, "bad_encoding", "zstd body is truncated (incomplete frame)")
            rest = dobj.unused_data
    except zstandard.ZstdError as exc:
        raise IngestError(400, "bad_encoding", f"zstd body does not decode: {exc}") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


# ------------------------------------------------------------------------------------------ UTF-8


def _utf8_error_offset(body: bytes) -> int:
    """Offset of the first byte that is not valid UTF-8, or -1; decodes 1 MiB at a time."""
    if body.isascii():
        return -1
    view = memoryview(body)
    n = len(body)
    start = 0
    while start < n:
        end = min(start + _SCAN_CHUNK, n)
        if end < n:
            # Cut before a lead byte so no valid sequence is split. Four continuation bytes in a
            # row are invalid anyway: cut there unchanged and let the next chunk report them.
            cut = end
            while cut > end - 4 and body[cut] & 0xC0 == 0x80:
                cut -= 1
            if cut > end - 4:
                end = cut
        try:
            str(view[start:end], "utf-8")
        except UnicodeDecodeError as exc:
            return start + exc.start
        start = end
    return -1


def _check_utf8(body: bytes, *, lines: bool) -> None:
    offset = _utf8_error_offset(body)
    if offset >= 0:
        where = f" (line {_line_of(body, offset)})" if lines else ""
        raise IngestError(400, "invalid_utf8", f"invalid UTF-8 at byte {offset}{where}: 0x{body[offset]:02x}")


def _line_of(body: bytes, offset: int) -> int:
    return body.count(b"\n", 0, offset) + 1


# ------------------------------------------------------------------------------------------- JSON


class _Envelope(msgspec.Struct):
    # Undeclared keys (batch_id, priority, anything else) are skipped by msgspec unparsed.
    records: list[msgspec.Raw] | msgspec.UnsetType = msgspec.UNSET
    events: list[msgspec.Raw] | msgspec.UnsetType = msgspec.UNSET


_JSON_DECODER = msgspec.json.Decoder(list[msgspec.Raw] | _Envelope)
_LIST_DECODER = msgspec.json.Decoder(list[msgspec.Raw])
_RAW_DECODER = msgspec.json.Decoder(msgspec.Raw)
_ENCODER = msgspec.json.Encoder()

_MALFORMED = re.compile(r"JSON is malformed: (.*) \(byte (\d+)\)")


def _json_problem(exc: msgspec.DecodeError, length: int, base: int = 0) -> tuple[int, str]:
    """(byte position, what) from msgspec's message, positions shifted by base."""
    message = str(exc)
    match = _MALFORMED.fullmatch(message)
    if match:
        return base + int(match.group(2)), match.group(1)
    if message == "Input data was truncated":
        return base + length, "unexpected end of input"
    return -1, message


def _invalid_json(exc: msgspec.DecodeError, body: bytes) -> IngestError:
    position, what = _json_problem(exc, len(body))
    if position < 0:
        return IngestError(400, "invalid_json", f"invalid JSON: {what}")
    return IngestError(400, "invalid_json", f"invalid JSON at byte {position}: {what}")


def _decode_json(body: bytes) -> Sequence[msgspec.Raw]:
    try:
        value = _JSON_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise IngestError(
            400,
            "invalid_json",
            'the body must be a JSON array of objects or an envelope object with a "records" or '
            f'"events" array: {exc}',
        ) from None
    except msgspec.DecodeError as exc:
        raise _invalid_json(exc, body) from None
    except RecursionError:
        # msgspec has no depth option; past ~1000 levels it runs out of C stack budget.
        raise _too_deep_unparsed(body) from None
    if isinstance(value, list):
        return value
    if value.records is msgspec.UNSET and value.events is msgspec.UNSET:
        raise IngestError(
            400,
            "invalid_json",
            'the envelope object has neither a "records" nor an "events" array '
            '(send a JSON array of objects or {"records": [...]})',
        )
    if value.records is not msgspec.UNSET and value.events is not msgspec.UNSET:
        raise IngestError(
            400, "invalid_json", 'the envelope object has both "records" and "events"; send one'
        )
    return value.records if value.records is not msgspec.UNSET else value.events


def _json_locator(index: int) -> str:
    return f"record {index}"


# ----------------------------------------------------------------------------------------- NDJSON


def _decode_ndjson(body: bytes) -> Sequence[msgspec.Raw]:
    """One JSON value per line; blank (whitespace-only) lines are skipped; lines end in \\n or \\r\\n.

    Fast path: the non-blank lines become one JSON array, decoded in one call. They are joined by
    "\\n," so that a value spanning two lines would contain a newline, and a line holding two
    values would make more values than lines: either sends the body to the line-by-line path,
    which also finds the exact line of any error.
    """
    lines = list(filter(None, map(bytes.strip, body.split(b"\n"), itertools.repeat(_NDJSON_LINE_WS))))
    if not lines:
        raise IngestError(400, "empty_body", "no records (only blank lines)")
    try:
        raws = _LIST_DECODER.decode(b"[" + b"\n,".join(lines) + b"]")
    except (msgspec.DecodeError, RecursionError):
        return _decode_ndjson_lines(body)
    if len(raws) != len(lines) or b"\n" in b"".join(raws):
        return _decode_ndjson_lines(body)
    return raws


def _decode_ndjson_lines(body: bytes) -> list[msgspec.Raw]:
    """The exact, slower reading: each line on its own; raises for the first bad line."""
    raws: list[msgspec.Raw] = []
    offset = 0
    for lineno, line in enumerate(body.split(b"\n"), 1):
        if line.strip(_NDJSON_LINE_WS):
            try:
                raws.append(_RAW_DECODER.decode(line))
            except msgspec.DecodeError as exc:
                position, what = _json_problem(exc, len(line), base=offset)
                at = f" at byte {position}" if position >= 0 else ""
                raise IngestError(
                    400, "invalid_json", f"invalid JSON on line {lineno}{at} (record {len(raws)}): {what}"
                ) from None
            except RecursionError:
                position = _first_deeper(line, MAX_DEPTH)
                at = f" at byte {offset + position}" if position >= 0 else ""
                raise IngestError(
                    400,
                    "too_deep",
                    f"record {len(raws)} (line {lineno}) nests deeper than {MAX_DEPTH} levels{at}",
                ) from None
        offset += len(line) + 1
    return raws


def _ndjson_locator(body: bytes, index: int) -> str:
    nonblank = 0
    for lineno, line in enumerate(body.split(b"\n"), 1):
        if line.strip(_NDJSON_LINE_WS):
            if nonblank == index:
                return f"record {index} (line {lineno})"
            nonblank += 1
    return f"record {index}"


# -------------------------------------------------------------------------------------------- CSV


def _decode_csv(body: bytes, max_record_bytes: int) -> Records:
    """A header row, then one object of strings per row; blank lines are skipped.

    Rows are numbered from 1 with the header as row 1, blank lines not counted; details also give
    the physical line, which differs when quoted fields span lines.
    """
    offset = _utf8_error_offset(body)
    if offset >= 0:
        raise IngestError(
            400,
            "invalid_utf8",
            f"invalid UTF-8 at byte {offset} (line {_line_of(body, offset)}): 0x{body[offset]:02x}",
        )
    nul = body.find(b"\x00")
    if nul >= 0:
        raise IngestError(400, "bad_csv", f"raw NUL byte (0x00) at byte {nul} (line {_line_of(body, nul)})")
    text = body.decode("utf-8")
    if text.startswith("\ufeff"):  # byte order mark written by spreadsheet exports
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[list[str]] = []
    try:
        rows.extend(filter(None, reader))  # [] is a blank line
    except csv.Error as exc:
        raise IngestError(
            400,
            "bad_csv",
            f"malformed CSV in row {len(rows) + 1} (header is row 1; line {reader.line_num}): {exc}",
        ) from None
    if not rows:
        raise IngestError(400, "empty_body", "no records (the CSV has no header row)")
    header = rows[0]
    for column, name in enumerate(header, 1):
        if not name:
            raise IngestError(400, "bad_csv", f"header (row 1) column {column} has an empty name")
    if len(set(header)) != len(header):
        seen: dict[str, int] = {}
        for column, name in enumerate(header, 1):
            if name in seen:
                raise IngestError(
                    400,
                    "bad_csv",
                    f"header (row 1) repeats the name {_shown(name)} in columns {seen[name]} and {column}",
                )
            seen[name] = column
    if len(rows) == 1:
        raise IngestError(400, "empty_body", "no records (the CSV has only a header row)")
    width = len(header)
    if any(len(row) != width for row in rows):
        index = next(i for i, row in enumerate(rows) if len(row) != width)
        raise IngestError(
            400,
            "bad_csv",
            f"row {index + 1} (header is row 1; line {_csv_line_of_row(text, index)}) has "
            f"{len(rows[index])} fields; the header has {width}",
        )
    records = list(
        map(_ENCODER.encode, map(dict, map(zip, itertools.repeat(header), itertools.islice(rows, 1, None))))
    )
    return _finish(records, max_record_bytes, _csv_locator, trusted=True)


def _csv_line_of_row(text: str, index: int) -> int:
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


# ----------------------------------------------------------------------------- records, checked

_KINDS = {ord("["): "array", ord('"'): "string", ord("t"): "boolean", ord("f"): "boolean", ord("n"): "null"}


def _kind(first: int) -> str:
    return _KINDS.get(first, "number")


def _finish(
    raws: Sequence[msgspec.Raw] | Sequence[bytes],
    max_record_bytes: int,
    locate: Callable[[int], str],
    *,
    trusted: bool = False,
) -> Records:
    """Blob and lengths from the decoded records; `trusted` records are our own compact objects."""
    count = len(raws)
    if count == 0:
        raise IngestError(400, "empty_body", "no records")
    blob = b"".join(raws)
    compacted = True
    if not trusted and not _is_compact(blob):
        try:
            raws = _LIST_DECODER.decode(msgspec.json.format(b"[" + b",".join(raws) + b"]", indent=-1))
        except RecursionError:
            # Out of stack in format although the decode fitted: the depth check below refuses it.
            compacted = False
        else:
            blob = b"".join(raws)
    if count <= _FEW and compacted:
        return _finish_few(raws, blob, max_record_bytes, locate, trusted)
    lengths = np.fromiter(map(len, raws), np.int64, count)
    starts = np.cumsum(lengths)
    starts -= lengths
    longest = int(lengths.max())

    if longest > max_record_bytes:
        index = int(np.argmax(lengths > max_record_bytes))
        raise IngestError(
            413,
            "record_too_large",
            f"{locate(index)} is {int(lengths[index])} bytes as compact JSON; the limit is {max_record_bytes} bytes",
        )
    if not trusted:
        data = np.frombuffer(blob, np.uint8)
        firsts = data[starts]
        not_objects = firsts != ord("{")
        if not_objects.any():
            index = int(np.argmax(not_objects))
            raise IngestError(
                400, "not_an_object", f"{locate(index)} is a JSON {_kind(int(firsts[index]))}, not an object"
            )
        # Depth d needs at least 2·d bytes: most batches stop here.
        if longest >= 2 * (MAX_DEPTH + 1):
            _check_depth(blob, lengths, starts, locate)
    if not compacted:
        raise IngestError(
            400, "too_deep", f"records nest too deeply to re-encode (at most {MAX_DEPTH} levels)"
        )
    lengths.flags.writeable = False
    return Records(blob, lengths)


_FEW = 8  # below this many records numpy's per-call overhead costs more than a Python loop


def _finish_few(
    raws: Sequence[msgspec.Raw] | Sequence[bytes],
    blob: bytes,
    max_record_bytes: int,
    locate: Callable[[int], str],
    trusted: bool,
) -> Records:
    """_finish for a handful of records (the 1-record request): the same checks, in plain Python."""
    lengths = [len(r) for r in raws]
    for index, length in enumerate(lengths):  # 413 before 400, as in _finish
        if length > max_record_bytes:
            raise IngestError(
                413,
                "record_too_large",
                f"{locate(index)} is {length} bytes as compact JSON; the limit is {max_record_bytes} bytes",
            )
    start = 0
    for index, length in enumerate(lengths):
        if not trusted and blob[start] != 0x7B:  # "{"
            raise IngestError(
                400, "not_an_object", f"{locate(index)} is a JSON {_kind(blob[start])}, not an object"
            )
        start += length
    array = np.array(lengths, np.int64)
    if not trusted and max(lengths) >= 2 * (MAX_DEPTH + 1):
        starts = np.cumsum(array) - array
        _check_depth(blob, array, starts, locate)
    array.flags.writeable = False
    return Records(blob, array)


# A space outside strings always touches a structural character: JSON never puts two values next
# to each other, and records carry no surrounding whitespace. Tabs, CR and LF can only be outside
# strings (raw control characters are invalid inside them).
_SPACE_AFTER = np.zeros(256, bool)
_SPACE_AFTER[list(b"{[:,")] = True
_SPACE_BEFORE = np.zeros(256, bool)
_SPACE_BEFORE[list(b":,}]")] = True
_SPACE_NEXT_TO_STRUCTURE = re.compile(rb"[{\[:,] | [:,}\]]")


def _is_compact(blob: bytes) -> bool:
    """True when the concatenated records have no whitespace outside strings (false negatives ok)."""
    if b"\n" in blob or b"\t" in blob or b"\r" in blob:
        return False
    if b" " not in blob:
        return True
    head = blob[:256]
    if b'": ' in head or b", " in head:  # json.dumps' default separators: don't scan, compact
        return False
    if blob[:1] == b" " or blob[-1:] == b" ":
        return False
    if len(blob) < 2048:  # numpy's setup costs more than the regex engine on a short body
        return _SPACE_NEXT_TO_STRUCTURE.search(blob) is None
    data = np.frombuffer(blob, np.uint8)
    spaces = np.flatnonzero(data == 0x20)
    return not (_SPACE_AFTER[data[spaces - 1]] | _SPACE_BEFORE[data[spaces + 1]]).any()


# ------------------------------------------------------------------------------------------- depth


def _check_depth(blob: bytes, lengths: np.ndarray, starts: np.ndarray, locate: Callable[[int], str]) -> None:
    """too_deep for the first record nesting deeper than MAX_DEPTH (brackets in strings don't count).

    Cheap bound first: depth d needs d opening brackets. Only records with more than MAX_DEPTH
    of them get the exact, string-aware scan.
    """
    # "{" (0x7b) and "[" (0x5b) are the only bytes that OR 0x20 turns into 0x7b; reduceat sums per record
    openers = (np.frombuffer(blob, np.uint8) | 0x20) == 0x7B
    per_record = np.add.reduceat(openers, starts, dtype=np.uint32)
    suspects = np.flatnonzero(per_record > MAX_DEPTH)
    if suspects.size == 0:
        return
    view = memoryview(blob)
    group: list[int] = []
    group_bytes = 0
    suspect_list = suspects.tolist()
    for n, i in enumerate(suspect_list, 1):
        group.append(i)
        group_bytes += int(lengths[i])
        if group_bytes >= _SCAN_CHUNK or n == len(suspect_list):
            joined = b"".join([view[starts[j] : starts[j] + lengths[j]] for j in group])
            deep = _first_too_deep_record(joined)
            if deep >= 0:
                raise IngestError(
                    400, "too_deep", f"{locate(group[deep])} nests deeper than {MAX_DEPTH} levels"
                )
            group = []
            group_bytes = 0


# Bracket steps as bytes for bytes.translate: "{" "[" → +1, "}" "]" → -1 (0xff as int8), else 0.
_STEP_TABLE = bytes(1 if c in b"{[" else 0xFF if c in b"}]" else 0 for c in range(256))


def _first_too_deep_record(records: bytes) -> int:
    """Index of the first of these concatenated, valid compact records deeper than MAX_DEPTH, or -1.

    Valid JSON makes this exact with bytes-level operations: once escaped backslashes and quotes
    are neutralised, quotes pair up, so every odd piece between quotes is string content and can
    be dropped; what remains is structure, whose running bracket sum is the depth.
    """
    if b"\\" in records:
        records = records.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    structure = b"".join(records.split(b'"')[::2])
    steps = np.frombuffer(structure.translate(_STEP_TABLE), np.int8)
    depth = np.cumsum(steps, dtype=np.int32)
    hits = np.flatnonzero(depth > MAX_DEPTH)
    if not hits.size:
        return -1
    # Records end where the depth returns to 0 on a closing bracket.
    before = depth[: hits[0]]
    return int(np.count_nonzero((before == 0) & (steps[: hits[0]] == -1)))


_STEP = np.zeros(256, np.int8)
_STEP[list(b"{[")] = 1
_STEP[list(b"}]")] = -1
_NOT_BACKSLASH = re.compile(rb"[^\\]")


def _scan(buf: bytes) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (offset, bytes, depth after each byte, inside-a-string mask) one chunk at a time.

    Escapes are neutralised position-preservingly: "\\\\" then '\\"' become "__", which pairs
    backslash runs left to right exactly as JSON does. Chunks never end inside a backslash run,
    so a run and the byte it escapes stay together. Exact for valid JSON; for invalid input the
    result only feeds an error message.
    """
    n = len(buf)
    view = memoryview(buf)
    start = 0
    depth = 0
    quotes = 0
    while start < n:
        end = min(start + _SCAN_CHUNK, n)
        if end < n and buf[end - 1] == 0x5C:
            match = _NOT_BACKSLASH.search(buf, end)
            end = match.end() if match else n
        chunk = bytes(view[start:end])
        if b"\\" in chunk:
            chunk = chunk.replace(b"\\\\", b"__").replace(b'\\"', b"__")
        data = np.frombuffer(chunk, np.uint8)
        quote_count = np.cumsum(data == 0x22, dtype=np.int64)
        quote_count += quotes
        inside = (quote_count & 1).astype(bool)  # the opening quote counts as inside, the closing one not
        step = _STEP[data]
        step[inside] = 0
        depth_after = np.cumsum(step, dtype=np.int64)
        depth_after += depth
        yield start, data, depth_after, inside
        depth = int(depth_after[-1])
        quotes = int(quote_count[-1])
        start = end


def _first_deeper(buf: bytes, limit: int) -> int:
    """Offset of the first bracket that takes the nesting past `limit`, or -1."""
    for offset, _data, depth_after, _inside in _scan(buf):
        hits = np.flatnonzero(depth_after > limit)
        if hits.size:
            return offset + int(hits[0])
    return -1


_RECORDS_KEY = re.compile(rb'"(?:records|events)"[ \t\r\n]*:[ \t\r\n]*\Z')


def _too_deep_unparsed(body: bytes) -> IngestError:
    """too_deep for a JSON body msgspec could not even skip through (RecursionError).

    The records sit inside one container level for an array body, two for an envelope
    ({"records": [ ... ]}); the record's index is the number of commas at that level between
    the container's opening bracket and the point where the nesting gets too deep.
    """
    stripped = body.lstrip(_JSON_WS)
    wrapper = 1 if stripped[:1] == b"[" else 2
    position = _first_deeper(body, MAX_DEPTH + wrapper)
    if position < 0:
        return IngestError(
            400, "too_deep", f"nesting is too deep to decode (records may nest at most {MAX_DEPTH} levels)"
        )
    container, index = _element_index(body, position, wrapper)
    if wrapper == 2 and (container < 0 or not _RECORDS_KEY.search(body, max(0, container - 64), container)):
        return IngestError(
            400,
            "too_deep",
            f"nesting deeper than {MAX_DEPTH} levels at byte {position}, outside the records array",
        )
    return IngestError(
        400, "too_deep", f"record {index} nests deeper than {MAX_DEPTH} levels (at byte {position})"
    )


def _element_index(body: bytes, position: int, level: int) -> tuple[int, int]:
    """(offset of the container at `level` enclosing `position`, index of the element holding it)."""
    container = -1
    commas = 0
    for offset, data, depth_after, inside in _scan(body):
        limit = position - offset
        if limit <= 0:
            break
        data, depth_after, inside = data[:limit], depth_after[:limit], inside[:limit]
        at_level = (depth_after == level) & ~inside
        opens = np.flatnonzero(at_level & (_STEP[data] == 1))
        comma_positions = np.flatnonzero(at_level & (data == ord(",")))
        if opens.size:
            container = offset + int(opens[-1])
            commas = int(np.count_nonzero(comma_positions > opens[-1]))
        else:
            commas += int(comma_positions.size)
    return container, commas

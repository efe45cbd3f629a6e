"""What every codec hands to the shared path, and the checks every record passes.

`Records` is every record's compact JSON concatenated in one blob plus an int64 array of lengths,
ready to be copied into a ring in one call. `Limits` are the request limits (§4, §9); a codec calls
`Limits.check_count` with the record count (or an upper bound of it) *before* it builds any
per-record object, so a body of millions of tiny records costs a scan, not a gigabyte.
`finish` checks what msgspec's `Raw` does not: compactness, size, object-ness, depth.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from ..errors import Refusal

MAX_DEPTH = 64
"""Deepest nesting a record may have; the record `{"a":{"b":1}}` has depth 2."""

MIN_FRAMED_BYTES = 24
"""The least ring space a record takes: a 16-byte header and `{}` padded to 8 bytes."""

SCAN_CHUNK = 1 << 20  # bytes per numpy pass in the slow paths: bounds their temporary memory


@dataclass(slots=True)  # not frozen: built per request, and a frozen dataclass costs 5x to build
class Records:
    blob: bytes
    """Every record's compact JSON, concatenated in order, no separators."""
    lengths: np.ndarray
    """int64[count]: byte length of each record in `blob`, in order (read-only)."""
    priority: int | None = None
    """The request's priority when its body names one (§8)."""

    @property
    def count(self) -> int:
        return int(self.lengths.shape[0])


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int
    max_record_bytes: int
    max_records: int = 100_000
    max_framed_bytes: int = 1 << 62
    """Half a ring: a request that needs more could never fit (413, not 429)."""

    def check_count(self, count: int) -> None:
        """413 when `count` records are more than a request may hold; call before building them."""
        if count > self.max_records:
            raise Refusal(
                413, "too_many_records",
                f"the body holds {count} records or more; the limit is {self.max_records} (RINGGATE_MAX_RECORDS)",
            )
        if count * MIN_FRAMED_BYTES > self.max_framed_bytes:
            raise Refusal(
                413, "body_too_large",
                f"{count} records need more than half a ring ({self.max_framed_bytes} bytes) once framed",
            )

    def within_count(self, upper_bound: int) -> bool:
        """True when an upper bound of the record count already passes `check_count`."""
        return upper_bound <= self.max_records and upper_bound * MIN_FRAMED_BYTES <= self.max_framed_bytes

    def short_enough(self, body: bytes) -> bool:
        """True when `body` is too short to hold too many records: a record and its separator
        take at least two bytes in every text format. Most bodies stop here, without a count."""
        return self.within_count((len(body) + 1) // 2)


def shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "...")


# ------------------------------------------------------------------------------------------ UTF-8


def utf8_error_offset(body: bytes) -> int:
    """Offset of the first byte that is not valid UTF-8, or -1; decodes 1 MiB at a time."""
    if body.isascii():
        return -1
    view = memoryview(body)
    n = len(body)
    start = 0
    while start < n:
        end = min(start + SCAN_CHUNK, n)
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


def check_utf8(body: bytes, *, lines: bool) -> None:
    offset = utf8_error_offset(body)
    if offset >= 0:
        where = f" (line {line_of(body, offset)})" if lines else ""
        raise Refusal(400, "invalid_utf8", f"invalid UTF-8 at byte {offset}{where}: 0x{body[offset]:02x}")


def line_of(body: bytes, offset: int) -> int:
    return body.count(b"\n", 0, offset) + 1


# ------------------------------------------------------------------------------- records, checked

_KINDS = {ord("["): "array", ord('"'): "string", ord("t"): "boolean", ord("f"): "boolean", ord("n"): "null"}
_LIST_DECODER = msgspec.json.Decoder(list[msgspec.Raw])


def _kind(first: int) -> str:
    return _KINDS.get(first, "number")


def locate_index(index: int) -> str:
    return f"record {index}"


def finish(
    raws: Sequence[msgspec.Raw] | Sequence[bytes],
    limits: Limits,
    locate: Callable[[int], str] = locate_index,
    *,
    trusted: bool = False,
    priority: int | None = None,
) -> Records:
    """Blob and lengths from the decoded records; `trusted` records are our own compact objects."""
    count = len(raws)
    if count == 0:
        raise Refusal(400, "empty_body", "no records")
    if count > limits.max_records or count * MIN_FRAMED_BYTES > limits.max_framed_bytes:
        limits.check_count(count)
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
        return _finish_few(raws, blob, limits.max_record_bytes, locate, trusted, priority)
    lengths = np.fromiter(map(len, raws), np.int64, count)
    starts = np.cumsum(lengths)
    starts -= lengths
    longest = int(lengths.max())
    max_record_bytes = limits.max_record_bytes

    if longest > max_record_bytes:
        index = int(np.argmax(lengths > max_record_bytes))
        raise Refusal(
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
            raise Refusal(
                400, "not_an_object", f"{locate(index)} is a JSON {_kind(int(firsts[index]))}, not an object"
            )
        # Depth d needs at least 2·d bytes: most batches stop here.
        if longest >= 2 * (MAX_DEPTH + 1):
            _check_depth(blob, lengths, starts, locate)
    if not compacted:
        raise Refusal(400, "too_deep", f"records nest too deeply to re-encode (at most {MAX_DEPTH} levels)")
    lengths.flags.writeable = False
    return Records(blob, lengths, priority)


_FEW = 8  # below this many records numpy's per-call overhead costs more than a Python loop


def _finish_few(
    raws: Sequence[msgspec.Raw] | Sequence[bytes],
    blob: bytes,
    max_record_bytes: int,
    locate: Callable[[int], str],
    trusted: bool,
    priority: int | None,
) -> Records:
    """finish for a handful of records (the 1-record request): the same checks, in plain Python."""
    lengths = [len(r) for r in raws]
    for index, length in enumerate(lengths):  # 413 before 400, as in finish
        if length > max_record_bytes:
            raise Refusal(
                413,
                "record_too_large",
                f"{locate(index)} is {length} bytes as compact JSON; the limit is {max_record_bytes} bytes",
            )
    start = 0
    for index, length in enumerate(lengths):
        if not trusted and blob[start] != 0x7B:  # "{"
            raise Refusal(400, "not_an_object", f"{locate(index)} is a JSON {_kind(blob[start])}, not an object")
        start += length
    array = np.array(lengths, np.int64)
    if not trusted and max(lengths) >= 2 * (MAX_DEPTH + 1):
        starts = np.cumsum(array) - array
        _check_depth(blob, array, starts, locate)
    array.flags.writeable = False
    return Records(blob, array, priority)


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
        if group_bytes >= SCAN_CHUNK or n == len(suspect_list):
            joined = b"".join([view[starts[j] : starts[j] + lengths[j]] for j in group])
            deep = _first_too_deep_record(joined)
            if deep >= 0:
                raise Refusal(400, "too_deep", f"{locate(group[deep])} nests deeper than {MAX_DEPTH} levels")
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


def scan(buf: bytes) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (offset, bytes, depth after each byte, inside-a-string mask) one chunk at a time.

    Escapes are neutralised position-preservingly: "\\\\" then '\\"' become "__", which pairs
    backslash runs left to right exactly as JSON does. Chunks never end inside a backslash run,
    so a run and the byte it escapes stay together. Exact for valid JSON; for invalid input the
    result only feeds an error message or a bound.
    """
    n = len(buf)
    view = memoryview(buf)
    start = 0
    depth = 0
    quotes = 0
    while start < n:
        end = min(start + SCAN_CHUNK, n)
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


def first_deeper(buf: bytes, limit: int) -> int:
    """Offset of the first bracket that takes the nesting past `limit`, or -1."""
    for offset, _data, depth_after, _inside in scan(buf):
        hits = np.flatnonzero(depth_after > limit)
        if hits.size:
            return offset + int(hits[0])
    return -1


def count_elements(array: bytes) -> int:
    """Elements of one valid JSON array (its bytes, `[` first), counted without building any:
    the commas at depth 1 outside strings, plus one unless the array is empty."""
    commas = 0
    seen_value = False
    for _offset, data, depth_after, inside in scan(array):
        top = (depth_after == 1) & ~inside
        commas += int(np.count_nonzero(top & (data == ord(","))))
        if not seen_value:
            # anything at depth >= 1 other than whitespace and the opening bracket is an element
            seen_value = bool(np.count_nonzero((depth_after >= 1) & ~np.isin(data, _WS_BYTES)) > 1)
    return commas + 1 if seen_value else 0


_WS_BYTES = np.frombuffer(b" \t\r\n", np.uint8)


def element_index(body: bytes, position: int, level: int) -> tuple[int, int]:
    """(offset of the container at `level` enclosing `position`, index of the element holding it)."""
    container = -1
    commas = 0
    for offset, data, depth_after, inside in scan(body):
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


def nonblank_lines(body: bytes, whitespace: bytes = b" \t\r") -> int:
    """Lines holding anything but `whitespace`, counted without building them (numpy, by chunk)."""
    blank_byte = np.zeros(256, bool)
    blank_byte[list(whitespace)] = True
    count = 0
    after_newline = True  # the previous interesting byte was a newline (or the start)
    view = memoryview(body)
    for start in range(0, len(body), SCAN_CHUNK):
        data = np.frombuffer(view[start : start + SCAN_CHUNK], np.uint8)
        newline = data == 0x0A
        content = ~(blank_byte[data] | newline)
        interesting = np.flatnonzero(newline | content)
        if not interesting.size:
            continue
        labels = content[interesting]
        previous = np.empty_like(labels)
        previous[0] = not after_newline
        previous[1:] = labels[:-1]
        count += int(np.count_nonzero(labels & ~previous))
        after_newline = not bool(labels[-1])
    return count

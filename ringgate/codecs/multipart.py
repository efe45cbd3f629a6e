"""`multipart/form-data` (RFC 7578) through python-multipart, the parser Starlette's forms use:
the one file field of an upload, with the part's own type and file name, which say its format."""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import Refusal

MAX_PARTS = 16


@dataclass(frozen=True, slots=True)
class Part:
    data: bytes
    content_type: str
    filename: str


def boundary_of(content_type: bytes | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type (415 for another type, 400 without one)."""
    media, options = parse_options_header(content_type or b"")
    if media.lower() != b"multipart/form-data":
        shown = (content_type or b"").decode("latin-1")[:80]
        raise Refusal(415, "unsupported_media_type", f"expected multipart/form-data with a file field, not {shown!r}")
    boundary = options.get(b"boundary")
    if not boundary:
        raise Refusal(400, "bad_multipart", "the multipart/form-data Content-Type names no boundary")
    return boundary


def file_part(body: bytes, boundary: bytes, field: str) -> Part:
    """The part named `field` (400 `bad_multipart` when it is missing or the body is malformed)."""
    parts: list[dict] = []
    header: dict = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise Refusal(400, "bad_multipart", f"more than {MAX_PARTS} parts")
        parts.append({"headers": {}, "data": [], "done": False})

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].append(data[start:end])

    def on_part_end() -> None:
        parts[-1]["done"] = True

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header["field"].lower()] = header["value"]
        header["field"] = header["value"] = b""

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
    })
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise Refusal(400, "bad_multipart", f"malformed multipart body: {exc}") from None
    for part in parts:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if options.get(b"name", b"").decode("utf-8", "replace") == field:
            if not part["done"]:
                raise Refusal(400, "bad_multipart", f"the {field!r} part is truncated (no closing boundary)")
            return Part(
                b"".join(part["data"]),
                parse_options_header(part["headers"].get(b"content-type", b""))[0].decode("latin-1").lower(),
                options.get(b"filename", b"").decode("utf-8", "replace"),
            )
    names = [parse_options_header(p["headers"].get(b"content-disposition", b""))[1].get(b"name", b"?").decode(
        "utf-8", "replace") for p in parts]
    raise Refusal(400, "bad_multipart", f"no {field!r} part in the upload (parts: {names})")

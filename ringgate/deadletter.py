"""The dead-letter store: records a sink refused, one NDJSON object per call, via obstore.

Each line: `{"error", "sink", "attempts", "ring", "epoch", "seq", "record"}`, where `record` is
the record itself as JSON (not a string). The key, `<prefix>/<batch_name>.ndjson`, is
deterministic: a replayed batch rewrites its own dead letters rather than adding copies.
"""

from __future__ import annotations

from typing import Any

import msgspec
import obstore

from .errors import RinggateError, SinkError
from .sinks import redact
from .sinks.objstore import describe, failure_class, open_store

FIELDS = ("error", "sink", "attempts", "ring", "epoch", "seq", "record")
_encoder = msgspec.json.Encoder()


class DeadLetterStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._store: Any = None
        self._prefix = ""

    def write(self, batch_name: str, lines: list[dict[str, Any]]) -> None:
        """Store the lines under `<prefix>/<batch_name>.ndjson`, or raise SinkError.

        One object per call: pass the name of the (sub)batch the records come from; a second
        call with the same name replaces the first.
        """
        try:
            body = _encoder.encode_lines([_line(line) for line in lines])
        except (msgspec.EncodeError, TypeError, ValueError) as exc:
            raise SinkError(f"dead-letter store cannot encode the lines of {batch_name}: {exc}",
                            reason="cannot encode the lines") from exc
        if self._store is None:
            # opened at first use: a store that cannot be opened yet gets a fresh chance each call
            try:
                self._store, self._prefix = open_store(self.url)
            except RinggateError as exc:
                raise SinkError(f"dead-letter store {redact(self.url)} is unusable: {exc}",
                                reason=getattr(exc, "reason", "unusable")) from exc
        key = f"{self._prefix}/{batch_name}.ndjson" if self._prefix else f"{batch_name}.ndjson"
        try:
            obstore.put(self._store, key, body, use_multipart=False)
        except Exception as exc:
            raise SinkError(
                f"dead-letter store could not write {key} to {redact(self.url)}: {describe(exc)}",
                reason=failure_class(exc),
            ) from exc


def _line(line: dict[str, Any]) -> dict[str, Any]:
    out = {name: line[name] for name in FIELDS if name in line}
    out.update((name, value) for name, value in line.items() if name not in out)
    if "record" in out:
        out["record"] = _record(out["record"])
    return out


def _record(value: Any) -> Any:
    """A record's bytes are embedded as JSON, kept as sent when they are valid one-line JSON."""
    if isinstance(value, msgspec.Raw):
        value = bytes(value)
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return value  # already a Python object (dict...) or text: encoded as such
    raw = bytes(value)
    try:
        raw.decode("utf-8")  # msgspec.Raw does not check UTF-8 inside strings
        if b"\n" in raw or b"\r" in raw:
            # whitespace between tokens would break the NDJSON line: re-encode compactly
            return msgspec.json.decode(raw)
        msgspec.json.decode(raw, type=msgspec.Raw)  # valid JSON, not only a prefix of it
        return msgspec.Raw(raw)
    except (UnicodeDecodeError, msgspec.DecodeError):
        # not JSON at all (what made the sink refuse it, perhaps): keep it, as text
        return raw.decode("utf-8", errors="backslashreplace")

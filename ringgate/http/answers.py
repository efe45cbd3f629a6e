"""Answers every source can use: JSON bodies, the error shape of §4, Retry-After."""

from __future__ import annotations

import msgspec

from ..errors import Refusal
from .request import Answer

_encode = msgspec.json.encode
_new_tuple = tuple.__new__
_JSON = b"application/json"


def json_answer(status: int, value, headers: list[tuple[bytes, bytes]] | None = None) -> Answer:
    return Answer(status, _encode(value), headers=headers or [])


def retry_after(refusal: Refusal) -> list[tuple[bytes, bytes]]:
    """Retry-After in whole seconds when trying again may succeed; a 408 also closes the connection
    (the client's remaining bytes are not read)."""
    headers = []
    if refusal.retry_after is not None:
        headers.append((b"retry-after", b"%d" % refusal.retry_after))
    if refusal.status == 408:
        headers.append((b"connection", b"close"))
    return headers


def refused(refusal: Refusal) -> Answer:
    """ringgate's own error shape: {"error": "<code>", "detail": "<what and where>"}."""
    return Answer(refusal.status, _encode({"error": refusal.code, "detail": refusal.detail}), headers=retry_after(refusal))


def stored(accepted, status_text: bytes | None = None) -> Answer:
    """ringgate's own success shape: 202 {"accepted", "batch_id"} once in a ring (plus `status`
    when the source's clients expect one), or after `?ack=commit` 200 with the sink's verdict or
    504 when RINGGATE_ACK_TIMEOUT_MS passed first (the records are still delivered)."""
    s = accepted.stored
    if accepted.commit is None:  # the hot path: one formatting operation, no Python frame for Answer
        extra = b',"status":"%b"' % status_text if status_text else b""
        body = b'{"accepted":%d,"batch_id":"%d-%d-%d-%d"%b}' % (s.count, s.ring, s.epoch, s.first, s.next, extra)
        return _new_tuple(Answer, (202, body, _JSON, ()))
    if accepted.commit == "timeout":
        return json_answer(504, {
            "error": "ack_timeout", "batch_id": s.batch_id, "accepted": s.count,
            "detail": "not committed within RINGGATE_ACK_TIMEOUT_MS; the records are still delivered",
        })
    return json_answer(200, {"accepted": s.count, "batch_id": s.batch_id, "status": accepted.commit})

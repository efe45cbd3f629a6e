"""The APIs of the systems ringgate replaces (shared/seeds, §8), so their clients work unchanged:

- "Multi-Storage Ingestion Gateway": `POST /ingest` with `{"payload": [...]}` (and every body
  /v1/ingest takes);
- "Batch Ingestion API": `POST /v1/ingest/batch` with `{"events": [...], "batch_id"?, "priority"?}`,
  `GET /v1/batch/{id}/status`, `/v1/health`, `/v1/metrics`;
- "Serverless Data Ingestion": `POST /file/ingest`, multipart with a `file` part (CSV, or NDJSON /
  a JSON array when the part's type or file name says so), and `GET /stats`.
"""

from __future__ import annotations

import functools

from ..codecs import Limits, Records, csv, decoder_for, json, ndjson
from ..codecs.multipart import boundary_of, file_part
from ..errors import Refusal
from ..gateway import Gateway
from ..http.answers import refused, stored
from ..http.intake import Accepted, Intake, handler
from ..http.request import Answer, Route
from ..http.status import Status

NAME = "seeds"
PAYLOAD_KEYS = ("payload", *json.ENVELOPE_KEYS)


def _upload_format(content_type: str, filename: str):
    """A part's format from its own type or its file name; a CSV upload unless either says otherwise."""
    name = filename.lower()
    if content_type in ("application/x-ndjson", "application/jsonl", "application/x-jsonlines") or name.endswith(
        (".ndjson", ".jsonl")
    ):
        return ndjson.decode
    if content_type == "application/json" or name.endswith(".json"):
        return json.decode
    return csv.decode


def _decode_upload(body: bytes, limits: Limits, *, boundary: bytes) -> Records:
    part = file_part(body, boundary, "file")
    if not part.data.strip():
        raise Refusal(400, "empty_body", f"the uploaded file {part.filename!r} is empty: no records")
    return _upload_format(part.content_type, part.filename)(part.data, limits)


def _upload_decoder(content_type: bytes | None):
    return functools.partial(_decode_upload, boundary=boundary_of(content_type))


def routes(gw: Gateway) -> list[Route]:
    # every body here may be (or hold, uploaded) a JSON envelope naming its priority
    payload = Intake(functools.partial(decoder_for, envelope_keys=PAYLOAD_KEYS), ack_commit=True, body_priority=True)
    batch = Intake(decoder_for, body_priority=True)
    upload = Intake(_upload_decoder, body_priority=True)
    status = Status(gw)
    return [
        Route("/ingest", handler(gw, payload, stored, refused), ("POST",), NAME),
        Route("/v1/ingest/batch", handler(gw, batch, _batch_accepted, refused), ("POST",), NAME),
        Route("/file/ingest", handler(gw, upload, stored, refused), ("POST",), NAME),
        Route("/v1/batch/{batch_id}/status", status.batch, ("GET",)),
        Route("/v1/health", status.healthz, ("GET",)),
        Route("/v1/metrics", status.metrics, ("GET",)),
        Route("/stats", status.stats, ("GET",)),
    ]


def _batch_accepted(accepted: Accepted) -> Answer:
    """The batch-ingestion clients read `batch_id` and expect `"status": "accepted"`."""
    return stored(accepted, b"accepted")

"""ringgate's own API, `POST /v1/ingest` (§4): JSON, NDJSON, CSV and MessagePack bodies."""

from __future__ import annotations

from ..codecs import decoder_for
from ..gateway import Gateway
from ..http.answers import refused, stored
from ..http.intake import Intake, handler
from ..http.request import Route

NAME = "native"


def routes(gw: Gateway) -> list[Route]:
    return [Route("/v1/ingest", handler(gw, Intake(decoder_for, ack_commit=True, body_priority=True), stored, refused), ("POST",), NAME)]

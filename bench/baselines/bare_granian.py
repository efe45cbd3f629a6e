"""The ceiling: a bare Granian ASGI app that only decodes the body with msgspec and answers 202.

    granian --interface asgi --loop uvloop --workers 2 --working-dir bench/baselines bare_granian:app

No sink, no checks beyond msgspec's: what ringgate's HTTP side could reach if everything after the
decode cost nothing. `bench/e2e.py` starts it with the same Granian options as `ringgate serve`.
"""

from __future__ import annotations

import msgspec


class Envelope(msgspec.Struct):
    records: list[msgspec.Raw]


_decode = msgspec.json.Decoder(Envelope).decode
_HEADERS = [(b"content-type", b"application/json")]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    try:
        n = len(_decode(body).records)
    except (msgspec.DecodeError, RecursionError):
        await send({"type": "http.response.start", "status": 400, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": b'{"error":"invalid_json"}'})
        return
    await send({"type": "http.response.start", "status": 202, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b'{"accepted":%d}' % n})

"""Elasticsearch's bulk API (§8), so Beats, Logstash, Fluent Bit, Vector and the `elasticsearch`
clients send to ringgate as they would to a cluster.

- `POST`/`PUT /_bulk` and `/{index}/_bulk`: NDJSON action/document pairs. `index` and `create`
  store their document, plus `_index` and `_id` when the action (or, for `_index`, the URL)
  names them and the document has no such field. `delete` (no document line), `update` and any
  other action answer a per-item 400 while the rest of the request is stored; the request is
  still stored whole or not at all, the refused items are simply not part of it. When every item
  is refused nothing is claimed and the answer is 200 with every item's 400, as Elasticsearch
  answers.
- The probes clients make before they send: `GET`/`HEAD /` (cluster info with a version),
  `/_license`, `/_xpack` (ILM available), `/_nodes/http`, `/_cluster/health` (Vector's health
  check), and `GET`/`PUT` on index, component and legacy templates and ILM policies, answered as
  accepted. They answer without a key.
- Every answer carries `X-Elastic-Product: Elasticsearch` (the clients refuse a 2xx without it),
  errors in Elasticsearch's shape `{"error": {"root_cause", "type", "reason"}, "status"}`, and
  backpressure as 429 with Retry-After, which Beats, Logstash, Fluent Bit and Vector retry.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple

import msgspec

from ..codecs import Limits, Records, ndjson
from ..codecs.records import MIN_FRAMED_BYTES, check_utf8, finish, nonblank_lines, shown
from ..errors import Refusal
from ..gateway import Gateway
from ..http.answers import retry_after
from ..http.body import read_body
from ..http.intake import Intake, accept
from ..http.request import Answer, Request, Route

NAME = "es_bulk"
SCHEMES = frozenset({"apikey", "basic"})
PRODUCT = (b"x-elastic-product", b"Elasticsearch")
MEDIA_TYPES = frozenset({
    "application/x-ndjson",
    "application/json",
    "application/vnd.elasticsearch+x-ndjson",
    "application/vnd.elasticsearch+json",
})
STORED_ACTIONS = frozenset({"index", "create"})
CLUSTER_NAME = "ringgate"
NODE_ID = "ringgate-node-0"
# 8.x unless the client announces 9 (`compatible-with=9`, as the `elasticsearch` 9 clients do): every
# shipper named above speaks to an 8.x cluster, while a real 8.x cluster refuses compatible-with=9.
VERSIONS = {
    8: {"number": "8.19.0", "lucene_version": "9.12.2", "minimum_wire_compatibility_version": "7.17.0",
        "minimum_index_compatibility_version": "7.0.0"},
    9: {"number": "9.1.0", "lucene_version": "10.2.2", "minimum_wire_compatibility_version": "8.19.0",
        "minimum_index_compatibility_version": "8.0.0"},
}

_encode = msgspec.json.encode
_decode_action = msgspec.json.Decoder(dict[str, dict]).decode


class _DocumentMeta(msgspec.Struct):
    """The top-level `_index` / `_id` of a document, when it has them (other fields skipped)."""

    index: msgspec.Raw = msgspec.field(default=msgspec.Raw(), name="_index")
    id: msgspec.Raw = msgspec.field(default=msgspec.Raw(), name="_id")


_decode_meta = msgspec.json.Decoder(_DocumentMeta).decode


# ------------------------------------------------------------------------------------- the body


class Item(NamedTuple):
    op: str
    index: str | None
    id: str | None
    refused: str | None = None
    """None when the document is stored; else why the item answers 400."""


@functools.lru_cache(maxsize=8)
def _line_limits(limits: Limits) -> Limits:
    """Limits for the lines of a body whose records are checked against `limits`: every record
    takes two lines (action and document), so twice the records, plus one line."""
    return dataclasses.replace(
        limits, max_records=2 * limits.max_records + 1, max_framed_bytes=2 * limits.max_framed_bytes + MIN_FRAMED_BYTES
    )


def _line_number(body: bytes, nonblank_index: int) -> int:
    """The line number of the body's `nonblank_index`-th non-blank line (only for messages)."""
    seen = -1
    for number, line in enumerate(body.split(b"\n"), 1):
        if line.strip(ndjson.LINE_WS):
            seen += 1
            if seen == nonblank_index:
                return number
    return number


class Bulk:
    """One bulk request: its URL's index, and once decoded, what each action came to: `uniform`
    (action, index, count) when every item is the same index/create action line without an
    `_id` (what Beats, Fluent Bit and Vector send), else one Item per action in `items`."""

    __slots__ = ("default_index", "items", "uniform", "nothing", "_lines")

    def __init__(self, default_index: str | None) -> None:
        self.default_index = default_index
        self.items: list[Item] = []
        self.uniform: tuple[str, str | None, int] | None = None
        self.nothing: Refusal | None = None
        self._lines: list[int] = []  # per stored record: the index of its document's line

    def decoder(self, content_type: bytes | None):
        name = (content_type or b"").split(b";", 1)[0].strip().lower().decode("latin-1")
        if name and name not in MEDIA_TYPES:
            raise Refusal(
                415, "unsupported_media_type",
                f"unsupported Content-Type {shown(content_type.decode('latin-1'))}; "
                f"the bulk API takes {', '.join(sorted(MEDIA_TYPES))}",
            )
        return self.decode

    def outcomes(self) -> list[Item]:
        if self.uniform is not None:
            op, index, count = self.uniform
            return [Item(op, index, None)] * count
        return self.items

    def decode(self, body: bytes, limits: Limits) -> Records:
        # Each record needs an action line and a document line: the record count is at most
        # half the non-blank lines, checked before one object per line is built.
        if not limits.within_count((len(body) + 1) // 4):
            limits.check_count(nonblank_lines(body) // 2)
        check_utf8(body, lines=True)
        lines = ndjson.decode_lines(body, _line_limits(limits))
        n = len(lines)
        if n % 2 == 0 and lines[0::2].count(lines[0]) == n // 2:  # one action line, n/2 documents
            op, index, id_, prefix = _action(lines[0], body, 0, self.default_index)
            if op in STORED_ACTIONS and id_ is None:
                self.uniform = (op, index, n // 2)
                docs = lines[1::2]
                if prefix is not None:
                    docs = _with_index_all(docs, prefix) or [_with_meta(doc, index, None, prefix) for doc in docs]
                return finish(docs, limits, lambda k: self._locate(body, 2 * k + 1))
        return self._decode_items(body, lines, limits)

    def _decode_items(self, body: bytes, lines: list[msgspec.Raw], limits: Limits) -> Records:
        docs: list = []
        items = self.items
        record_lines = self._lines
        actions: dict[bytes, tuple] = {}  # clients repeat action lines: parse each once
        n = len(lines)
        i = 0
        while i < n:
            line = lines[i]
            key = bytes(line)
            parsed = actions.get(key)
            if parsed is None:
                parsed = actions[key] = _action(line, body, i, self.default_index)
            op, index, id_, prefix = parsed
            if op == "delete":
                items.append(Item(op, index, id_, "the delete action is not supported: "
                                  "ringgate stores documents (send index or create)"))
                i += 1
                continue
            if i + 1 >= n:
                raise Refusal(400, "invalid_bulk", f"the {op} action on line {_line_number(body, i)} has no "
                                                   "document line after it (the body ends)")
            if op not in STORED_ACTIONS:
                why = ("the update action is not supported: ringgate stores documents (send index or create)"
                       if op == "update" else f"unknown action {shown(op)}: expected index or create")
                items.append(Item(op, index, id_, why))
            else:
                doc = lines[i + 1]
                items.append(Item(op, index, id_))
                docs.append(doc if prefix is None else _with_meta(doc, index, id_, prefix))
                record_lines.append(i + 1)
            i += 2
        if not docs:
            self.nothing = Refusal(400, "no_documents", "no item of the bulk request stores a document")
            raise self.nothing
        return finish(docs, limits, lambda k: self._locate(body, record_lines[k]))

    def _locate(self, body: bytes, line: int) -> str:
        return f"the document on line {_line_number(body, line)}"


def _action(line: msgspec.Raw, body: bytes, nonblank_index: int, default_index: str | None) -> tuple:
    """(action, `_index`, `_id`, the fields to add to its document) of an action line (the URL's
    index when the line names none), or a 400 for a line Elasticsearch refuses too."""

    def lineno() -> int:
        return _line_number(body, nonblank_index)

    try:
        action = _decode_action(line)
    except msgspec.DecodeError:
        raise Refusal(400, "invalid_action", f"malformed action line {lineno()}: expected an object "
                                             "holding one action, e.g. {\"index\":{\"_index\":\"logs\"}}") from None
    if len(action) != 1:
        raise Refusal(400, "invalid_action", f"malformed action line {lineno()}: it names {len(action)} "
                                             "actions; expected exactly one")
    ((op, meta),) = action.items()
    index = meta.get("_index")
    id_ = meta.get("_id")
    if index is not None and not isinstance(index, str) or isinstance(index, str) and not index:
        raise Refusal(400, "invalid_action", f"action line {lineno()}: _index must be a non-empty string")
    if id_ is not None:
        if isinstance(id_, bool) or not isinstance(id_, str | int) or id_ == "":
            raise Refusal(400, "invalid_action", f"action line {lineno()}: _id must be a non-empty string")
        id_ = str(id_)
    index = index or default_index
    return op, index, id_, _fields(index, id_)


def _fields(index: str | None, id_: str | None) -> bytes | None:
    """`{"_index":…,"_id":…,` to put before the rest of a document, None when there is nothing to add."""
    fields = []
    if index is not None:
        fields.append(b'"_index":' + _encode(index))
    if id_ is not None:
        fields.append(b'"_id":' + _encode(id_))
    return b"{" + b",".join(fields) + b"," if fields else None


_SPLICE_SLOW = frozenset(b" \t\r\n}")  # after "{": whitespace or an empty object


def _with_index_all(docs: list[msgspec.Raw], prefix: bytes) -> list[bytes] | None:
    """Every document with `prefix` (`{"_index":…,`) in place of its "{"; None when one may not
    simply take it (not an object, empty, space after "{", or a field `_index` or an escape
    anywhere among them): then each is looked at on its own."""
    joined = b"".join(docs)
    if b'"_index"' in joined or b"\\" in joined:
        return None
    out = []
    for doc in docs:
        raw = bytes(doc)
        if raw[0] != 0x7B or raw[1] in _SPLICE_SLOW:  # "{"
            return None
        out.append(prefix + raw[1:])
    return out


def _with_meta(doc: msgspec.Raw, index: str | None, id_: str | None, prefix: bytes) -> msgspec.Raw | bytes:
    """The document with `_index` / `_id` (`prefix`) added where it has no such top-level field."""
    raw = bytes(doc)
    if raw[:1] != b"{":
        return doc  # not an object: finish names it
    if b'"_index"' not in raw and b'"_id"' not in raw and b"\\" not in raw and raw[1] not in _SPLICE_SLOW:
        return prefix + raw[1:]
    if b'"_index"' in raw or b'"_id"' in raw or b"\\" in raw:  # maybe present (or escaped): look
        meta = _decode_meta(raw)
        if meta.index:  # an empty Raw is the default: the field is absent
            index = None
        if meta.id:
            id_ = None
        prefix = _fields(index, id_)
        if prefix is None:
            return doc
    rest = raw[1:].lstrip(b" \t\r\n")
    return prefix + rest if rest[:1] != b"}" else prefix[:-1] + rest


# ---------------------------------------------------------------------------------- the answers


_ERROR_TYPES = {
    400: "illegal_argument_exception",
    401: "security_exception",
    408: "timeout_exception",
    413: "content_too_long_exception",
    415: "media_type_header_exception",
    429: "es_rejected_execution_exception",
    503: "unavailable_shards_exception",
}
_ITEM_ERROR = "illegal_argument_exception"


def es_error(refusal: Refusal) -> Answer:
    """Elasticsearch's error shape; `code` is ringgate's error code (DESIGN §4)."""
    kind = _ERROR_TYPES.get(refusal.status, "exception")
    cause = {"type": kind, "reason": refusal.detail}
    headers = [PRODUCT, *retry_after(refusal)]
    if refusal.status == 401:
        headers.append((b"www-authenticate", b'ApiKey, Basic realm="ringgate", Bearer'))
    return Answer(refusal.status, _encode({"error": {"root_cause": [cause], **cause, "code": refusal.code},
                                           "status": refusal.status}), headers=headers)


def _json(value, status: int = 200) -> Answer:
    return Answer(status, _encode(value), headers=[PRODUCT])


def bulk_answer(bulk: Bulk, batch_id: str | None, took_ms: int) -> Answer:
    """200 with one result per item, in the order of the request, as the clients parse it
    (`elasticsearch.helpers.bulk`, Beats, Logstash and Vector read each item's one key and its
    `status`, and `error` when there is one). A generated `_id` is the batch id and the item's place."""
    if bulk.uniform is not None:
        op, index, count = bulk.uniform
        created = _created(op, index, batch_id.encode() + b"-%d", template=True)
        parts = [created % position for position in range(count)]
        return _items(b"false", parts, took_ms)
    parts = []
    errors = False
    for position, item in enumerate(bulk.items):
        if item.refused is None:
            id_ = item.id if item.id is not None else f"{batch_id}-{position}"
            parts.append(_created(item.op, item.index, _encode(id_)[1:-1]))
        else:
            errors = True
            id_ = b'"_id":%b,' % _encode(item.id) if item.id is not None else b""
            reason = _encode({"type": _ITEM_ERROR, "reason": item.refused})
            parts.append(b'{%b:{%b%b"status":400,"error":%b}}' % (_encode(item.op), _where(item.index), id_, reason))
    return _items(b"true" if errors else b"false", parts, took_ms)


def _where(index: str | None) -> bytes:
    return b'"_index":%b,' % _encode(index) if index is not None else b""


def _created(op: str, index: str | None, id_: bytes, template: bool = False) -> bytes:
    """A created item; `id_` is the JSON string's content. As a `template`, `id_` holds a `%d` and
    every other `%` is doubled, for one `template % position` per item."""
    op_, where = _encode(op), _where(index)
    if template:
        op_, where = op_.replace(b"%", b"%%"), where.replace(b"%", b"%%")
    return b'{%b:{%b"_id":"%b","_version":1,"result":"created","status":201}}' % (op_, where, id_)


def _items(errors: bytes, parts: list[bytes], took_ms: int) -> Answer:
    return Answer(200, b'{"took":%d,"errors":%b,"items":[%b]}' % (took_ms, errors, b",".join(parts)), headers=[PRODUCT])


def _major(req: Request) -> int:
    for name in (b"accept", b"content-type"):
        value = req.headers.get(name)
        if value is not None and b"compatible-with=9" in value.replace(b" ", b""):
            return 9
    return 8


# -------------------------------------------------------------------------------------- routes


def routes(gw: Gateway) -> list[Route]:
    async def bulk(req: Request) -> Answer:
        plan = Bulk(req.params.get("index"))
        try:
            accepted = await accept(gw, req, Intake(plan.decoder, SCHEMES))
        except Refusal as refusal:
            if refusal is plan.nothing:  # every item refused: nothing claimed, each item says why
                return bulk_answer(plan, None, _took(req))
            return es_error(refusal)
        return bulk_answer(plan, accepted.stored.batch_id, _took(req))

    async def info(req: Request) -> Answer:
        major = _major(req)
        return _json({
            "name": NODE_ID, "cluster_name": CLUSTER_NAME, "cluster_uuid": "ringgate-cluster-uuid",
            "version": {"build_flavor": "default", "build_type": "ringgate", "build_hash": "ringgate",
                        "build_date": "2025-01-01T00:00:00.000Z", "build_snapshot": False, **VERSIONS[major]},
            "tagline": "You Know, for Search",
        })

    async def license_(req: Request) -> Answer:
        return _json({"license": {
            "status": "active", "uid": "ringgate", "type": "basic", "issue_date": "2025-01-01T00:00:00.000Z",
            "issue_date_in_millis": 1735689600000, "max_nodes": 1000, "max_resource_units": None,
            "issued_to": CLUSTER_NAME, "issuer": "elasticsearch", "start_date_in_millis": -1,
        }})

    async def nodes_http(req: Request) -> Answer:
        # Sniffing clients connect to publish_address: name the address this request came to.
        host = req.headers.get(b"host", b"").decode("latin-1")
        if not host or host.endswith("]") or ":" not in host:
            server = req.scope.get("server") or ("127.0.0.1", 9200)
            host = f"{host or server[0]}:{server[1]}"
        return _json({
            "_nodes": {"total": 1, "successful": 1, "failed": 0}, "cluster_name": CLUSTER_NAME,
            "nodes": {NODE_ID: {
                "name": NODE_ID, "host": host.rsplit(":", 1)[0], "version": VERSIONS[_major(req)]["number"],
                "roles": ["data", "ingest", "master"],
                "http": {"bound_address": [host], "publish_address": host, "max_content_length_in_bytes":
                         gw.limits.max_body_bytes},
            }},
        })

    async def xpack(req: Request) -> Answer:
        # Beats and Logstash ask whether ILM is available and enabled before they set it up.
        return _json({
            "build": {"hash": "ringgate", "date": "2025-01-01T00:00:00.000Z"},
            "license": {"uid": "ringgate", "type": "basic", "mode": "basic", "status": "active"},
            "features": {"ilm": {"available": True, "enabled": True}, "data_streams": {"available": True, "enabled": True}},
            "tagline": "You know, for X",
        })

    async def health(req: Request) -> Answer:
        return _json({
            "cluster_name": CLUSTER_NAME, "status": "green", "timed_out": False, "number_of_nodes": 1,
            "number_of_data_nodes": 1, "active_primary_shards": 0, "active_shards": 0,
            "relocating_shards": 0, "initializing_shards": 0, "unassigned_shards": 0,
            "active_shards_percent_as_number": 100.0,
        })

    async def acknowledged(req: Request) -> Answer:
        """Templates and ILM policies: ringgate keeps none, so any is there and any PUT is taken
        (a body is still read within the limits, so the connection stays usable)."""
        if req.method == "PUT":
            try:
                _, held = await read_body(gw, req, gw.limits.max_body_bytes)
            except Refusal as refusal:
                return es_error(refusal)
            gw.release(held)
        return _json({"acknowledged": True})

    settings = ("GET", "PUT")
    return [
        Route("/_bulk", bulk, ("POST", "PUT"), NAME),
        Route("/{index}/_bulk", bulk, ("POST", "PUT"), NAME),
        Route("/", info, ("GET",)),
        Route("/_license", license_, ("GET",)),
        Route("/_nodes/http", nodes_http, ("GET",)),
        Route("/_cluster/health", health, ("GET",)),
        Route("/_xpack", xpack, ("GET",)),
        Route("/_index_template/{name}", acknowledged, settings),
        Route("/_component_template/{name}", acknowledged, settings),
        Route("/_template/{name}", acknowledged, settings),
        Route("/_ilm/policy/{name}", acknowledged, settings),
    ]


def _took(req: Request) -> int:
    return max(0, (time.time_ns() - req.received_ns) // 1_000_000)

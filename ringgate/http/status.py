"""The endpoints that take no records: health, readiness, metrics, batch status, stats."""

from __future__ import annotations

from ..errors import Refusal
from ..gateway import Gateway
from ..metrics import render
from ..sinks import sink_label
from .answers import json_answer, refused
from .intake import authenticate
from .request import Answer, Request, Route


class Status:
    """Handlers over one gateway; the seeds' aliases (/v1/health, ...) reuse them."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.readyz = self._guarded(self._readyz)
        self.metrics = self._guarded(self._metrics)
        self.stats = self._guarded(self._stats)
        self.batch = self._guarded(self._batch, admin=False)

    def _guarded(self, answer, admin: bool = True):
        """The handler behind a key check: always (batch status) or with RINGGATE_ADMIN_AUTH=1."""

        async def handle(req: Request) -> Answer:
            if not admin or self.gw.settings.admin_auth:
                try:
                    authenticate(self.gw, req)
                except Refusal as refusal:
                    return refused(refusal)
            return answer(req)

        return handle

    async def healthz(self, req: Request) -> Answer:
        return json_answer(200, {"status": "ok"})

    def _readyz(self, req: Request) -> Answer:
        gw = self.gw
        reports = [gw.ring_report(i) for i in range(len(gw.rings))]
        stale_s = max(5.0, 10 * gw.settings.flush_interval_ms / 1000)
        reasons = []
        if not reports:
            reasons.append("no rings attached")
        for r in reports:
            if not r["flusher_alive"]:
                reasons.append(f"ring {r['ring']}: no flusher alive")
            if r["sink_error"]:
                reasons.append(f"ring {r['ring']}: sink failing: {r['sink_error']}")
            elif r["oldest_age_s"] > stale_s:  # e.g. a first connection attempt still hanging
                reasons.append(f"ring {r['ring']}: oldest undelivered record is {r['oldest_age_s']:.1f}s old")
        body = {
            "status": "not_ready" if reasons else "ready",
            "reasons": reasons,
            "rings": [
                {k: r[k] for k in ("ring", "flusher_pid", "used_bytes", "capacity_bytes", "committed_position",
                                   "producer_position", "epoch")}
                for r in reports
            ],
        }
        return json_answer(503 if reasons else 200, body)

    def _metrics(self, req: Request) -> Answer:
        gw = self.gw
        reports = [gw.ring_report(i) for i in range(len(gw.rings))]
        text = render(gw.metrics.totals(), sink_label(gw.settings.sink), reports)
        return Answer(200, text.encode(), b"text/plain; version=0.0.4")

    def _batch(self, req: Request) -> Answer:
        batch_id = req.params["batch_id"]
        status = self.gw.batch_status(batch_id)
        return json_answer(404 if status == "unknown" else 200, {"batch_id": batch_id, "status": status})

    def _stats(self, req: Request) -> Answer:
        gw = self.gw
        totals = gw.metrics.totals()
        rejected = sum(v for k, v in totals.items() if k.startswith("records_rejected_total:"))
        rings = []
        for i in range(len(gw.rings)):
            r = gw.ring_report(i)
            rings.append({"ring": i, "used_bytes": r["used_bytes"], "capacity_bytes": r["capacity_bytes"],
                          "fill": round(r["used_bytes"] / r["capacity_bytes"], 6)})
        return json_answer(200, {
            "records_accepted": totals["records_accepted_total"],
            "records_rejected": rejected,
            "records_delivered": totals["records_delivered_total"],
            "records_dead_lettered": totals["records_dead_lettered_total"],
            "rings": rings,
        })


def routes(gw: Gateway) -> list[Route]:
    s = Status(gw)
    return [
        Route("/healthz", s.healthz, ("GET",)),
        Route("/readyz", s.readyz, ("GET",)),
        Route("/metrics", s.metrics, ("GET",)),
        Route("/v1/batches/{batch_id}", s.batch, ("GET",)),
    ]

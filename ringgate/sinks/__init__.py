"""Sinks: where flushers deliver batches. psycopg and obstore are imported only below this package."""

from __future__ import annotations

from ..config import Settings
from .base import Batch, Sink

__all__ = ["Batch", "Sink", "make_sink", "sink_label"]


def sink_label(url: str) -> str:
    scheme = url.split(":", 1)[0].lower()
    return "postgresql" if scheme == "postgres" else scheme


def make_sink(settings: Settings) -> Sink:
    label = sink_label(settings.sink)
    if label == "postgresql":
        from .postgres import PostgresCopySink

        return PostgresCopySink(
            settings.sink,
            table=settings.pg_table,
            instance=settings.instance,
            dedup_key=settings.pg_dedup_key,
            partition=settings.pg_partition,
        )
    if label == "stdout":
        from .stdout import StdoutSink

        return StdoutSink()
    from .objstore import ObjectStoreSink

    return ObjectStoreSink(
        settings.sink, part_bytes=settings.object_part_bytes, compression=settings.object_compression
    )

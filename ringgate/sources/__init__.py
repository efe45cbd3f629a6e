"""Sources: every endpoint that takes records, one module per protocol (§8).

A source parses its protocol's framing into records, hands them to the shared path
(ringgate.http.intake.accept) and shapes the Stored or the Refusal into its protocol's answer.
Each module has `routes(gateway) -> list[Route]`. Adding a protocol is one module and one name
below; no source imports another.
"""

from __future__ import annotations

import importlib

SOURCES = ("native", "seeds", "otlp", "es_bulk", "hec", "loki")


def routes(gateway) -> list:
    out = []
    for name in SOURCES:
        out += importlib.import_module(f"{__name__}.{name}").routes(gateway)
    return out

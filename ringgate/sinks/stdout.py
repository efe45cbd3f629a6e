"""`stdout:` — the batch as NDJSON on standard output, for development and piping into tools.

Nothing is remembered: a retried batch after a failed write may print records twice.
"""

from __future__ import annotations

import sys
from typing import BinaryIO

from ..errors import RetryableSinkError
from .base import Batch


class StdoutSink:
    name = "stdout"

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream

    def deliver(self, batch: Batch) -> None:
        try:
            # looked up per batch, so a replaced sys.stdout (tests, redirection) is honoured
            out = self._stream if self._stream is not None else sys.stdout.buffer
            out.write(batch.ndjson())
            out.flush()
        except (OSError, ValueError) as exc:  # BrokenPipeError, EIO...; ValueError: stdout closed
            raise RetryableSinkError(f"stdout sink could not write batch {batch.name}: {exc}") from exc

    def close(self) -> None:
        try:
            (self._stream if self._stream is not None else sys.stdout.buffer).flush()
        except (OSError, ValueError):
            pass  # nothing left to deliver to a closed stdout

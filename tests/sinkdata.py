"""Reading back what a sink stored, for assertions."""

from __future__ import annotations

import gzip
import json
import pathlib
import time
from collections import Counter
from collections.abc import Callable


def decode_object(name: str, data: bytes) -> list[dict]:
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    elif name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30)
    return [json.loads(line) for line in data.splitlines() if line]


def file_sink_records(root: str | pathlib.Path) -> list[dict]:
    """Every record stored under a file:// sink directory, in no particular order."""
    out: list[dict] = []
    for path in sorted(pathlib.Path(root).rglob("*.ndjson*")):
        # only finished objects: a crash mid-put leaves a temporary file under another name
        if path.is_file() and path.name.endswith((".ndjson", ".ndjson.gz", ".ndjson.zst")):
            out += decode_object(path.name, path.read_bytes())
    return out


class StuckSink:
    """A file:// sink that cannot be written (a regular file where its directory should be): the
    flushers' deliveries fail and are retried, the ring fills, until `recover()` removes the file."""

    def __init__(self, tmp_path: pathlib.Path) -> None:
        self.blocker = tmp_path / "blocked"
        self.blocker.write_text("a regular file where the sink directory should be")
        self.url = f"file://{self.blocker}/data"

    def recover(self) -> None:
        """The operator fixes the fault: deliveries succeed from the next retry on."""
        self.blocker.unlink()

    def records(self) -> list[dict]:
        return file_sink_records(self.blocker / "data")


def wait_for(predicate: Callable[[], bool], timeout: float = 30, interval: float = 0.1, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def assert_exactly_once(expected_ids: list[str], stored: list[dict], key: str = "id") -> None:
    counts = Counter(r.get(key) for r in stored)
    missing = [i for i in expected_ids if counts[i] == 0]
    doubled = [i for i in expected_ids if counts[i] > 1]
    assert not missing, f"{len(missing)} acknowledged records missing, e.g. {missing[:5]}"
    assert not doubled, f"{len(doubled)} records stored twice, e.g. {doubled[:5]}"

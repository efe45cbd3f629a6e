"""StdoutSink writes exactly the batch's NDJSON to standard output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ringgate.errors import RetryableSinkError
from ringgate.sinks.base import Batch
from ringgate.sinks.stdout import StdoutSink

REPO = str(Path(__file__).resolve().parents[2])


def test_writes_exactly_the_ndjson(capfd):
    sink = StdoutSink()
    assert sink.name == "stdout"
    first = Batch.from_payloads([b'{"a":1}', b'{"b":"\\u00e9\xc3\xa9"}'])
    second = Batch.from_payloads([b'{"c":[1,2]}'], first_position=first.next_position)
    sink.deliver(first)
    sink.deliver(second)
    sink.close()
    out = capfd.readouterr().out.encode()
    assert out == b'{"a":1}\n{"b":"\\u00e9\xc3\xa9"}\n{"c":[1,2]}\n'


def test_a_slice_writes_only_its_records(capfd):
    batch = Batch.from_payloads([b'{"i":0}', b'{"i":1}', b'{"i":2}'])
    StdoutSink().deliver(batch.slice(1, 3))
    assert capfd.readouterr().out == '{"i":1}\n{"i":2}\n'


def test_in_a_process_of_its_own():
    script = (
        "from ringgate.sinks.base import Batch\n"
        "from ringgate.sinks.stdout import StdoutSink\n"
        "StdoutSink().deliver(Batch.from_payloads([b'{\"x\":1}', b'{\"y\":2}']))\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, env=env).stdout
    assert out == b'{"x":1}\n{"y":2}\n'


def test_broken_pipe_is_retryable():
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "wb") as stream:
        sink = StdoutSink(stream)
        with pytest.raises(RetryableSinkError, match="stdout sink could not write batch"):
            sink.deliver(Batch.from_payloads([b'{"a":1}'] * 20_000))
        try:
            stream.close()
        except BrokenPipeError:
            pass  # the flush on close hits the same closed pipe


def test_closed_stdout_is_retryable():
    stream = open(os.devnull, "wb")  # noqa: SIM115
    stream.close()
    with pytest.raises(RetryableSinkError):
        StdoutSink(stream).deliver(Batch.from_payloads([b'{"a":1}']))

"""RINGGATE_SINK and RINGGATE_DLQ are checked before anything starts, and a password in them is
never printed (DESIGN §10): not on stdout or stderr, not in the logs, /readyz, /metrics or a
dead-letter line."""

from __future__ import annotations

import json
import pathlib
import re
import time
import uuid

import pytest

from tests.fixtures.gateway import free_port


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def answers(gw) -> bool:
    assert gw.proc.poll() is None, gw.log()
    try:
        return gw.get("/healthz", timeout=2).status == 200
    except OSError:
        return False


def everything_printed(gw, dead_letters: pathlib.Path | None = None) -> str:
    """What the gateway printed (stdout and stderr of every process) and serves, and its dead letters."""
    texts = [gw.log(), gw.get("/readyz").body.decode(), gw.get("/metrics").body.decode()]
    if dead_letters is not None and dead_letters.exists():
        texts += [p.read_text(errors="replace") for p in sorted(dead_letters.rglob("*")) if p.is_file()]
    return "\n".join(texts)


# -- exit 2 before anything starts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "url", "secrets", "rule"),
    [
        # libpq refuses the escape (and quoted the password in its message, in a crash loop)
        ("SINK", "postgresql://u:S3cr%zzet@db/x", ["S3cr%zzet", "S3cr"], "escape"),
        # an '@' in the password: libpq would take "Xq9z@127.0.0.1" for the host and print it
        ("SINK", "postgresql://u:Pw1@Xq9z@127.0.0.1/db", ["Pw1@Xq9z", "Xq9z"], "%40"),
        # a '/' in the password: libpq would take "Tok3n" for a port and print it
        ("SINK", "postgresql://u:Tok3n/Zed@127.0.0.1/db", ["Tok3n", "Zed@"], "%2F"),
        ("SINK", "postgresql://u:Hunter2Hunter/db", ["Hunter2Hunter"], "port"),
        ("SINK", "s3:///prefix", [], "bucket"),
        ("SINK", "s3://AKIAKEY:Secr3tK3y@bucket/x", ["Secr3tK3y"], "credentials"),
        ("SINK", "ftp://x", [], "one of"),
        ("DLQ", "postgresql://u:Dlq5ecret@127.0.0.1/db", ["Dlq5ecret"], "one of"),
        ("DLQ", "gs://", [], "bucket"),
    ],
)
def test_bad_sink_url_exits_2_without_the_password(make_gateway, variable, url, secrets, rule):
    gw = make_gateway(start=False, **{variable: url})
    gw.start(wait_ready=False)
    assert gw.proc.wait(60) == 2, gw.log()
    lines = gw.log().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"RINGGATE_{variable} must be" in lines[0] and rule in lines[0], lines
    for secret in secrets:
        assert secret not in lines[0], lines
    assert not [p for p in pathlib.Path("/dev/shm").iterdir() if p.name.startswith(gw.instance)]


# -- at run time ---------------------------------------------------------------------------------


def test_failing_postgresql_sink_never_prints_its_password(make_gateway, tmp_path):
    """PostgreSQL on a closed port, with an '@' in the password: the flusher retries, /readyz names
    the sink and the failure class, the logs carry the detail, and the password is nowhere."""
    password = "Zq@9Secret"
    url = f"postgresql://u:{password.replace('@', '%40')}@127.0.0.1:{free_port()}/db"
    gw = make_gateway(SINK=url, LOG_LEVEL="debug", start=False)
    gw.start(wait_ready=False)
    wait_for(lambda: answers(gw), what="the HTTP server")  # ready or not: nothing was delivered yet
    assert gw.post([{"id": 1}]).status == 202
    wait_for(lambda: gw.metrics().get('ringgate_delivery_retries_total{sink="postgresql"}', 0) >= 2,
             what="delivery retries")
    ready = gw.get("/readyz")
    assert ready.status == 503
    # the ring the worker's record went to (a PostgreSQL sink has a ring per core)
    assert any(re.fullmatch(r"ring \d+: sink failing: postgresql: connection refused", reason)
               for reason in ready.json()["reasons"]), ready.body
    printed = everything_printed(gw, tmp_path / "dead-letter")
    assert "Connection refused" in printed  # the detail is in the log
    assert "u:***@127.0.0.1" in printed  # ... and the URL, redacted
    for secret in (password, "Zq%409Secret", "9Secret"):
        assert secret not in printed
    gw.kill_all(spare_resource_tracker=False)


@pytest.fixture
def pg_role(postgres_server):
    """A login role whose password holds '@', '/' and ':', allowed to create the sink's tables."""
    name, password = f"r_{uuid.uuid4().hex[:10]}", "Sw0rd@fi/sh:Xy"
    with postgres_server.connect() as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {name}")
    yield name, password
    with postgres_server.connect() as conn:
        conn.execute(f"REASSIGN OWNED BY {name} TO {postgres_server.user}")
        conn.execute(f"DROP OWNED BY {name}")
        conn.execute(f"DROP ROLE {name}")


def test_dead_letters_and_logs_of_a_working_sink_never_print_its_password(
    make_gateway, postgres_server, postgres_table, pg_role, tmp_path
):
    name, password = pg_role
    encoded = password.replace("@", "%40").replace("/", "%2F").replace(":", "%3A")
    url = postgres_server.url_for(name, encoded)
    gw = make_gateway(SINK=url, PG_TABLE=postgres_table, LOG_LEVEL="debug", LOG_FORMAT="json")
    good = [{"id": i} for i in range(5)]
    assert gw.post(good).status == 202
    # valid JSON that jsonb refuses (22P05): dead-lettered
    assert gw.post(b'[{"id": "bad", "text": "nul \\u0000 here"}]').status == 202
    wait_for(lambda: gw.metrics().get("ringgate_records_dead_lettered_total", 0) >= 1, what="a dead letter")
    wait_for(lambda: gw.metrics().get('ringgate_records_delivered_total{sink="postgresql"}', 0) >= 5,
             what="delivery")
    dead = [json.loads(line) for p in (tmp_path / "dead-letter").rglob("*.ndjson") for line in p.read_text().splitlines()]
    assert [d["record"]["id"] for d in dead] == ["bad"] and dead[0]["sink"] == "postgresql"
    printed = everything_printed(gw, tmp_path / "dead-letter")
    assert f"{name}:***@127.0.0.1" in printed  # the log names where it delivers, redacted
    for secret in (password, encoded, "fi/sh", "Sw0rd"):
        assert secret not in printed
    assert gw.stop() == 0
    assert password not in gw.log()

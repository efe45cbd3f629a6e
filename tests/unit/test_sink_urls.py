"""The sink URL table (ringgate.sinks.KINDS): the rules config applies, and redaction."""

from __future__ import annotations

import io
import json
import logging

import pytest

from ringgate.config import Settings
from ringgate.errors import ConfigurationError
from ringgate.process import configure_logging
from ringgate.sinks import check_url, redact, sink_label, url_secrets

# URLs libpq parses as the user meant: config must accept every one (no false refusal)
LIBPQ_ACCEPTS = [
    "postgresql://",
    "postgres://u@h/d",
    "postgresql://u:p%40ss@127.0.0.1:5432/db",
    "postgresql://u:pa?ss@host/db",
    "postgresql:///db?host=/var/run/postgresql",
    "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
    "postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write",
    "postgresql://[::1]:5432/db",
    "postgresql://u:pw@host/db?application_name=me@x&sslmode=require",
]
# URLs libpq refuses, or parses into a host, port or database made of part of the password
REFUSED = [
    "postgresql://u:S3cr%zzet@db/x",
    "postgresql://u:p%00@h/d",
    "postgresql://u:p@ss@host/db",
    "postgresql://u:pa/ss@host/db",
    "postgresql://u:12/ss@host/db",
    "postgresql://u:secret/db",
    "postgresql://[::1/db",
    "postgres://u@h/d?sslmode",
    "postgres://u@h/d?a=b=c",
    "postgresql:x",
]


@pytest.mark.parametrize("url", LIBPQ_ACCEPTS)
def test_what_libpq_accepts_is_accepted(url):
    psycopg = pytest.importorskip("psycopg")
    psycopg.conninfo.conninfo_to_dict(url)  # the oracle
    assert check_url("RINGGATE_SINK", url) == url


@pytest.mark.parametrize("url", REFUSED)
def test_refused_postgresql_urls_never_show_the_password(url):
    with pytest.raises(ConfigurationError) as info:
        check_url("RINGGATE_SINK", url)
    message = str(info.value)
    assert message.startswith("RINGGATE_SINK must be ")
    for secret in url_secrets(url):
        assert secret not in message, message
    for part in ("S3cr", "ss@host", "/ss", "secret"):
        assert part not in message, message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p%40ss@h:1/db", "postgresql://u:***@h:1/db"),
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),  # never "ss@host"
        ("postgresql://u:pa/ss@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:secret/db", "postgresql://u:***/db"),
        ("postgresql://u@h/db?password=pw&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql://u:pw@h/db?application_name=a@b", "postgresql://u:***@h/db?application_name=a@b"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("stdout:", "stdout:"),
    ],
)
def test_redact(url, shown):
    assert redact(url) == shown


def test_url_secrets_are_raw_and_decoded():
    assert set(url_secrets("postgresql://u:p%40ss@h/db")) == {"p%40ss", "p@ss"}


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"RINGGATE_SINK": "s3://"}, "RINGGATE_SINK must be a URL naming a bucket"),
        ({"RINGGATE_SINK": "gs:///x"}, "RINGGATE_SINK must be a URL naming a bucket"),
        ({"RINGGATE_SINK": "file://"}, "RINGGATE_SINK must be a directory"),
        ({"RINGGATE_DLQ": "stdout:"}, "RINGGATE_DLQ must be a URL, one of"),
        ({"RINGGATE_DLQ": "postgresql://u@h/db"}, "RINGGATE_DLQ must be a URL, one of"),
        ({"RINGGATE_TLS_CERT": "/x.pem"}, "RINGGATE_TLS_CERT and RINGGATE_TLS_KEY must be set together"),
        ({"RINGGATE_HTTP": "2"}, "RINGGATE_HTTP must be one of 1, auto"),
    ],
)
def test_settings_refuse(env, fragment):
    with pytest.raises(ConfigurationError, match=fragment):
        Settings.from_environ(env)


def test_settings_defaults_http1_and_no_tls():
    settings = Settings.from_environ({})
    assert (settings.http, settings.tls_cert, settings.tls_key) == ("1", "", "")
    assert Settings.from_environ({"RINGGATE_HTTP": "AUTO"}).http == "auto"


def test_labels_come_from_the_table():
    assert [sink_label(u) for u in ("postgres://h", "abfss://c@a/x", "s3a://b", "file:///x", "nope")] == [
        "postgresql", "az", "s3", "file", "unknown",
    ]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_are_scrubbed(monkeypatch, fmt):
    """Messages, arguments and tracebacks; in JSON too, where escaping would hide a '"' or '\\'."""
    password = 'Pa"ss\\w@rd'
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging(fmt, "info", secrets=[password])
    log = logging.getLogger("ringgate.test")
    try:
        raise RuntimeError(f"libpq said: password {password} refused")
    except RuntimeError:
        log.exception("connecting with %s failed", password)
    log.warning(f"inline {password}")
    out = stream.getvalue()
    assert out.count("***") == 3, out  # message, exception text, inline (the traceback quotes source)
    assert password not in out and json.dumps(password)[1:-1] not in out and "ss\\" not in out, out
    logging.getLogger("ringgate").handlers[:] = []

"""HTTPS with RINGGATE_TLS_CERT / RINGGATE_TLS_KEY, and HTTP/2 only with RINGGATE_HTTP=auto (DESIGN §10).

Granian's own default is HTTP mode auto, which also speaks cleartext HTTP/2 to any client that
opens with the HTTP/2 preface (h2c "prior knowledge"), with a 16 MiB header limit per stream.
The h2c probe below is written out frame by frame, so it needs no HTTP/2 client library.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import struct
import time

import pytest

trustme = pytest.importorskip("trustme")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS, H2_HEADERS = 0x4, 0x1


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A throwaway CA and a certificate for 127.0.0.1 and localhost, as PEM files."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    with open(directory / "cert.pem", "wb") as f:
        for pem in cert.cert_chain_pems:
            f.write(pem.bytes())
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return directory


def client_context(tls_files, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls_files / "ca.pem"))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def https(port: int, context: ssl.SSLContext, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_https_ready(gw, context: ssl.SSLContext, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert gw.proc.poll() is None, f"ringgate serve exited with {gw.proc.returncode}:\n{gw.log()}"
        try:
            if https(gw.port, context, "GET", "/readyz")[0] == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise AssertionError(f"gateway not ready over HTTPS after {timeout}s:\n{gw.log()}")


def tls_gateway(make_gateway, tls_files, **overrides):
    gw = make_gateway(start=False, TLS_CERT=str(tls_files / "cert.pem"), TLS_KEY=str(tls_files / "key.pem"),
                      **overrides)
    gw.start(wait_ready=False)
    wait_https_ready(gw, client_context(tls_files))
    return gw


def plain_status(port: int) -> int | None:
    """The status a cleartext HTTP/1.1 request gets, None if it gets no HTTP answer at all."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/ingest", body=b'[{"a":1}]', headers={"Content-Type": "application/json"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def test_https_serves_and_cleartext_gets_no_2xx(make_gateway, tls_files):
    gw = tls_gateway(make_gateway, tls_files)
    context = client_context(tls_files)
    status, body = https(gw.port, context, "POST", "/v1/ingest", body=json.dumps([{"over": "tls"}]).encode(),
                         headers={"Content-Type": "application/json"})
    assert status == 202, body
    assert json.loads(body)["accepted"] == 1
    status = plain_status(gw.port)
    assert status is None or not 200 <= status < 300, status
    # the server still serves HTTPS after the cleartext attempt
    assert https(gw.port, context, "GET", "/healthz")[0] == 200
    # HTTP/1.1 only by default over TLS too: ALPN never selects h2
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw, \
            client_context(tls_files, ["h2", "http/1.1"]).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.selected_alpn_protocol() in (None, "http/1.1")
    assert gw.stop() == 0


def test_https_with_http2_auto_negotiates_h2(make_gateway, tls_files):
    gw = tls_gateway(make_gateway, tls_files, HTTP="auto")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw, \
            client_context(tls_files, ["h2", "http/1.1"]).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.selected_alpn_protocol() == "h2"


# -- cleartext HTTP/2 (h2c, prior knowledge) ----------------------------------------------------


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name_index: int, value: str) -> bytes:
    """HPACK literal header field with incremental indexing, indexed name, raw value (< 127 bytes)."""
    return bytes([0x40 | name_index, len(value)]) + value.encode()


def h2c_healthz(port: int) -> tuple[bytes, int | None]:
    """Send the HTTP/2 preface, SETTINGS and GET /healthz in cleartext; return (the first bytes the
    server answered, the first byte of its HEADERS block for stream 1, None if none came)."""
    # :method GET (static 2), :scheme http (6), :path (4) and :authority (1) literals
    block = b"\x82\x86" + _literal(4, "/healthz") + _literal(1, f"127.0.0.1:{port}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(H2_PREFACE + _frame(H2_SETTINGS, 0, 0, b"") + _frame(H2_HEADERS, 0x5, 1, block))
        received = b""
        offset = 0  # of the first frame not yet looked at
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
            # walk the frames received since, if they are frames (each SETTINGS acknowledged once)
            while received[:3] != b"HTT" and offset + 9 <= len(received):
                length = int.from_bytes(received[offset : offset + 3], "big")
                kind, stream = received[offset + 3], int.from_bytes(received[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
                if offset + 9 + length > len(received):
                    break
                if kind == H2_HEADERS and stream == 1:
                    return received, received[offset + 9] if length else None
                if kind == H2_SETTINGS and received[offset + 4] & 0x1 == 0:
                    sock.sendall(_frame(H2_SETTINGS, 0x1, 0, b""))  # ACK the server's settings
                offset += 9 + length
        return received, None


def _is_h2(reply: bytes) -> bool:
    return len(reply) >= 9 and reply[3] == H2_SETTINGS and int.from_bytes(reply[5:9], "big") == 0


def test_h2c_refused_by_default(make_gateway):
    gw = make_gateway()
    reply, status_byte = h2c_healthz(gw.port)
    assert not _is_h2(reply) and status_byte is None, reply[:200]
    assert gw.get("/healthz").status == 200  # HTTP/1.1 is served as ever


def test_h2c_served_with_http_auto(make_gateway):
    gw = make_gateway(HTTP="auto")
    reply, status_byte = h2c_healthz(gw.port)
    assert _is_h2(reply), reply[:200]
    assert status_byte == 0x88, (status_byte, reply[:200])  # HPACK static entry 8: ":status 200"


# -- refused at start: exit 2 -------------------------------------------------------------------


@pytest.mark.parametrize("case", ["cert_only", "key_only", "unreadable", "not_pem", "mismatched"])
def test_bad_tls_settings_exit_2(make_gateway, tls_files, tmp_path, case):
    cert, key = str(tls_files / "cert.pem"), str(tls_files / "key.pem")
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    (tmp_path / "garbage.pem").write_bytes(b"not a certificate\n")
    env = {
        "cert_only": {"TLS_CERT": cert},
        "key_only": {"TLS_KEY": key},
        "unreadable": {"TLS_CERT": str(tmp_path / "missing.pem"), "TLS_KEY": key},
        "not_pem": {"TLS_CERT": str(tmp_path / "garbage.pem"), "TLS_KEY": key},
        "mismatched": {"TLS_CERT": cert, "TLS_KEY": str(tmp_path / "other-key.pem")},
    }[case]
    gw = make_gateway(start=False, **env)
    gw.start(wait_ready=False)
    assert gw.proc.wait(60) == 2, gw.log()
    lines = gw.log().strip().splitlines()
    assert len(lines) == 1 and "RINGGATE_TLS_" in lines[0], lines

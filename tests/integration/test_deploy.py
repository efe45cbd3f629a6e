"""deploy/: each file parsed, loaded or run, and the metrics it names scraped from a real gateway."""

from __future__ import annotations

import configparser
import http.client
import http.server
import json
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading

import pytest
import yaml

from ringgate.config import Settings
from ringgate.metrics import SEGMENT_BYTES
from ringgate.ring import layout as L
from tests.fixtures.nginx import nginx_binary, start_nginx

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"
DEFAULTS = Settings()
ALERTS = {"RinggateRingFillHigh", "RinggateOldestUndeliveredOld", "RinggateDeliveryRetriesRising",
          "RinggateDeadLetters", "RinggateFlusherDown"}


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load((DEPLOY / "prometheus-rules.yaml").read_text())
    return {rule["alert"]: rule["expr"] for group in doc["groups"] for rule in group["rules"]}


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                "bool", "offset", "le", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: not label matchers, ranges, groupings, functions or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\blabel_values\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)", r"\1", text)
    names = set(re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text))
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def test_dashboard_and_rules_name_only_metrics_a_gateway_exposes(make_gateway):
    gw = make_gateway()
    assert gw.post([{"scrape": 1}]).status == 202
    text = gw.get("/metrics").body.decode()
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    rules = rule_exprs()
    assert set(rules) == ALERTS
    for where, exprs in (("rules", list(rules.values())), ("dashboard", dashboard_exprs())):
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{where}: {expr!r} names no metric"
            assert names <= exposed, f"{where}: {sorted(names - exposed)} not in /metrics ({expr!r})"
    assert gw.stop() == 0


def test_metric_names_finds_every_series_and_nothing_else():
    # the checker above must not pass a misspelt metric by skipping it
    expr = ('histogram_quantile(0.99, sum by (le) (rate(ringgate_x_bucket{instance=~"$i", le!="a b"}[5m]))) '
            '/ on (instance) group_left max by (instance) (other_metric) > bool 0.8')
    assert metric_names(expr) == {"ringgate_x_bucket", "other_metric"}
    assert metric_names("label_values(ringgate_y, instance)") == {"ringgate_y"}


def test_alert_rules_pass_promtool_or_parse(tmp_path):
    rules = DEPLOY / "prometheus-rules.yaml"
    doc = yaml.safe_load(rules.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: prometheus); the YAML parsed")
    done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # and the alerts fire on the series they are meant for, and the flusher alert does not fire
    # while the sink is failing (retries rising): promtool's rule unit tests, over a copy without
    # annotations (promtool compares them whole; the expressions and `for` are what is tested)
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    bare = tmp_path / "rules.yaml"
    bare.write_text(yaml.safe_dump(doc))
    tests = {
        "rule_files": [str(bare)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'ringgate_ring_used_bytes{instance="a",ring="0"}', "values": "900x10"},
                {"series": 'ringgate_ring_capacity_bytes{instance="a",ring="0"}', "values": "1000x10"},
                # a: records waiting, nothing delivered, nothing retried -> flusher down
                {"series": 'ringgate_oldest_undelivered_seconds{instance="a"}', "values": "100x10"},
                {"series": 'ringgate_batches_delivered_total{instance="a",sink="file"}', "values": "5x10"},
                {"series": 'ringgate_delivery_retries_total{instance="a",sink="file"}', "values": "0x10"},
                # b: records waiting while the sink fails -> retries, not flusher down
                {"series": 'ringgate_oldest_undelivered_seconds{instance="b"}', "values": "100x10"},
                {"series": 'ringgate_batches_delivered_total{instance="b",sink="file"}', "values": "5x10"},
                {"series": 'ringgate_delivery_retries_total{instance="b",sink="file"}', "values": "0+2x10"},
                {"series": 'ringgate_records_dead_lettered_total{instance="b"}', "values": "0 0 0 1 1 1 1 1 1 1"},
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "RinggateRingFillHigh",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "instance": "a", "ring": "0"}}]},
                {"eval_time": "6m", "alertname": "RinggateFlusherDown",
                 "exp_alerts": [{"exp_labels": {"severity": "critical", "instance": "a"}}]},
                {"eval_time": "9m", "alertname": "RinggateDeliveryRetriesRising",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "instance": "b", "sink": "file"}}]},
                {"eval_time": "5m", "alertname": "RinggateDeadLetters",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "instance": "b"}}]},
            ],
        }],
    }
    spec = tmp_path / "rules-test.yaml"
    spec.write_text(yaml.safe_dump(tests))
    done = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_systemd_unit_verifies_and_lets_the_supervisor_drain(tmp_path):
    unit = DEPLOY / "ringgate.service"
    parsed = configparser.ConfigParser(strict=False, interpolation=None)
    parsed.optionxform = str
    parsed.read_string(unit.read_text())
    service = parsed["Service"]
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) >= DEFAULTS.drain_timeout_s + 10
    assert service["RemoveIPC"] == "no" and service["PrivateDevices"] == "no"
    assert service["ExecStart"].endswith("ringgate serve")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # the key file, re-read in place
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed; the unit parsed")
    # verify checks that ExecStart exists: point it at this venv's ringgate
    ringgate = shutil.which("ringgate", path=str(pathlib.Path(sys.executable).parent)) or "/bin/true"
    copy = tmp_path / "ringgate.service"
    copy.write_text(unit.read_text().replace("/opt/ringgate/.venv/bin/ringgate", ringgate))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "ringgate.service" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def _quantity(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


def test_kubernetes_manifest_sizes_shm_and_covers_the_drain():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text())}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    settings = Settings.from_environ({k: e["value"] for k, e in env.items() if "value" in e})
    assert env["RINGGATE_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert settings.host == "0.0.0.0"

    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    needed = settings.flushers * (settings.ring_bytes + L.HEADER_LENGTH) + SEGMENT_BYTES
    assert _quantity(shm["emptyDir"]["sizeLimit"]) >= needed
    assert _quantity(container["resources"]["limits"]["memory"]) >= _quantity(shm["emptyDir"]["sizeLimit"])
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]

    port = settings.port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {p["containerPort"] for p in container["ports"]} == {port}
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + settings.drain_timeout_s + 10
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]


# -- nginx ------------------------------------------------------------------------------------


def test_nginx_conf_passes_nginx_t_and_matches_ringgate_defaults(tmp_path):
    nginx = nginx_binary()
    conf = DEPLOY / "nginx.conf"
    done = subprocess.run(
        [nginx, "-t", "-c", str(conf), "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log"),
         "-g", f"pid {tmp_path}/nginx.pid;"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = conf.read_text()
    assert "proxy_next_upstream error timeout http_429 http_502 http_503 non_idempotent;" in text
    assert f"client_max_body_size {DEFAULTS.max_body_bytes >> 20}m;" in text
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", text).group(1))
    assert read_timeout > DEFAULTS.ack_timeout_ms / 1000
    assert re.search(r"keepalive \d+;", text) and "proxy_set_header Connection \"\";" in text


class _Upstream:
    """A stand-in gateway on loopback: answers every POST with `status` (429 with Retry-After),
    keeps the bodies it got; or, dead, accepts and closes at once, counting the attempts."""

    def __init__(self, status: int | None) -> None:
        self.status = status
        self.bodies: list[bytes] = []
        self.attempts = 0
        if status is None:
            self.sock = socket.create_server(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
            threading.Thread(target=self._refuse, daemon=True).start()
            return
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.bodies.append(body)
                payload = json.dumps({"status": owner.status}).encode()
                self.send_response(owner.status)
                if owner.status == 429:
                    self.send_header("Retry-After", "7")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _refuse(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.attempts += 1
            conn.close()

    def close(self) -> None:
        if self.status is None:
            self.sock.close()
        else:
            self.server.shutdown()
            self.server.server_close()


def _post(port: int, body: bytes) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/ingest", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Retry-After")
    finally:
        conn.close()


@pytest.mark.parametrize("first, second", [(429, 429), (None, 429), (202, 429), (None, 202)],
                         ids=["both-full", "one-dead-one-full", "one-full", "one-dead"])
def test_nginx_conf_never_marks_a_full_gateway_down_and_skips_a_dead_one(tmp_path, first, second):
    upstreams = [_Upstream(first), _Upstream(second)]
    proc, port = start_nginx(tmp_path, [u.port for u in upstreams])
    try:
        bodies = [json.dumps([{"n": i, "pad": "x" * i}]).encode() for i in range(8)]
        answers = [_post(port, body) for body in bodies]
    finally:
        proc.terminate()
        proc.wait(15)
        for u in upstreams:
            u.close()
    if 202 in (first, second):
        # a full gateway's 429 went to the other one, body and all
        assert answers == [(202, None)] * len(bodies)
        ok = next(u for u in upstreams if u.status == 202)
        assert ok.bodies == bodies
    elif first is None:
        # the full gateway's 429, or (when the dead one came last) nginx's own 429: never its 502
        assert {status for status, _ in answers} == {429}, answers
        assert {retry_after for _, retry_after in answers} <= {"7", "1"}, answers
    else:
        # every gateway full: the client gets the 429 and its Retry-After, never nginx's 502
        # "no live upstreams" from gateways marked down for shedding load
        assert answers == [(429, "7")] * len(bodies)
    dead = [u for u in upstreams if u.status is None]
    if dead:
        # marked down after its first failure (max_fails=1 on the first try's upstream); the
        # retry upstream (max_fails=0) may try it again once per request that met a 429
        retries = len(bodies) if 429 in (first, second) else 0
        assert 1 <= dead[0].attempts <= 1 + retries
        if not retries:
            assert dead[0].attempts == 1

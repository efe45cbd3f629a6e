"""The clients of the systems ringgate replaces (shared/seeds), driven as their READMEs drive them."""

from __future__ import annotations

import asyncio
import json
import subprocess

import aiohttp
import requests

from tests.sinkdata import file_sink_records, wait_for


def stored(gw) -> list[dict]:
    return file_sink_records(gw.sink_dir)


def test_multi_storage_gateway_curl(make_gateway):
    """The seed README's curl, against /ingest."""
    gw = make_gateway()
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", f"http://127.0.0.1:{gw.port}/ingest", "-H", "Content-Type: application/json",
         "-d", '{"payload":[{"msg":"hello"},{"msg":"world"}]}', "-w", "\n%{http_code}"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    body, code = out.rsplit("\n", 1)
    assert code == "202" and json.loads(body)["accepted"] == 2, out
    wait_for(lambda: len(stored(gw)) == 2, what="delivery")
    assert sorted(r["msg"] for r in stored(gw)) == ["hello", "world"]


def test_batch_ingestion_api_client(make_gateway):
    """The seed README's aiohttp snippet, then the status URL its client library reads."""
    gw = make_gateway()
    base = f"http://127.0.0.1:{gw.port}"
    events = [
        {
            "event_id": f"evt_{i}",
            "service_name": "user-service",
            "event_type": "user_login",
            "payload": {"user_id": "user_456", "login_method": "email", "success": True},
            "metadata": {"ip_address": "192.168.1.100", "user_agent": "Mozilla/5.0..."},
        }
        for i in range(3)
    ]

    async def client():
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/v1/ingest/batch",
                                    json={"events": events, "batch_id": "my_batch_001", "priority": 5}) as response:
                assert response.status == 202
                result = await response.json()
            batch_id = result["batch_id"]
            assert result["status"] == "accepted" and result["accepted"] == 3
            for _ in range(200):
                async with session.get(f"{base}/v1/batch/{batch_id}/status") as response:
                    status = await response.json()
                if status["status"] == "committed":
                    break
                await asyncio.sleep(0.05)
            async with session.get(f"{base}/v1/health") as response:
                health = response.status
            async with session.get(f"{base}/v1/metrics") as response:
                metrics = await response.text()
            return batch_id, status, health, metrics

    batch_id, status, health, metrics = asyncio.run(client())
    assert status == {"batch_id": batch_id, "status": "committed"}  # the client's own batch_id is not ours
    assert health == 200 and 'ringgate_records_accepted_total{client="anonymous"} 3' in metrics
    assert sorted(r["event_id"] for r in stored(gw)) == ["evt_0", "evt_1", "evt_2"]
    assert stored(gw)[0]["payload"] == events[0]["payload"]


def test_serverless_file_upload(make_gateway):
    """A multipart upload with a `file` field, built by a real HTTP client (requests)."""
    gw = make_gateway()
    url = f"http://127.0.0.1:{gw.port}/file/ingest"
    csv_body = b"id,name,value\n1,Test Item,42\n2,\"Other, item\",7\n"
    resp = requests.post(url, files={"file": ("items.csv", csv_body, "text/csv")}, timeout=30)
    assert resp.status_code == 202 and resp.json()["accepted"] == 2, resp.text
    ndjson_body = b'{"id": 3, "kind": "ndjson"}\n{"id": 4, "kind": "ndjson"}\n'
    resp = requests.post(url, files={"file": ("more.ndjson", ndjson_body, "application/octet-stream")}, timeout=30)
    assert resp.status_code == 202 and resp.json()["accepted"] == 2, resp.text
    resp = requests.post(url, files={"file": ("one.json", b'[{"id": 5}]', "application/json")},
                         data={"note": "a form field beside the file"}, timeout=30)
    assert resp.status_code == 202 and resp.json()["accepted"] == 1, resp.text
    wait_for(lambda: len(stored(gw)) == 5, what="delivery")
    by_id = {str(r["id"]): r for r in stored(gw)}
    assert by_id["1"] == {"id": "1", "name": "Test Item", "value": "42"}  # CSV rows are strings
    assert by_id["2"]["name"] == "Other, item" and by_id["3"]["kind"] == "ndjson" and by_id["5"] == {"id": 5}
    stats = requests.get(f"http://127.0.0.1:{gw.port}/stats", timeout=30).json()
    assert stats["records_accepted"] == 5 and stats["rings"][0]["capacity_bytes"] == 1 << 20
    wait_for(lambda: requests.get(f"http://127.0.0.1:{gw.port}/stats", timeout=30).json()["records_delivered"] == 5)


def test_upload_errors_name_the_problem(make_gateway):
    gw = make_gateway()
    url = f"http://127.0.0.1:{gw.port}/file/ingest"
    resp = requests.post(url, files={"other": ("x.csv", b"a\n1\n", "text/csv")}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"] == "bad_multipart" and "'file'" in resp.json()["detail"]
    resp = requests.post(url, files={"file": ("x.csv", b"a,b\n1\n", "text/csv")}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"] == "bad_csv" and "row 2" in resp.json()["detail"]
    resp = requests.post(url, data=b"a\n1\n", headers={"Content-Type": "text/csv"}, timeout=30)
    assert resp.status_code == 415
    assert stored(gw) == [] and gw.metrics()['ringgate_records_accepted_total{client="anonymous"}'] == 0

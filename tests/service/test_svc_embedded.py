"""Embedded mode: ONE command (python -m api.embedded) runs API + a real Celery worker on kombu's
SQLAlchemy transport + the sweeper with SQLite and local artifacts. The same story end to end,
with the real core, plus a cancel. Needs neither PostgreSQL nor Redis."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time

import httpx
import pytest

from client import GasClient
from svc_helpers import PY, REPO, TINY_BUDGET, TINY_SEARCH, check_download_protocol, free_port, wait_until


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, datasets_root, shared_lut_dir):
    data = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAS_")}
    env.update(GAS_DATASETS_ROOT=str(datasets_root), GAS_LUT_DIR=str(shared_lut_dir), GAS_HEARTBEAT_INTERVAL_S="0.5",
               GAS_PROGRESS_MIN_INTERVAL_S="0.2", OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
    log = open(data / "embedded.log", "wb")
    p = subprocess.Popen([PY, "-m", "api.embedded", "--port", str(port), "--data-dir", str(data)], env=env,
                         cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False
    try:
        wait_until(ready, 60, "embedded service ready", lambda: (data / "embedded.log").read_text()[-2000:])
        wlog = data / "logs" / "worker.log"
        wait_until(lambda: wlog.exists() and b" ready." in wlog.read_bytes(), 60, "embedded worker ready",
                   lambda: wlog.read_text()[-2000:] if wlog.exists() else None)
        text = (data / "embedded.log").read_text()
        keys = re.findall(r"^    (gas_[0-9a-f]{12}_\S+)$", text, re.M)
        assert len(keys) == 1, text[-2000:]  # printed once, at first start
        yield url, data, keys[0]
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def test_embedded_defaults(embedded):
    url, data, key = embedded
    assert (data / "gas.db").is_file() and (data / "broker.db").is_file()  # SQLite DB and serverless broker
    r = httpx.get(url + "/readyz").json()  # readiness needs no key
    assert url.startswith("http://127.0.0.1:")
    r401 = httpx.get(url + "/api/v1/jobs")  # everything else does
    assert r401.status_code == 401 and r401.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(url + "/api/v1/jobs", headers={"X-API-Key": key}).status_code == 200
    assert r["checks"] == {"database": "ok", "broker": "ok"}
    assert "worker.log" in os.listdir(data / "logs") and "sweeper.log" in os.listdir(data / "logs")


def test_embedded_whole_story(embedded, tmp_path):
    url, data, key = embedded
    with GasClient(url, api_key=key) as c:
        ds = c.register_dataset("tiny", "camvid_tiny")["id"]
        job = c.submit_search(ds, settings=TINY_SEARCH, **TINY_BUDGET)
        done = c.wait(job["id"], timeout=240, poll=0.5)
        assert done["status"] == "succeeded", (done, (data / "logs" / "worker.log").read_text()[-3000:])
        assert done["result"]["genotype_id"] and done["result"]["latency_ms"] > 0
        rt = c.submit_retrain(ds, search_job_id=job["id"], settings={"epochs": 1, "batch_size": 2, "dataset_limit": 8,
                                                                     "advanced": {"fps_iters": 5}})
        rdone = c.wait(rt["id"], timeout=240, poll=0.5)
        assert rdone["status"] == "succeeded", rdone
        ck = {a["name"]: a for a in c.artifacts(rt["id"])}["checkpoint.safetensors"]
        path = c.download(rt["id"], "checkpoint.safetensors", tmp_path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == ck["sha256"]
        part = c.http.get(f"/api/v1/jobs/{rt['id']}/artifacts/checkpoint.safetensors", headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == path.read_bytes()[:100]
        # HEAD, ETag/If-None-Match, ranges and 416 on SQLite too (its timestamps come back naive)
        check_download_protocol(c.http, f"/api/v1/jobs/{rt['id']}/artifacts/checkpoint.safetensors",
                                path.read_bytes(), "application/octet-stream")
        report = c.http.get(f"/api/v1/jobs/{rt['id']}/artifacts/report.json").json()
        assert report["kind"] == "retrain"
        # issue 11: the measuring lock works without any server (a file lock in the LUT directory)
        assert [h["phase"] for h in report["device_lock"]["holds"]] == ["fps"]
        search = c.http.get(f"/api/v1/jobs/{job['id']}/artifacts/report.json").json()
        phases = [h["phase"] for h in search["device_lock"]["holds"]]
        assert phases[0] == "latency_table" and "end_to_end" in phases and phases[-1] == "fps", phases
        # issue 9: the report says how the steps ran (search.compile is off by default) and what memory was planned
        assert search["compile"]["requested"] == "off" and search["compile"]["used"] == "eager"
        assert search["memory"]["fallback"] is None and search["memory"]["crop"] == search["search_steps"]["crop"]


def test_embedded_cancel_running_and_queued(embedded):
    url, _, key = embedded
    with GasClient(url, api_key=key) as c:
        ds = c.register_dataset("tiny2", "camvid_tiny")["id"]
        settings = dict(TINY_SEARCH, epochs=30, warmup_epochs=1)
        a = c.submit_search(ds, settings=settings, **TINY_BUDGET)
        b = c.submit_search(ds, settings=TINY_SEARCH, **TINY_BUDGET)
        wait_until(lambda: c.job(a["id"])["status"] == "running", 60, "a running")
        assert c.job(b["id"])["status"] == "queued"
        assert c.cancel(b["id"])["status"] == "cancelled"
        t0 = time.monotonic()
        assert c.cancel(a["id"])["status"] in ("cancelling", "cancelled")
        fin = c.wait(a["id"], timeout=60, poll=0.3)
        assert fin["status"] == "cancelled" and time.monotonic() - t0 < 40

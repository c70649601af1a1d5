"""Issue 10, resources: a job's cost bounded before it is accepted (422 with the estimate), the
wall-clock limit, the job process's memory limit, validation jobs against a per-tenant cap, the
quota checked against an upload's declared size before it streams, stalled uploads, the
per-member compression ratio, fairness between tenants (GAS_TENANT_MAX_RUNNING) and the device
lock. Over HTTP against real stacks (PostgreSQL + Redis + Celery workers; SQLite where it differs)."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import time
import zipfile

import pytest
from sqlalchemy import select

from storage.models import Job
from svc_helpers import (PY, REPO, db_session, fake_search_body, register_tiny, running_stack, wait_dataset,
                         wait_until)

pytestmark = pytest.mark.services
FAKE = json.dumps({"search": "tests.service.fake_core:fake_search"})


# ------------------------------------------------------------------------------- cost caps (422)
def _search(ds: str, **settings) -> dict:
    body = fake_search_body(ds)
    body["settings"].update(settings)
    return body


def _n_jobs(http) -> int:
    return len(http.get("/api/v1/jobs", params={"limit": 200}).json()["items"])


def test_cost_caps_refuse_with_the_estimate(api, dataset_id):
    """Pure computation before the insert (core.cost, torch-free): the same on both databases."""
    http, ds = api, dataset_id
    before = _n_jobs(http)
    # memory: a big batch at a big crop of the default supernet
    big = fake_search_body(ds)
    big["budget"].update(height=2048, width=2048)
    big["settings"].update(batch_size=64, crop_height=2048, crop_width=2048)
    r = http.post("/api/v1/jobs/search", json=big)
    assert r.status_code == 422, r.text
    p = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert p["type"].endswith("/problems/job-too-costly")
    assert "GAS_JOB_MAX_MEMORY_BYTES" in p["detail"] and "batch 64" in p["detail"]
    est = p["estimate"]
    assert est["peak_bytes"] > p["limits"]["memory_bytes"] == 80 * 2**30
    assert est["weight_params"] > 1_000_000 and est["saved_bytes_per_image"] > 0 and est["batch"] == 64
    assert {e["field"] for e in p["errors"]} >= {"settings.batch_size"}
    # compute: many steps of a small search
    long = _search(ds, epochs=1000)
    long["settings"]["advanced"]["search"]["steps_per_epoch"] = 100_000
    long["settings"]["batch_size"] = 8
    r = http.post("/api/v1/jobs/search", json=long)
    assert r.status_code == 422, r.text
    p = r.json()
    assert "GAS_JOB_MAX_PIXEL_PASSES" in p["detail"] and p["estimate"]["image_pixels"] > p["limits"]["pixel_passes"]
    assert [e["field"] for e in p["errors"]] == ["settings.epochs"]
    # benchmark compute, retrain memory (an inline genotype at a huge batch and resolution)
    r = http.post("/api/v1/jobs/benchmark", json={"genotype": _genotype(), "height": 4096, "width": 4096,
                                                   "iters": 100_000})
    assert r.status_code == 422 and "GAS_JOB_MAX_PIXEL_PASSES" in r.json()["detail"], r.text
    r = http.post("/api/v1/jobs/retrain", json={"dataset_id": ds, "genotype": _genotype(),
                                                 "settings": {"batch_size": 256, "height": 4096, "width": 4096,
                                                              "epochs": 1}})
    assert r.status_code == 422 and "GAS_JOB_MAX_MEMORY_BYTES" in r.json()["detail"], r.text
    assert _n_jobs(http) == before  # nothing was created
    # what fits is accepted
    r = http.post("/api/v1/jobs/search", json=_search(ds))
    assert r.status_code == 202, r.text


def _genotype() -> dict:
    """A small valid genotype (3 cells, 2 nodes, reduction at 1)."""
    cell = lambda red: {"reduction": red, "nodes": [[{"input": 0, "op": "sep_conv_3x3"}, {"input": 1, "op": "skip_connect"}],
                                                    [{"input": 1, "op": "conv_3x3"}, {"input": 2, "op": "max_pool_3x3"}]]}
    return {"format": "gas-genotype", "version": 1,
            "ops": ["none", "skip_connect", "max_pool_3x3", "conv_3x3", "sep_conv_3x3"],
            "network": {"num_cells": 3, "reduction_cells": [1], "nodes": 2, "init_channels": 8, "stem_channels": 8,
                        "head_channels": 16},
            "cells": [cell(False), cell(True), cell(False)]}


# ------------------------------------------------------------- a stack with small limits (PostgreSQL)
@pytest.fixture(scope="module")
def limited(tmp_path_factory, datasets_root):
    """Wall-clock limit 20 s, job memory 1.5 GiB, one validation job per tenant, uploads stall after
    2 s, one running job per tenant, two workers (no device lock: the fairness test needs both)."""
    gen = running_stack("limits", tmp_path_factory, datasets_root, None, job_kind_overrides=FAKE,
                        job_max_wall_s=20, job_memory_limit_bytes=int(1.5 * 2**30), quota_validation_jobs=1,
                        upload_idle_timeout_s=2, tenant_max_running=1, device_lock="false")
    stack = next(gen)
    stack.start_worker("worker2")
    ds = register_tiny(stack.http)
    yield stack, ds
    gen.close()


def test_wall_clock_limit_ends_a_long_job(limited):
    stack, ds = limited
    jid = stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds, epochs=100, batch=2)).json()["id"]
    job = stack.wait_status(jid, ("failed", "succeeded"), 60)
    assert job["status"] == "failed", job
    assert "GAS_JOB_MAX_WALL_S" in job["error"] and "20 s" in job["error"], job["error"]
    assert job["attempts"] == 1  # not retried: the limit is a verdict, not a crash
    ev = [e for e in stack.events(jid) if e["type"] == "failed"]
    assert ev and "wall-clock limit" in ev[0]["message"]


def test_the_wall_clock_limit_is_the_jobs_over_its_attempts(limited):
    # 60 epochs x 4 steps x 0.1 s: about 12 s before the crash, 12 s after; each attempt is under the 20 s
    # limit, the two together are over it: the second attempt is stopped, the job is not run twice as long
    stack, ds = limited
    jid = stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds, epochs=60, batch=2, seed=1006)).json()["id"]
    job = stack.wait_status(jid, ("failed", "succeeded"), 90)
    assert job["status"] == "failed" and job["attempts"] == 2, job
    assert "over 2 attempts" in job["error"] and "GAS_JOB_MAX_WALL_S" in job["error"], job["error"]


def test_memory_limit_fails_the_job_not_the_worker(limited):
    stack, ds = limited
    pids = {k: stack.procs[k].pid for k in ("worker", "worker2")}
    jid = stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds, seed=1005)).json()["id"]
    job = stack.wait_status(jid, ("failed", "succeeded"), 60)
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert "out of memory" in job["error"] and "GAS_JOB_MEMORY_LIMIT_BYTES" in job["error"], job["error"]
    assert "1.50 GiB" in job["error"]
    for key, pid in pids.items():  # both workers survived and still run jobs
        assert stack.procs[key].poll() is None and stack.procs[key].pid == pid
    ok = stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds, epochs=1)).json()["id"]
    assert stack.wait_status(ok, ("succeeded", "failed"), 60)["status"] == "succeeded"


def test_validation_jobs_count_against_their_own_cap(limited):
    stack, _ = limited
    key = stack.create_key("validator")
    http = stack.client(key)
    r1 = http.post("/api/v1/datasets", json={"name": "a", "path": "camvid_tiny"})
    assert r1.status_code == 201, r1.text
    r2 = http.post("/api/v1/datasets", json={"name": "b", "path": "camvid_tiny"})
    assert r2.status_code == 429, r2.text  # the first one is still validating
    p = r2.json()
    assert p["quota"] == "validation_jobs" and p["limit"] == 1 and p["used"] == 1
    assert int(r2.headers["retry-after"]) > 0
    assert len(http.get("/api/v1/datasets").json()["items"]) == 1  # nothing half-made
    wait_dataset(http, r1.json()["id"])
    r3 = http.post("/api/v1/datasets", json={"name": "b", "path": "camvid_tiny"})
    assert r3.status_code == 201, r3.text
    wait_dataset(http, r3.json()["id"])


def _raw(stack, head: bytes, body: bytes = b"", read_timeout: float = 20.0) -> tuple[int, dict, float]:
    """Send a hand-made request (headers, then part of a body) and wait for the answer."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", stack.port), timeout=read_timeout) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _clen(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    doc = json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")
    return status, doc, time.monotonic() - t0


def _clen(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def _upload_head(stack, key: str, length: int) -> bytes:
    return (f"POST /api/v1/datasets/uploads?name=x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/zip\r\nContent-Length: {length}\r\n\r\n").encode()


def test_upload_refused_by_declared_size_before_streaming(limited):
    stack, _ = limited
    key = stack.create_key("small-quota")
    subprocess.run([PY, "-m", "api.admin", "tenants", "set-quota", "small-quota", "--max-storage-bytes", "1000000"],
                   env=stack.env, cwd=str(REPO), check=True, capture_output=True)
    status, doc, took = _raw(stack, _upload_head(stack, key, 50_000_000))  # declared, not one byte sent
    assert status == 409, doc
    assert doc["quota"] == "storage_bytes" and doc["declared"] == 50_000_000 and doc["limit"] == 1_000_000
    assert took < 10
    assert not any((stack.base / "data" / "uploads" / ".incoming").glob("*"))


def test_stalled_upload_times_out(limited):
    stack, _ = limited
    incoming = stack.base / "data" / "uploads" / ".incoming"
    status, doc, took = _raw(stack, _upload_head(stack, stack.api_key, 100_000), b"PK\x03\x04" + b"x" * 1000)
    assert status == 408, doc
    assert "GAS_UPLOAD_IDLE_TIMEOUT_S" in doc["detail"] and doc["received_bytes"] == 1004
    assert 1.5 < took < 15
    wait_until(lambda: not any(incoming.glob("*")), 10, "partial upload removed")


def test_one_member_bomb_among_incompressible_files_is_refused(limited):
    stack, _ = limited
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for split in ("train", "val"):
            zf.writestr(f"d/{split}/noise.bin", os.urandom(400_000))
        zf.writestr("d/train/bomb.bin", bytes(40 * 2**20))  # 40 MiB of zeros: ~1000x on its own
    data = buf.getvalue()
    assert (40 * 2**20 + 800_000) / len(data) < 200  # the whole archive's ratio passes
    r = stack.http.post("/api/v1/datasets/uploads", params={"name": "bomb"}, content=data,
                        headers={"Content-Type": "application/zip"})
    assert r.status_code == 422, r.text
    p = r.json()
    assert p["reason"] == "compression_ratio" and "bomb.bin" in p["detail"], p


def _ran(stack, ids) -> dict[str, tuple[float, float]]:
    with db_session(stack) as s:
        return {j.id: tuple(j.result["core"]["ran"]) for j in s.scalars(select(Job).where(Job.id.in_(ids)))}


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_one_tenant_cannot_hold_every_worker(limited):
    """Two workers, GAS_TENANT_MAX_RUNNING=1: tenant A's three jobs run one at a time (the others
    are deferred, not lost), and tenant B's job, submitted after them, runs beside A's first."""
    stack, ds = limited
    key_b = stack.create_key("tenant-b")
    http_b = stack.client(key_b)
    r = http_b.post("/api/v1/datasets", json={"name": "tiny", "path": "camvid_tiny"})
    ds_b = wait_dataset(http_b, r.json()["id"])["id"]
    a = [stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds, epochs=2, steps=5, batch=4)).json()["id"]
         for _ in range(3)]
    b = http_b.post("/api/v1/jobs/search", json=fake_search_body(ds_b, epochs=1, steps=5, batch=2)).json()["id"]
    for jid in a:
        assert stack.wait_status(jid, ("succeeded", "failed"), 120)["status"] == "succeeded"
    wait_until(lambda: http_b.get(f"/api/v1/jobs/{b}").json()["status"] == "succeeded", 60, "tenant B's job")
    ran = _ran(stack, a + [b])
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _overlap(ran[a[i]], ran[a[j]]), ran  # never two of A's at once
    assert any(_overlap(ran[b], ran[x]) for x in a), ran  # B did not wait for A's queue
    deferred = [e for jid in a for e in stack.events(jid) if e["type"] == "deferred"]
    assert deferred and "at once is 1" in deferred[0]["message"]
    with db_session(stack) as s:
        assert all(j.attempts == 1 for j in s.scalars(select(Job).where(Job.id.in_(a))))  # deferral is not an attempt


# ------------------------------------------------------------------------------------ device lock
@pytest.fixture(scope="module")
def two_workers_one_device(tmp_path_factory, datasets_root):
    gen = running_stack("devlock", tmp_path_factory, datasets_root, None, job_kind_overrides=FAKE,
                        tenant_max_running=8)
    stack = next(gen)
    stack.start_worker("worker2")
    yield stack, register_tiny(stack.http)
    gen.close()


def test_one_device_never_runs_two_measuring_jobs(two_workers_one_device):
    """Two workers on one device (the CPU): the second claimed job waits for the device lock
    (event `device_busy`, heart-beating) instead of measuring beside the first."""
    stack, ds = two_workers_one_device
    ids = [stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds, epochs=2, steps=4, batch=2)).json()["id"]
           for _ in range(3)]
    for jid in ids:
        assert stack.wait_status(jid, ("succeeded", "failed"), 120)["status"] == "succeeded"
    ran = _ran(stack, ids)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _overlap(ran[ids[i]], ran[ids[j]]), ran
    with db_session(stack) as s:
        workers = {j.worker_id for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
    busy = [e for jid in ids for e in stack.events(jid) if e["type"] == "device_busy"]
    assert len(workers) == 2 and busy, (workers, busy)  # both workers claimed; one of them waited

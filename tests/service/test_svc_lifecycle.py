"""Job lifecycle against real PostgreSQL, Redis and Celery worker subprocesses, with the fast
test-only fake search (fake_core.py): progress and events, artifacts, cancel in every state,
duplicate delivery, crash retries capped, a SIGKILLed worker resumed from the checkpoint, lost
messages re-enqueued by the sweeper."""
from __future__ import annotations

import hashlib
import signal
import threading
import time
from datetime import timedelta

import pytest
import redis
from sqlalchemy import select

from storage import jobs as sm
from storage.dispatch import send_job
from storage.models import Artifact, FpsReport, Genotype, Job, LatencyTable, new_id, utcnow
from svc_helpers import REDIS_URL, db_session, fake_search_body, register_tiny, settings_of, wait_until

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def stack(fake_stack):
    return fake_stack


@pytest.fixture(scope="module")
def ds(stack):
    return register_tiny(stack.http)


def submit(stack, body) -> str:
    r = stack.http.post("/api/v1/jobs/search", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def drain(stack) -> None:
    """Wait until no job of the stack is queued/running (tests share one worker)."""
    def idle():
        jobs = stack.http.get("/api/v1/jobs", params={"limit": 200}).json()["items"]
        return not [j for j in jobs if j["status"] in ("queued", "running", "cancelling")]
    wait_until(idle, 90, "stack idle")


def types(events) -> list[str]:
    return [e["type"] for e in events]


def test_search_reports_progress_events_artifacts_and_records(stack, ds):
    drain(stack)
    jid = submit(stack, fake_search_body(ds, epochs=3, steps=5, batch=2))
    seen = []

    def running_with_progress():
        j = stack.job(jid)
        if j["status"] == "running" and (j["progress"].get("epoch") or 0) >= 1:
            seen.append(j)
        return j["status"] in sm.TERMINAL or len(seen) >= 2
    wait_until(running_with_progress, 60, "progress while running")
    assert seen, "progress was never visible while running"
    p = seen[0]["progress"]
    assert p["phase"] == "search" and p["epochs"] == 3 and p["steps"] == 5 and p["expected_latency_ms"] == 4.2
    assert "w_loss" in p["metrics"] and seen[0]["attempts"] == 1 and seen[0]["started_at"]
    mid_events = stack.events(jid)
    assert "claimed" in types(mid_events) and "progress" in types(mid_events)

    job = stack.wait_status(jid, "succeeded", 60)
    assert job["result"]["latency_ms"] == 3.0 and job["result"]["budget_met"] is True
    assert job["result"]["fps"] == pytest.approx(333.3) and job["result"]["genotype_id"]
    assert job["finished_at"] >= job["started_at"] and job["attempts"] == 1 and job["error"] is None
    ev = types(stack.events(jid))
    assert ev[0] == "queued" and ev[-1] == "succeeded" and ev.count("claimed") == 1
    assert sum(1 for e in stack.events(jid) if e["message"].startswith("epoch ")) == 3

    arts = {a["name"]: a for a in stack.http.get(f"/api/v1/jobs/{jid}/artifacts").json()["items"]}
    assert set(arts) == {"genotype.json", "report.json"}
    body = stack.http.get(arts["genotype.json"]["url"]).content
    assert hashlib.sha256(body).hexdigest() == arts["genotype.json"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert len(body) == arts["genotype.json"]["size"]
    part = stack.http.get(arts["report.json"]["url"], headers={"Range": "bytes=2-9"})
    assert part.status_code == 206 and part.content == stack.http.get(arts["report.json"]["url"]).content[2:10]
    assert part.headers["content-range"] == f"bytes 2-9/{arts['report.json']['size']}"
    assert stack.http.get(arts["report.json"]["url"], headers={"Range": "bytes=999999-"}).status_code == 416

    with db_session(stack) as s:
        g = s.scalar(select(Genotype).where(Genotype.job_id == jid))
        assert g is not None and g.document["fake"] is True and g.arch_hash
        # the genotype's id is the tenant's first row of this architecture (every fake search of this size
        # writes the same one): one id per architecture, the job's own row keeps its document
        first = s.scalar(select(Genotype).where(Genotype.tenant_id == g.tenant_id, Genotype.arch_hash == g.arch_hash)
                         .order_by(Genotype.created_at, Genotype.id))
        assert job["result"]["genotype_id"] == first.id and first.created_at <= g.created_at
        fps = s.scalar(select(FpsReport).where(FpsReport.job_id == jid))
        assert fps.latency_ms == 3.0 and fps.budget_met is True and fps.height == 64 and fps.width == 96
        lut = s.scalars(select(LatencyTable).where(LatencyTable.device == "fake-device", LatencyTable.height == 64,
                                                   LatencyTable.width == 96)).all()
        assert len(lut) == 1 and lut[0].entries == 2 and lut[0].path.endswith("fake-lut-64x96.json")
        assert s.scalar(select(Artifact).where(Artifact.job_id == jid, Artifact.name == "report.json")).size > 0

    # the same LUT file is reused by the next job: recorded once, not again
    jid2 = submit(stack, fake_search_body(ds, epochs=1, steps=1))
    stack.wait_status(jid2, "succeeded", 60)
    with db_session(stack) as s:
        assert len(s.scalars(select(LatencyTable).where(LatencyTable.device == "fake-device",
                                                        LatencyTable.height == 64)).all()) == 1


def test_cancel_queued_running_and_finished(stack, ds):
    drain(stack)
    a = submit(stack, fake_search_body(ds, epochs=20, steps=5, batch=4))
    stack.wait_status(a, "running", 30)
    b = submit(stack, fake_search_body(ds, epochs=1, steps=1))
    assert stack.job(b)["status"] == "queued"
    r = stack.http.post(f"/api/v1/jobs/{b}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    t0 = time.monotonic()
    r = stack.http.post(f"/api/v1/jobs/{a}/cancel")
    assert r.status_code == 202 and r.json()["status"] in ("cancelling", "cancelled") and r.json()["cancel_requested"]
    ja = stack.wait_status(a, "cancelled", 15)
    assert time.monotonic() - t0 < 3.0, "running job did not stop at a step boundary promptly"
    assert ja["progress"]["epoch"] < 20
    assert any(e["type"] == "cancelled" and "step boundary" in e["message"] for e in stack.events(a))
    for jid in (a, b):  # finished jobs cannot be cancelled again
        r = stack.http.post(f"/api/v1/jobs/{jid}/cancel")
        assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
    # b's message is still delivered later: the claim fails and nothing runs
    wait_until(lambda: "duplicate_delivery" in types(stack.events(b)), 30, "b's stale delivery")
    jb = stack.job(b)
    assert jb["status"] == "cancelled" and jb["attempts"] == 0 and jb["started_at"] is None


def test_cancel_ignored_is_killed_after_grace(stack, ds):
    drain(stack)
    jid = submit(stack, fake_search_body(ds, epochs=50, steps=5, batch=2, seed=1001))
    stack.wait_status(jid, "running", 30)
    t0 = time.monotonic()
    assert stack.http.post(f"/api/v1/jobs/{jid}/cancel").status_code == 202
    r = stack.http.post(f"/api/v1/jobs/{jid}/cancel")  # cancelling again is accepted, changes nothing
    assert r.status_code == 202 and r.json()["status"] == "cancelling"
    job = stack.wait_status(jid, "cancelled", 20)
    grace = float(stack.env["GAS_CANCEL_GRACE_S"])
    assert time.monotonic() - t0 >= grace - 0.5
    assert any("killed after" in e["message"] for e in stack.events(jid))
    assert job["attempts"] == 1


def test_core_error_fails_without_retry(stack, ds):
    drain(stack)
    jid = submit(stack, fake_search_body(ds, seed=1003))
    job = stack.wait_status(jid, "failed", 30)
    assert job["attempts"] == 1 and "ValueError: fake failure" in job["error"]


def test_child_crash_is_retried_then_capped(stack, ds):
    drain(stack)
    jid = submit(stack, fake_search_body(ds, seed=1002))
    job = stack.wait_status(jid, "failed", 60)
    assert job["attempts"] == job["max_attempts"] == 3
    assert "3 attempt(s)" in job["error"] and "code -9" in job["error"]
    ev = types(stack.events(jid))
    assert ev.count("claimed") == 3 and ev.count("reclaimed") == 2


def test_duplicate_delivery_does_nothing(stack, ds):
    drain(stack)
    st = settings_of(stack)
    extra = stack.start_worker("worker2")  # a second worker receives the duplicate while the first runs the job
    try:
        jid = submit(stack, fake_search_body(ds, epochs=6, steps=5, batch=2))
        stack.wait_status(jid, "running", 30)
        assert send_job(st.broker, st.queue_name, st.broker_key_prefix, jid)
        wait_until(lambda: "duplicate_delivery" in types(stack.events(jid)), 30, "duplicate seen by 2nd worker")
        dup = [e for e in stack.events(jid) if e["type"] == "duplicate_delivery"][0]
        assert dup["data"]["status"] == "running"
        job = stack.wait_status(jid, "succeeded", 60)
        assert job["attempts"] == 1
        finished, n_art = job["finished_at"], len(stack.http.get(f"/api/v1/jobs/{jid}/artifacts").json()["items"])
        # and after it finished
        assert send_job(st.broker, st.queue_name, st.broker_key_prefix, jid)
        wait_until(lambda: types(stack.events(jid)).count("duplicate_delivery") == 2, 30, "2nd duplicate")
        job = stack.job(jid)
        assert job["status"] == "succeeded" and job["attempts"] == 1 and job["finished_at"] == finished
        assert types(stack.events(jid)).count("claimed") == 1
        assert len(stack.http.get(f"/api/v1/jobs/{jid}/artifacts").json()["items"]) == n_art
    finally:
        stack.stop_worker(key="worker2")
    assert extra.returncode is not None


def test_concurrent_claims_have_one_winner(stack, ds):
    drain(stack)
    jid = submit(stack, fake_search_body(ds, epochs=1, steps=1))
    stack.wait_status(jid, "succeeded", 30)
    with db_session(stack) as s:  # a fresh queued row, never dispatched
        src = s.get(Job, jid)
        row = Job(id=new_id(), kind="search", status="queued", spec=src.spec, request={}, max_attempts=3,
                  created_at=utcnow())
        s.add(row)
        s.commit()
        rid = row.id
    results, barrier = [], threading.Barrier(4)

    def claimer(i):
        with db_session(stack) as s:
            barrier.wait()
            results.append(sm.claim(s, rid, f"test-{i}"))
    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=lambda x: x or 0) == [None, None, None, 1]
    with db_session(stack) as s:
        assert s.get(Job, rid).attempts == 1
        # a write fenced by a stale attempt number does nothing
        assert sm.heartbeat(s, rid, 0) is None
        assert sm.finish(s, rid, 1, sm.CANCELLED, message="test cleanup")


def test_worker_sigkill_midrun_resumes_from_checkpoint(stack, ds):
    drain(stack)
    jid = submit(stack, fake_search_body(ds, epochs=6, steps=4, batch=4))
    wait_until(lambda: (stack.job(jid)["progress"].get("epoch") or 0) >= 3, 60, "epoch 3 running")
    stack.stop_worker(signal.SIGKILL)
    t_kill = time.monotonic()
    job = stack.wait_status(jid, "queued", 30)  # the sweeper reclaims it once the heartbeat is stale
    assert time.monotonic() - t_kill >= float(stack.env["GAS_HEARTBEAT_TIMEOUT_S"]) - 1.5
    assert job["attempts"] == 1
    stack.start_worker()
    job = stack.wait_status(jid, "succeeded", 60)
    assert job["attempts"] == 2
    report = stack.http.get(f"/api/v1/jobs/{jid}/artifacts/report.json").json()
    assert report["resumed_from_epoch"] >= 2
    ev = stack.events(jid)
    assert "reclaimed" in types(ev) and types(ev).count("claimed") == 2
    resumed = [e for e in ev if e["attempt"] == 2 and e["type"] == "progress" and "starting at epoch" in e["message"]]
    assert resumed and int(resumed[0]["message"].rsplit(" ", 1)[1]) >= 3


def test_lost_message_is_reenqueued_by_the_sweeper(stack, ds):
    drain(stack)
    stack.stop_worker()
    st = settings_of(stack)
    jid = submit(stack, fake_search_body(ds, epochs=1, steps=2))
    r = redis.Redis.from_url(REDIS_URL)
    qkey = f"{st.broker_key_prefix}{st.queue_name}"
    assert r.llen(qkey) >= 1
    r.delete(qkey)  # the broker lost the message (e.g. a Redis restart without persistence)
    r.close()
    stack.start_worker()
    time.sleep(1.5)
    assert stack.job(jid)["status"] == "queued"  # nothing woke a worker yet
    job = stack.wait_status(jid, "succeeded", 40)
    assert any(e["type"] == "dispatched" and "sweeper" in e["message"] for e in stack.events(jid))
    assert job["attempts"] == 1


def test_job_committed_but_never_enqueued_is_run(stack, ds):
    """The API died between commit and enqueue: the row alone is enough."""
    drain(stack)
    with db_session(stack) as s:
        src = s.scalar(select(Job).where(Job.status == "succeeded", Job.kind == "search"))
        row = Job(id=new_id(), kind="search", status="queued", spec=src.spec, request={}, max_attempts=3,
                  created_at=utcnow() - timedelta(seconds=60))
        s.add(row)
        s.commit()
        rid = row.id
    job = stack.wait_status(rid, "succeeded", 40)
    assert job["attempts"] == 1


def test_job_of_unknown_kind_fails_with_the_reason(stack, ds):
    drain(stack)
    st = settings_of(stack)
    with db_session(stack) as s:
        row = Job(id=new_id(), kind="teleport", status="queued", spec={}, request={}, max_attempts=3)
        s.add(row)
        s.commit()
        rid = row.id
    assert send_job(st.broker, st.queue_name, st.broker_key_prefix, rid)
    job = stack.wait_status(rid, "failed", 30)
    assert job["attempts"] == 1 and "could not start the job" in job["error"] and "teleport" in job["error"]


def test_api_and_worker_parent_processes_never_load_torch(stack, ds):
    """After serving and running jobs, neither the API process nor the Celery worker parent has torch
    mapped (the core, and CUDA with it, only ever lives in the per-attempt child process)."""
    drain(stack)
    jid = submit(stack, fake_search_body(ds, epochs=1, steps=1))
    stack.wait_status(jid, "succeeded", 30)
    for key in ("api", "worker"):
        proc = stack.procs[key]
        assert proc.poll() is None, key
        maps = open(f"/proc/{proc.pid}/maps").read()
        assert "libtorch" not in maps and "libc10" not in maps, f"{key} process loaded torch"

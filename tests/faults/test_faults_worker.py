"""Worker faults: a REAL core search whose worker is SIGKILLed five times in a row, a planted pickle
checkpoint, a job that always takes its worker down, and the API killed between commit and enqueue."""
from __future__ import annotations

import copy
import re
import signal
import subprocess
import threading
import time
import uuid

import httpx
import torch
from sqlalchemy import select

from storage.models import Artifact, Genotype, Job
from svc_helpers import (PY, REPO, TINY_BUDGET, TINY_SEARCH, db_session, fake_search_body, free_port,
                         register_tiny, wait_until)

from infra import BlackHole, wait_dead

DONE = re.compile(r"^epoch (\d+)/(\d+) done$")


def all_events(stack, jid: str) -> list[dict]:
    out, after = [], 0
    while True:
        page = stack.http.get(f"/api/v1/jobs/{jid}/events", params={"after": after, "limit": 200}).json()
        out += page["items"]
        if not page["items"]:
            return out
        after = page["next_after"]


def done_epochs(events: list[dict], attempt: int) -> list[int]:
    return [int(m.group(1)) for e in events if e["attempt"] == attempt and e["type"] == "progress"
            and (m := DONE.match(e["message"] or ""))]


def first_epoch(events: list[dict], attempt: int) -> int | None:
    for e in events:
        d = e.get("data") or {}
        if e["attempt"] == attempt and e["type"] == "progress" and d.get("phase") in ("warmup", "search") and d.get("epoch"):
            return int(d["epoch"])
    return None


def test_real_search_survives_five_worker_sigkills(real_faults_stack, ledger):
    """SIGKILL the worker mid-search 5 times in a row (each time after the attempt finished at least
    one epoch of its own): the job finishes, every attempt resumed from the last checkpoint."""
    stack = real_faults_stack
    ds = register_tiny(stack.http)
    settings = copy.deepcopy(TINY_SEARCH)
    epochs = 10
    settings.update(epochs=epochs, warmup_epochs=1)
    r = stack.http.post("/api/v1/jobs/search", json={"dataset_id": ds, "budget": TINY_BUDGET, "settings": settings})
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    kills, killed_after = 5, []
    for attempt in range(1, kills + 1):
        before = max(killed_after, default=0)

        def advanced():
            job = stack.job(jid)
            assert job["status"] in ("queued", "running"), job
            return job["attempts"] == attempt and any(n > before for n in done_epochs(all_events(stack, jid), attempt))
        wait_until(advanced, 240, f"attempt {attempt} past a new epoch", lambda: stack.job(jid))
        stack.stop_worker(signal.SIGKILL)
        killed_after.append(max(done_epochs(all_events(stack, jid), attempt)))
        stack.start_worker()  # a fresh worker; the sweeper reclaims the job once its heartbeat is stale
    job = stack.wait_status(jid, ("succeeded", "failed"), 300)
    assert job["status"] == "succeeded", (job, stack.log_tail("worker"))
    assert job["attempts"] == kills + 1
    ev = all_events(stack, jid)
    types = [e["type"] for e in ev]
    assert types.count("claimed") == kills + 1 and types.count("reclaimed") == kills
    # an attempt killed after the last epoch (during derivation and measurement) leaves its successor no
    # epoch to run: it starts "after" the last one
    starts = [first_epoch(ev, a) or epochs + 1 for a in range(1, kills + 2)]
    assert starts[0] == 1
    for a in range(2, kills + 2):  # attempt a starts right after the checkpoint attempt a-1 left
        resumed_from = starts[a - 1] - 1
        assert killed_after[a - 2] <= resumed_from <= killed_after[a - 2] + 1, (a, starts, killed_after)
    assert starts == sorted(starts) and len(set(starts[:-1])) == len(starts) - 1
    report = stack.http.get(f"/api/v1/jobs/{jid}/artifacts/report.json").json()
    assert report["resumed_from_epoch"] == starts[-1] - 1
    assert max(n for a in range(1, kills + 2) for n in done_epochs(ev, a)) == epochs
    with db_session(stack) as s:  # nothing lost: the finished job has its genotype and artifacts
        assert s.scalar(select(Genotype).where(Genotype.job_id == jid)) is not None
        assert {a.name for a in s.scalars(select(Artifact).where(Artifact.job_id == jid))} >= {"genotype.json", "report.json"}
        row = s.get(Job, jid)
        assert row.status == "succeeded" and row.error is None
    ledger(faults=kills, jobs=1, finished=1, lost=0, attempts=job["attempts"], first_epoch_per_attempt=starts,
           killed_after_epoch=killed_after)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_checkpoint_is_refused_when_resuming(real_faults_stack, tmp_path, ledger):
    """A malicious state/search.pt planted in a job's work dir between two attempts: the resuming
    attempt refuses it (weights-only load), the job fails with the reason, the payload never ran."""
    stack = real_faults_stack
    ds = register_tiny(stack.http)
    settings = copy.deepcopy(TINY_SEARCH)
    settings.update(epochs=4, warmup_epochs=1)
    jid = stack.http.post("/api/v1/jobs/search", json={"dataset_id": ds, "budget": TINY_BUDGET,
                                                        "settings": settings}).json()["id"]
    wait_until(lambda: done_epochs(all_events(stack, jid), 1), 240, "first checkpoint", lambda: stack.job(jid))
    stack.stop_worker(signal.SIGKILL)
    stack.wait_status(jid, "queued", 30)  # reclaimed: the old attempt's child is long gone
    marker = tmp_path / "pwned"
    state = stack.base / "data" / "work" / jid / "state" / "search.pt"
    assert state.is_file()
    torch.save({"version": 1, "epoch": 1, "evil": _Payload(str(marker))}, state)
    stack.start_worker()
    job = stack.wait_status(jid, ("failed", "succeeded"), 180)
    assert job["status"] == "failed" and "Unpickling" in job["error"], job
    assert job["attempts"] == 2
    assert not marker.exists()
    ledger(faults=2, jobs=1, finished=1, lost=0, note="SIGKILL + planted pickle: refused, payload never ran")


def test_job_that_always_kills_its_worker_ends_failed_at_the_cap(fake_faults_stack, ledger):
    """Seed 1004: the job SIGKILLs its Celery worker (and itself) in every attempt. The test plays
    the supervisor that restarts dead workers. After GAS_MAX_ATTEMPTS the sweeper fails it with the
    reason; a job submitted behind it still runs. Seed 1002 (only the job's child dies) as well."""
    stack = fake_faults_stack
    ds = register_tiny(stack.http)
    crasher = stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds, seed=1004)).json()["id"]
    bystander = stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds, epochs=1, steps=2)).json()["id"]
    worker_deaths = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = stack.job(crasher)
        if job["status"] == "failed":
            break
        p = stack.procs.get("worker")
        if p is not None and p.poll() is not None:  # the supervisor's part: restart a dead worker
            assert p.returncode == -signal.SIGKILL
            worker_deaths += 1
            stack.procs.pop("worker")
            stack.start_worker()
        time.sleep(0.3)
    job = stack.job(crasher)
    assert job["status"] == "failed", job
    assert job["attempts"] == job["max_attempts"] == 3
    assert "failed after 3 attempt(s)" in job["error"] and "stopped heart-beating" in job["error"], job["error"]
    assert worker_deaths == 3
    if stack.procs["worker"].poll() is not None:
        stack.procs.pop("worker")
        stack.start_worker()
    assert stack.wait_status(bystander, "succeeded", 60)["attempts"] >= 1
    child = stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds, seed=1002)).json()["id"]
    cj = stack.wait_status(child, "failed", 60)
    assert cj["attempts"] == 3 and "code -9" in cj["error"], cj
    ledger(faults=worker_deaths + 3, jobs=3, finished=3, lost=0,
           failed_with_reason=[job["error"][:80], cj["error"][:80]])


def test_api_killed_between_commit_and_enqueue(fake_faults_stack, ledger):
    """A second API process publishes to a broker that never answers; it is SIGKILLed the moment
    the job row is committed (before any message exists). The sweeper gets each job running, and a
    retry of the POST with the same Idempotency-Key returns the same job."""
    stack = fake_faults_stack
    ds = register_tiny(stack.http)
    hole = BlackHole()
    env = dict(stack.env, GAS_BROKER_URL=f"redis://127.0.0.1:{hole.port}/13")
    kills, ids = 3, []
    try:
        for i in range(kills):
            port = free_port()
            api = subprocess.Popen([PY, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1",
                                    "--port", str(port), "--log-level", "warning"], env=env, cwd=str(REPO),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}"

            def up():
                try:
                    return httpx.get(url + "/healthz", timeout=2).status_code == 200
                except httpx.TransportError:
                    return False
            wait_until(up, 30, "doomed API up")
            key = f"doomed-{uuid.uuid4()}"
            body = fake_search_body(ds, epochs=1, steps=2)
            answer: dict = {}

            def post():
                try:
                    answer["r"] = httpx.post(url + "/api/v1/jobs/search", json=body, timeout=30,
                                             headers={"Authorization": f"Bearer {stack.api_key}", "Idempotency-Key": key})
                except httpx.TransportError as exc:
                    answer["error"] = exc
            t = threading.Thread(target=post)
            t.start()

            def committed():
                with db_session(stack) as s:
                    return s.scalar(select(Job).where(Job.idempotency_key == key))
            wait_until(committed, 10, "job row committed")
            api.send_signal(signal.SIGKILL)
            wait_dead(api)
            t.join(30)
            assert "r" not in answer, "the doomed API answered; it should have died first"
            row = committed()
            assert row.status == "queued" and row.dispatched_at is None and row.dispatch_count == 0
            done = stack.wait_status(row.id, "succeeded", 60)
            assert done["attempts"] == 1
            assert any(e["type"] == "dispatched" and "sweeper" in e["message"] for e in stack.events(row.id))
            again = stack.http.post("/api/v1/jobs/search", json=body, headers={"Idempotency-Key": key})
            assert again.status_code == 202 and again.json()["id"] == row.id
            assert again.headers["idempotent-replayed"] == "true"
            ids.append(row.id)
    finally:
        hole.close()
    with db_session(stack) as s:
        for jid in ids:
            assert s.get(Job, jid).status == "succeeded"
    ledger(faults=kills, jobs=kills, finished=kills, lost=0)

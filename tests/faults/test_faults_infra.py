"""Infrastructure faults on a Redis and a PostgreSQL of the test's own (never the machine's):
Redis crashes (no persistence) with jobs queued and running; PostgreSQL restarts during a run; the
disk fills up while a real search writes its checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from sqlalchemy import select

from storage.models import Job
from svc_helpers import (PY, REPO, TINY_BUDGET, db_session, drop_pg_db, fake_search_body, make_stack,
                         redis_cleanup, register_tiny, wait_until)

from infra import OwnPostgres, OwnRedis

FAKE = json.dumps({"search": "tests.service.fake_core:fake_search",
                       "feasibility": "tests.service.fake_core:fake_feasibility"})


def _statuses(stack, ids) -> dict[str, int]:
    out: dict[str, int] = {}
    with db_session(stack) as s:
        for j in s.scalars(select(Job).where(Job.id.in_(ids))):
            out[j.status] = out.get(j.status, 0) + 1
    return out


@pytest.fixture
def redis_stack(tmp_path_factory, datasets_root):
    red = OwnRedis()
    red.start()
    stack, db_name, prefix = make_stack("redisfault", tmp_path_factory, datasets_root, None, job_kind_overrides=FAKE,
                                        broker_url=red.url)
    try:
        stack.start_worker("worker")
        stack.start_worker("worker2")
        stack.start_sweeper()
        yield stack, red
    finally:
        stack.stop()
        drop_pg_db(db_name)
        red.stop()


def test_redis_crash_with_jobs_queued_and_running(redis_stack, ledger):
    """Two workers, ten jobs; Redis is SIGKILLed (every queued and unacked message lost) and
    restarted twice while jobs run and wait, and jobs are submitted while it is down. Every job
    finishes exactly once; the same two worker processes reconnect and keep working."""
    stack, red = redis_stack
    ds = register_tiny(stack.http)
    body = fake_search_body(ds, epochs=3, steps=4, batch=2)
    ids = [stack.http.post("/api/v1/jobs/search", json=body).json()["id"] for _ in range(8)]
    pids = {k: stack.procs[k].pid for k in ("worker", "worker2")}
    crashes = 0
    for _ in range(2):
        wait_until(lambda: _statuses(stack, ids).get("running", 0) >= 1, 60, "a job running", lambda: _statuses(stack, ids))
        st = _statuses(stack, ids)
        assert st.get("queued", 0) >= 1 or crashes, st  # jobs are queued and running when Redis dies
        red.kill()
        crashes += 1
        t0 = time.monotonic()
        r = stack.http.post("/api/v1/jobs/search", json=body)  # accepted while the broker is down
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
        assert time.monotonic() - t0 < 15
        time.sleep(2)
        red.start()
    wait_until(lambda: _statuses(stack, ids) == {"succeeded": len(ids)}, 180, "every job succeeded",
               lambda: (_statuses(stack, ids), stack.log_tail("worker", 1500)))
    with db_session(stack) as s:
        rows = s.scalars(select(Job).where(Job.id.in_(ids))).all()
        assert all(j.attempts == 1 and j.error is None for j in rows), [(j.id, j.attempts, j.error) for j in rows]
        workers = {j.worker_id.rsplit(":", 1)[1] for j in rows}
    for key, pid in pids.items():  # the same worker processes reconnected; none was restarted
        assert stack.procs[key].pid == pid and stack.procs[key].poll() is None, key
    assert workers <= {str(p) for p in pids.values()}
    redispatched = sum(1 for jid in ids for e in stack.events(jid) if e["type"] == "dispatched")
    ledger(faults=crashes, jobs=len(ids), finished=len(ids), lost=0, sweeper_redispatches=redispatched)


@pytest.fixture
def pg_stack(tmp_path_factory, datasets_root):
    pg = OwnPostgres()
    pg.start()
    url = pg.create_db()
    stack, db_name, prefix = make_stack("pgfault", tmp_path_factory, datasets_root, None, job_kind_overrides=FAKE,
                                        database_url=url, heartbeat_timeout_s=30)
    try:
        stack.start_worker()
        stack.start_sweeper()
        yield stack, pg
    finally:
        stack.stop()
        pg.destroy()
        drop_pg_db(db_name)
        redis_cleanup(prefix)


def test_postgres_restart_during_a_run(pg_stack, ledger):
    """PostgreSQL stops for ~8 s while a job runs and three wait: /readyz answers 503 naming the
    database, requests answer 503 (not 500), the worker's heartbeat writes fail and it keeps the job;
    after the restart the API recovers and every job finishes, the running one on its first attempt."""
    stack, pg = pg_stack
    ds = register_tiny(stack.http)
    long = stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds, epochs=40, steps=4, batch=2)).json()["id"]
    waiting = [stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds, epochs=1, steps=2)).json()["id"]
               for _ in range(3)]
    wait_until(lambda: (stack.job(long)["progress"].get("epoch") or 0) >= 2, 60, "long job running")
    pg.stop()
    t_down = time.monotonic()
    r = stack.http.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["database"].startswith("down"), r.text
    assert r.json()["checks"]["broker"] == "ok"
    r = stack.http.get(f"/api/v1/jobs/{long}")
    assert r.status_code == 503 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert "retry-after" in r.headers
    assert stack.http.get("/api/v1/jobs").status_code == 503
    time.sleep(max(0.0, 8 - (time.monotonic() - t_down)))
    pg.start()
    outage = time.monotonic() - t_down
    wait_until(lambda: stack.http.get("/readyz").status_code == 200, 30, "ready again")
    wait_until(lambda: stack.http.get(f"/api/v1/jobs/{long}").status_code == 200, 30, "API answers again")
    ids = [long, *waiting]
    wait_until(lambda: _statuses(stack, ids) == {"succeeded": 4}, 120, "every job succeeded", lambda: _statuses(stack, ids))
    with db_session(stack) as s:
        assert s.get(Job, long).attempts == 1  # survived the failed heartbeat writes, never reclaimed
    assert "heartbeat failed" in stack.log_tail("worker", 200_000) or "write failed" in stack.log_tail("worker", 200_000)
    for key in ("api", "worker", "sweeper"):
        assert stack.procs[key].poll() is None, key
    assert not any(e["type"] == "reclaimed" for e in stack.events(long))
    ledger(faults=1, jobs=4, finished=4, lost=0, outage_s=round(outage, 1))


SEARCH_SCRIPT = r"""
import json, resource, signal, sys
from core.jobs import Cancelled, run_search
spec, workdir, lut, limit, stop_after = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if limit:  # the disk is full for this process: any write past `limit` bytes fails (EFBIG)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
done = []
def progress(ev):
    if str(ev.get("message", "")).endswith("done"):
        done.append(ev["epoch"])
try:
    out = run_search(spec, workdir, progress=progress, should_cancel=lambda: stop_after and len(done) >= stop_after,
                     lut_dir=lut)
    print(json.dumps({"ok": True, "done": done}))
except Cancelled:
    print(json.dumps({"ok": False, "error": "cancelled", "done": done}))
except OSError as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}", "errno": exc.errno, "done": done}))
"""


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(datasets_root, fault_lut_dir, tmp_path, ledger):
    """A real search checkpoints epoch 1 and stops; it is resumed with the file size limit set below
    the checkpoint's size, so writing the epoch-2 checkpoint fails (EFBIG, as on a full disk). The
    epoch-1 checkpoint is intact and loadable, no temp file is left, and a third run resumes from it."""
    from core.checkpoint import TMP_PREFIX, load_state
    from core.specs import DatasetRef, LatencyConfig, NetworkConfig, SearchConfig, SearchJobSpec

    spec = SearchJobSpec(
        dataset=DatasetRef(root=str(datasets_root / "camvid_tiny"), layout="camvid", limit=8),
        network=NetworkConfig(num_cells=3, reduction_cells=[1], nodes=2, init_channels=8, stem_channels=8,
                              head_channels=16),
        latency=LatencyConfig(budget_ms=TINY_BUDGET["latency_ms"], height=TINY_BUDGET["height"],
                              width=TINY_BUDGET["width"], repeats=3, warmup_runs=1),
        search=SearchConfig(epochs=3, warmup_epochs=1, batch_size=2, seed=0), fps_iters=5).model_dump(mode="json")
    work = tmp_path / "job"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")

    def run(limit: int, stop_after: int) -> dict:
        p = subprocess.run([PY, "-c", SEARCH_SCRIPT, json.dumps(spec), str(work), str(fault_lut_dir), str(limit),
                            str(stop_after)], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    first = run(0, 1)
    assert first == {"ok": False, "error": "cancelled", "done": [1]}, first
    state = work / "state" / "search.pt"
    good = state.read_bytes()
    assert load_state(state)["epoch"] == 1
    full = run(len(good) - 1, 0)  # room for every small file, not for a whole checkpoint
    assert full["ok"] is False and full["errno"] == 27 and full["done"] == [], full  # EFBIG while saving epoch 2
    assert state.read_bytes() == good and load_state(state)["epoch"] == 1
    assert not [p.name for p in state.parent.iterdir() if p.name.startswith(TMP_PREFIX)]
    last = run(0, 0)
    assert last["ok"] is True and last["done"] == [2, 3], last  # epochs 2 and 3 only: resumed from epoch 1
    assert json.loads((work / "artifacts" / "report.json").read_text())["resumed_from_epoch"] == 1
    ledger(faults=1, jobs=1, finished=1, lost=0, note="EFBIG while checkpointing epoch 2; resumed from epoch 1")

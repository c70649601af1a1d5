"""One delivery of a job message: claim (fenced by attempt), supervise the child, finish."""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy.exc import OperationalError

from storage import jobs as sm
from storage.artifacts import get_store
from storage.datasets import VALIDATE_KIND, apply_validation
from storage.db import get_sessionmaker
from storage.dispatch import send_job
from storage.models import Job
from storage.settings import ServiceSettings

PROGRESS_ONLY_IN_EVENTS = ("op_probs", "alphas")  # per-epoch arrays: in the epoch-end event, not in the job row

from . import record
from .kinds import target_for

log = logging.getLogger("gas.worker")
REPO_ROOT = Path(__file__).resolve().parent.parent


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Child:
    """The supervised child process of one attempt."""

    def __init__(self, job_msg: dict, log_path: Path):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.log_file = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.child"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log_file, env=env, cwd=str(REPO_ROOT),
                                     start_new_session=True)
        self.lines: queue.Queue[dict | None] = queue.Queue()
        self._send(json.dumps(job_msg))
        threading.Thread(target=self._read, daemon=True).start()

    def _send(self, line: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            log.info("child stdin closed (%s)", exc)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.lines.put(json.loads(raw))
            except ValueError:
                log.warning("bad protocol line from child: %r", raw[:200])
        self.lines.put(None)

    def cancel(self) -> None:
        self._send("cancel")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self.log_file.close()


def run_job(job_id: str, settings: ServiceSettings) -> str:
    """Handle one delivery; returns what happened (for logs and tests)."""
    Session = get_sessionmaker(settings.db_url, settings.db_pool_size)
    wid = worker_id()
    with Session() as s:
        attempt = sm.claim(s, job_id, wid)
        if attempt is None:
            job = s.get(Job, job_id)
            if job is not None:
                sm.add_event(s, job, "duplicate_delivery",
                             f"delivery ignored by {wid}: job is {job.status} (attempt {job.attempts})",
                             {"worker": wid, "status": job.status})
                s.commit()
            log.info("job %s not claimable (duplicate delivery or gone)", job_id)
            return "not-claimed"
        job = s.get(Job, job_id)
        kind, spec, tenant = job.kind, job.spec, job.tenant_id
    workdir = settings.work_path / job_id
    try:
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        msg = dict(kind=kind, target=target_for(kind, settings.kind_overrides()), spec=spec, workdir=str(workdir),
                   lut_dir=str(settings.lut_path), data_cache_dir=str(settings.cache_path),
                   orphan_grace_s=settings.cancel_grace_s)
        child = Child(msg, workdir / "logs" / f"attempt-{attempt}.log")
    except Exception as exc:  # noqa: BLE001 - cannot even start the job: it fails with the reason
        log.exception("job %s: could not start attempt %d", job_id, attempt)
        with Session() as s:
            sm.finish(s, job_id, attempt, sm.FAILED, error=f"could not start the job: {type(exc).__name__}: {exc}")
        return "failed-to-start"
    try:
        return _supervise(Session, settings, job_id, attempt, child, workdir, tenant)
    except BaseException:
        # supervision broke (e.g. the database is gone for good): stop the child so that no orphan
        # holds the GPU; the heartbeat stops and the sweeper hands the job to the next attempt.
        child.kill()
        raise
    finally:
        child.close()


def _supervise(Session, settings: ServiceSettings, job_id: str, attempt: int, child: Child, workdir: Path,
               tenant: str) -> str:
    progress: dict = {}
    last_written = 0.0
    last_beat = time.monotonic()
    cancel_sent: float | None = None
    outcome: dict | None = None
    dirty = False
    while True:
        try:
            item = child.lines.get(timeout=0.2)
        except queue.Empty:
            item = ...
        now = time.monotonic()
        if item is None:  # child closed its protocol stream: it is exiting
            break
        if isinstance(item, dict):
            if item.get("t") == "progress":
                ev = item.get("event") or {}
                milestone = (ev.get("phase") != progress.get("phase") or ev.get("epoch") != progress.get("epoch")
                             or bool(ev.get("message")))
                # the per-edge α' of an epoch end goes into that epoch's event (the dashboard's live heatmap),
                # not into the job row's progress, which every poll reads
                progress = {k: v for k, v in ev.items() if k not in PROGRESS_ONLY_IN_EVENTS} | {"attempt": attempt}
                if "op_probs" in ev:
                    progress["has_op_probs"] = True
                dirty = True
                if milestone:
                    try:
                        with Session() as s:
                            if sm.heartbeat(s, job_id, attempt, progress) is None:
                                child.kill()
                                return "lost-lease"
                            sm.add_event(s, job_id, "progress", ev.get("message") or
                                         f"{ev.get('phase', '')} epoch {ev.get('epoch', '')}/{ev.get('epochs', '')}".strip(),
                                         progress | ({"alphas": ev["alphas"]} if "alphas" in ev else {}),
                                         attempt=attempt, tenant_id=tenant)
                            s.commit()
                        last_written = last_beat = now
                        dirty = False
                    except OperationalError as exc:  # keep the progress dirty; the next beat retries
                        log.warning("job %s: progress write failed (%s)", job_id, str(exc).splitlines()[0])
            else:
                outcome = item
        # periodic: progress flush, heartbeat, cancel poll
        if (dirty and now - last_written >= settings.progress_min_interval_s) or now - last_beat >= settings.heartbeat_interval_s:
            try:
                with Session() as s:
                    status = sm.heartbeat(s, job_id, attempt, progress if dirty else None)
            except OperationalError as exc:  # database briefly unreachable: the job keeps running
                log.warning("job %s: heartbeat failed (%s); retrying", job_id, str(exc).splitlines()[0])
                last_beat = now
                continue
            last_beat = now
            if dirty:
                last_written, dirty = now, False
            if status is None:
                log.warning("job %s attempt %d lost its lease; killing the child", job_id, attempt)
                child.kill()
                return "lost-lease"
            if status == sm.CANCELLING and cancel_sent is None:
                child.cancel()
                cancel_sent = now
        if cancel_sent is not None and now - cancel_sent > settings.cancel_grace_s and child.proc.poll() is None:
            child.kill()
            with Session() as s:
                sm.finish(s, job_id, attempt, sm.CANCELLED, progress=progress or None,
                          message=f"killed after the {settings.cancel_grace_s:g}s cancel grace period")
            return "cancelled-killed"
    rc = child.proc.wait()
    if outcome is None:
        reason = f"job process exited with code {rc} without a result"
        with Session() as s:
            new = sm.release_for_retry(s, job_id, attempt, reason)
        if new == sm.QUEUED:
            _dispatch(settings, job_id)
        return f"crashed->{new}"
    with Session() as s:
        if outcome["t"] == "cancelled":
            sm.finish(s, job_id, attempt, sm.CANCELLED, progress=progress or None, message="stopped at a step boundary")
            return "cancelled"
        if outcome["t"] == "error":
            tb = outcome.get("traceback", "")
            (workdir / "logs" / f"attempt-{attempt}.traceback.txt").write_text(tb)
            sm.finish(s, job_id, attempt, sm.FAILED, error=outcome.get("error"), progress=progress or None,
                      message=outcome.get("error", "failed"))
            return "failed"
        return _succeed(s, settings, job_id, attempt, outcome.get("result") or {}, progress, workdir)


def _succeed(s, settings: ServiceSettings, job_id: str, attempt: int, result: dict, progress: dict,
             workdir: Path) -> str:
    job = s.get(Job, job_id)
    if job is None or job.attempts != attempt or job.status not in sm.ACTIVE:
        return "lost-lease"
    art_dir = workdir / "artifacts"
    report = None
    if (art_dir / "report.json").is_file():
        try:
            report = json.loads((art_dir / "report.json").read_text())
        except ValueError:
            report = None
    summary = record.summarize(job.kind, result, report, job.spec or {})
    record.store_artifacts(s, get_store(settings.artifacts_path), job, art_dir)
    genotype = record.record_genotype(s, job, art_dir)
    record.record_fps(s, job, summary, report, genotype)
    if job.kind == "search":
        record.record_luts(s, job, settings.lut_path)
    if job.kind == VALIDATE_KIND:
        apply_validation(s, job, report)
    s.commit()
    final = {"summary": summary, "core": result}
    if genotype is not None:
        final["genotype_id"] = genotype.id
    ok = sm.finish(s, job_id, attempt, sm.SUCCEEDED, result=json.loads(json.dumps(final, default=str)),
                   progress=(progress or {}) | {"phase": "done", "message": "succeeded"}, message="succeeded")
    return "succeeded" if ok else "lost-lease"


def _dispatch(settings: ServiceSettings, job_id: str) -> None:
    if send_job(settings.broker, settings.queue_name, settings.broker_key_prefix, job_id):
        with get_sessionmaker(settings.db_url)() as s:
            sm.mark_dispatched(s, job_id)
            s.commit()

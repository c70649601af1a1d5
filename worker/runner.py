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
MEASURING_KINDS = ("search", "retrain", "benchmark")
"""Kinds that time networks on the device: never two at once on one device (the device lock)."""
STOP = threading.Event()
"""Set when this worker is asked to stop (SIGTERM/SIGINT through Celery's ``worker_shutting_down``,
or the parent watchdog of ``python -m worker``): the running job is handed back, uncharged."""


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Child:
    """The supervised child process of one attempt."""

    def __init__(self, job_msg: dict, log_path: Path, pass_fds: tuple[int, ...] = ()):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["GAS_JOB_PARENT_PID"] = str(os.getpid())  # the child dies with this process (worker.child)
        self.log_file = open(log_path, "ab")
        # pass_fds: the device lock travels with the job process (held until it exits, even orphaned)
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.child"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log_file, env=env, cwd=str(REPO_ROOT),
                                     start_new_session=True, pass_fds=pass_fds)
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
    if STOP.is_set():  # stopping: leave the job to another worker (or to this one after its restart)
        _dispatch(settings, job_id)
        return "stopping"
    with Session() as s:
        attempt = sm.claim(s, job_id, wid, settings.tenant_max_running)
        if attempt == sm.DEFERRED:
            log.info("job %s deferred: its tenant is at GAS_TENANT_MAX_RUNNING", job_id)
            return "deferred"
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
    try:
        return _run_claimed(Session, settings, job_id, attempt, kind, spec, tenant)
    finally:
        _wake_deferred(Session, settings, tenant)


def _hand_back(Session, settings: ServiceSettings, job_id: str, attempt: int, reason: str) -> str:
    with Session() as s:
        new = sm.hand_back(s, job_id, attempt, reason)
    if new == sm.QUEUED:
        _dispatch(settings, job_id)
    log.info("job %s attempt %d handed back (%s): %s", job_id, attempt, reason, new)
    return f"handed-back->{new}"


def _device_lock(Session, settings: ServiceSettings, job_id: str, attempt: int) -> tuple[int | None, str | None]:
    """Take this worker's device lock (an exclusive flock that the job process inherits), heart-beating
    while another job holds it. Returns (fd, None), or (None, why) when the job must be handed back."""
    import fcntl

    settings.lock_path.mkdir(parents=True, exist_ok=True)
    device = settings.device_name()
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in device)
    host = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in socket.gethostname())
    # one lock per (host, device): a data dir shared by several machines does not couple their devices
    fd = os.open(settings.lock_path / f"device-{host}-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    start = last_beat = time.monotonic()
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd, None
        except BlockingIOError:
            pass
        now = time.monotonic()
        if not waited:
            waited = True
            with Session() as s:
                sm.add_event(s, job_id, "device_busy", f"waiting for device {device}: another job measures on it",
                             {"device": device}, attempt=attempt)
                s.commit()
        if STOP.is_set() or now - start > settings.device_lock_wait_s:
            os.close(fd)
            return None, ("the worker is stopping" if STOP.is_set() else
                          f"device {device} stayed busy for {settings.device_lock_wait_s:g} s")
        if now - last_beat >= settings.heartbeat_interval_s:
            last_beat = now
            try:
                with Session() as s:
                    if sm.heartbeat(s, job_id, attempt) is None:
                        os.close(fd)
                        return None, "lost-lease"
            except OperationalError:
                pass
        time.sleep(0.2)


def _run_claimed(Session, settings: ServiceSettings, job_id: str, attempt: int, kind: str, spec: dict,
                 tenant: str) -> str:
    if STOP.is_set():
        return _hand_back(Session, settings, job_id, attempt, "the worker is stopping")
    lock_fd = None
    if settings.device_lock and kind in MEASURING_KINDS:
        lock_fd, why = _device_lock(Session, settings, job_id, attempt)
        if lock_fd is None:
            return "lost-lease" if why == "lost-lease" else _hand_back(Session, settings, job_id, attempt, why)
    workdir = settings.work_path / job_id
    try:
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        msg = dict(kind=kind, target=target_for(kind, settings.kind_overrides()), spec=spec, workdir=str(workdir),
                   lut_dir=str(settings.lut_path), data_cache_dir=str(settings.cache_path),
                   orphan_grace_s=settings.cancel_grace_s, memory_limit_bytes=settings.job_memory_limit(),
                   progress_pulse_s=settings.progress_pulse_s)
        child = Child(msg, workdir / "logs" / f"attempt-{attempt}.log", pass_fds=(lock_fd,) if lock_fd is not None else ())
    except Exception as exc:  # noqa: BLE001 - cannot even start the job: it fails with the reason
        log.exception("job %s: could not start attempt %d", job_id, attempt)
        with Session() as s:
            sm.finish(s, job_id, attempt, sm.FAILED, error=f"could not start the job: {type(exc).__name__}: {exc}")
        return "failed-to-start"
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # the job process holds the lock now, until it exits
    try:
        return _supervise(Session, settings, job_id, attempt, child, workdir, tenant)
    except BaseException:
        # supervision broke (e.g. the database is gone for good): stop the child so that no orphan
        # holds the GPU; the heartbeat stops and the sweeper hands the job to the next attempt.
        child.kill()
        raise
    finally:
        child.close()


def _wake_deferred(Session, settings: ServiceSettings, tenant: str) -> None:
    """A job of ``tenant`` ended here: send again the jobs of that tenant that were deferred."""
    try:
        with Session() as s:
            ids = sm.deferred_jobs(s, tenant, settings.tenant_max_running)
        for jid in ids:
            _dispatch(settings, jid)
    except Exception:  # noqa: BLE001 - the sweeper re-sends them later anyway
        log.warning("could not re-send deferred jobs of tenant %s", tenant, exc_info=True)


def _supervise(Session, settings: ServiceSettings, job_id: str, attempt: int, child: Child, workdir: Path,
               tenant: str) -> str:
    progress: dict = {}
    last_written = 0.0
    last_beat = time.monotonic()
    cancel_sent: float | None = None
    outcome: dict | None = None
    dirty = False
    started = time.monotonic()
    with Session() as s:  # what the job's earlier attempts ran: the wall limit is the job's, not one attempt's
        job = s.get(Job, job_id)
        before = float(job.run_seconds or 0.0) if job is not None else 0.0

    def ran(t: float) -> float:
        return before + (t - started)

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
                            if sm.heartbeat(s, job_id, attempt, progress, run_seconds=ran(now)) is None:
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
                    status = sm.heartbeat(s, job_id, attempt, progress if dirty else None, run_seconds=ran(now))
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
        if outcome is None and STOP.is_set():  # graceful stop of the worker: the job goes back, uncharged
            child.kill()
            return _hand_back(Session, settings, job_id, attempt, "the worker was stopped (graceful shutdown)")
        if outcome is None and ran(now) > settings.job_max_wall_s:
            child.kill()
            over = f"{attempt} attempts" if attempt > 1 else "1 attempt"
            reason = (f"stopped after {ran(now):.0f} s over {over} (this one {now - started:.0f} s): the job ran "
                      f"longer than the wall-clock limit of {settings.job_max_wall_s:g} s (GAS_JOB_MAX_WALL_S)")
            with Session() as s:
                sm.finish(s, job_id, attempt, sm.FAILED, error=reason, progress=progress or None, message=reason)
            return "wall-limit"
        # a child that already answered (stopped at a step boundary) is exiting: give it another grace period
        grace = settings.cancel_grace_s * (2 if outcome is not None else 1)
        if cancel_sent is not None and now - cancel_sent > grace and child.proc.poll() is None:
            child.kill()
            with Session() as s:
                sm.finish(s, job_id, attempt, sm.CANCELLED, progress=progress or None,
                          message=f"killed after the {settings.cancel_grace_s:g}s cancel grace period")
            return "cancelled-killed"
    rc = child.proc.wait()
    if outcome is None:
        reason = f"job process exited with code {rc} without a result"
        with Session() as s:
            sm.heartbeat(s, job_id, attempt, None, run_seconds=ran(time.monotonic()))  # the next attempt counts on
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
    if job.status == sm.CANCELLING:  # the cancel came after the last step: a cancelled job never ends succeeded
        sm.finish(s, job_id, attempt, sm.CANCELLED, progress=progress or None,
                  message="cancelled: the job finished its work after the cancel request; its results are discarded")
        return "cancelled"
    art_dir = workdir / "artifacts"
    report = None
    if (art_dir / "report.json").is_file():
        try:
            report = json.loads((art_dir / "report.json").read_text())
        except ValueError:
            report = None
    summary = record.summarize(job.kind, result, report, job.spec or {})
    record.stamp_provenance(job, art_dir)
    record.store_artifacts(s, get_store(settings.artifacts_path), job, art_dir)
    recorded = record.record_genotype(s, job, art_dir)
    genotype_id = recorded[1] if recorded else None
    record.record_fps(s, job, summary, report, genotype_id)
    if job.kind in ("search", "feasibility"):
        record.record_luts(s, job, settings.lut_path)
    if job.kind == VALIDATE_KIND:
        apply_validation(s, job, report)
    s.commit()
    final = {"summary": summary, "core": result}
    if genotype_id is not None:
        final["genotype_id"] = genotype_id
    ok = sm.finish(s, job_id, attempt, sm.SUCCEEDED, result=json.loads(json.dumps(final, default=str)),
                   progress=(progress or {}) | {"phase": "done", "message": "succeeded"}, message="succeeded")
    return "succeeded" if ok else "lost-lease"


def _dispatch(settings: ServiceSettings, job_id: str) -> None:
    if send_job(settings.broker, settings.queue_name, settings.broker_key_prefix, job_id):
        with get_sessionmaker(settings.db_url)() as s:
            sm.mark_dispatched(s, job_id)
            s.commit()

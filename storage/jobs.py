"""The job state machine. Every transition is a conditional UPDATE so that concurrent actors
(API, workers, sweeper, duplicate deliveries) cannot break it.

States::

    queued ──claim──▶ running ──finish──▶ succeeded | failed | cancelled
      │  ▲              │ cancel
      │  └─reclaim──────┤  (heartbeat stale or child crash, attempts left)
      │                 ▼
      │              cancelling ──▶ cancelled   (stopped at a step boundary or killed after grace)
      └──cancel──▶ cancelled

Worker-side writes are *fenced* by the attempt number: a worker whose job was reclaimed (and
claimed again by someone else) has a stale attempt and every write it makes is a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from core.redact import redact, redact_text

from .models import Job, JobEvent, utcnow

QUEUED, RUNNING, CANCELLING = "queued", "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (RUNNING, CANCELLING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


def add_event(s: Session, job: Job | str, type_: str, message: str = "", data: dict | None = None,
              attempt: int | None = None, tenant_id: str | None = None) -> None:
    if isinstance(job, Job):
        job_id, tenant_id, attempt = job.id, job.tenant_id, job.attempts if attempt is None else attempt
    else:
        job_id = job
    # events and errors are what a tenant reads of a job: no server path in them (core.redact)
    ev = JobEvent(job_id=job_id, type=type_, message=redact_text(message), data=redact(data or {}),
                  attempt=attempt or 0)
    if tenant_id:
        ev.tenant_id = tenant_id
    s.add(ev)


# --------------------------------------------------------------------------------------- API side
@dataclass
class CancelOutcome:
    job: Job
    changed: bool
    conflict: bool = False


def request_cancel(s: Session, job: Job) -> CancelOutcome:
    """queued -> cancelled at once; running -> cancelling; cancelling -> unchanged; terminal -> conflict."""
    now = utcnow()
    for _ in range(3):
        s.refresh(job)
        if job.status in TERMINAL:
            return CancelOutcome(job, changed=False, conflict=True)
        if job.status == CANCELLING:
            return CancelOutcome(job, changed=False)
        if job.status == QUEUED:
            values = dict(status=CANCELLED, cancel_requested_at=now, finished_at=now, updated_at=now)
        else:
            values = dict(status=CANCELLING, cancel_requested_at=now, updated_at=now)
        res = s.execute(update(Job).where(Job.id == job.id, Job.status == job.status).values(**values))
        if res.rowcount == 1:
            add_event(s, job, "cancel_requested",
                      "cancelled before it started" if job.status == QUEUED else "cancel requested; stopping at the next step")
            s.commit()
            s.refresh(job)
            return CancelOutcome(job, changed=True)
        s.rollback()  # the job moved under us (claimed/finished): look again
    s.refresh(job)
    return CancelOutcome(job, changed=False, conflict=job.status in TERMINAL)


def mark_dispatched(s: Session, job_id: str) -> None:
    now = utcnow()
    s.execute(update(Job).where(Job.id == job_id, Job.status == QUEUED)
              .values(dispatched_at=now, dispatch_count=Job.dispatch_count + 1))


# ------------------------------------------------------------------------------------ worker side
DEFERRED = "deferred"
COUNTED_RUNNING = (RUNNING, CANCELLING)


def write_lock(s: Session, key: str) -> None:
    """Serialise this transaction with others on ``key``: SQLite takes the database write lock
    (``BEGIN IMMEDIATE``), PostgreSQL a transaction-scoped advisory lock on the key's hash."""
    conn = s.connection()
    if conn.dialect.name == "sqlite":
        if not conn.connection.dbapi_connection.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})


def claim(s: Session, job_id: str, worker_id: str, tenant_max_running: int | None = None) -> int | str | None:
    """Conditionally move queued -> running; returns the new attempt number, or None (duplicate
    delivery, cancelled, finished, or already held by another worker), or :data:`DEFERRED` when
    the job's tenant already has ``tenant_max_running`` jobs running (fairness: the job stays
    queued, event ``deferred``; :func:`deferred_jobs` finds it when one of them ends)."""
    now = utcnow()
    if tenant_max_running is not None:
        head = s.execute(select(Job.tenant_id, Job.status).where(Job.id == job_id)).first()
        if head is None or head.status != QUEUED:
            s.rollback()
            return None
        write_lock(s, f"claim:{head.tenant_id}")  # two workers cannot both take the tenant's last slot
        running = s.scalar(select(func.count()).select_from(Job).where(
            Job.tenant_id == head.tenant_id, Job.status.in_(COUNTED_RUNNING))) or 0
        if running >= tenant_max_running:
            res = s.execute(update(Job).where(Job.id == job_id, Job.status == QUEUED).values(dispatched_at=now))
            if res.rowcount != 1:
                s.rollback()
                return None
            add_event(s, s.get(Job, job_id), DEFERRED,
                      f"waiting: the tenant already has {running} running job(s), the most one tenant may run "
                      f"at once is {tenant_max_running}; it starts when one of them ends",
                      {"running": int(running), "limit": tenant_max_running, "worker": worker_id})
            s.commit()
            return DEFERRED
    row = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED, Job.attempts < Job.max_attempts)
        .values(status=RUNNING, attempts=Job.attempts + 1, worker_id=worker_id, heartbeat_at=now,
                updated_at=now, started_at=now)
        .returning(Job.attempts)
    ).first()
    if row is None:
        s.rollback()
        return None
    attempt = int(row[0])
    job = s.get(Job, job_id)
    add_event(s, job, "claimed", f"attempt {attempt} started on {worker_id}", {"worker": worker_id},
              attempt=attempt)
    s.commit()
    return attempt


def _fenced(job_id: str, attempt: int):
    return and_(Job.id == job_id, Job.attempts == attempt, Job.status.in_(ACTIVE))


def heartbeat(s: Session, job_id: str, attempt: int, progress: dict | None = None,
              run_seconds: float | None = None) -> str | None:
    """Stamp the heartbeat (and progress, and the job's run time over all its attempts); returns the
    current status, or None when this attempt no longer holds the job (reclaimed or finished elsewhere)."""
    now = utcnow()
    values: dict[str, Any] = dict(heartbeat_at=now, updated_at=now)
    if progress is not None:
        values["progress"] = redact(progress)
    if run_seconds is not None:
        values["run_seconds"] = run_seconds
    row = s.execute(update(Job).where(_fenced(job_id, attempt)).values(**values).returning(Job.status)).first()
    s.commit()
    return None if row is None else str(row[0])


def finish(s: Session, job_id: str, attempt: int, status: str, *, result: dict | None = None,
           error: str | None = None, progress: dict | None = None, message: str = "") -> bool:
    assert status in TERMINAL
    now = utcnow()
    error = redact_text(error) if error else error
    result = redact(result) if result is not None else None
    values: dict[str, Any] = dict(status=status, finished_at=now, updated_at=now, heartbeat_at=now,
                                  result=result, error=error)
    if progress is not None:
        values["progress"] = redact(progress)
    res = s.execute(update(Job).where(_fenced(job_id, attempt)).values(**values))
    if res.rowcount != 1:
        s.rollback()
        return False
    job = s.get(Job, job_id)
    add_event(s, job, status, message or status, {"error": error} if error else {}, attempt=attempt)
    s.commit()
    return True


def release_for_retry(s: Session, job_id: str, attempt: int, reason: str) -> str | None:
    """After a crash of attempt ``attempt``: back to queued when attempts remain, else failed.
    Returns the new status, or None when the attempt no longer held the job."""
    job = s.get(Job, job_id)
    if job is None or job.attempts != attempt or job.status not in ACTIVE:
        return None
    return _retry_or_fail(s, job, reason)


def hand_back(s: Session, job_id: str, attempt: int, reason: str) -> str | None:
    """A graceful stop of the worker (SIGTERM) or a device that stayed busy: the attempt is given
    back without being charged (``max_attempts`` grows by one, so the job keeps every attempt it
    had; the attempt numbers stay unique, which the fencing needs). running -> queued; a job whose
    cancel was pending ends ``cancelled``. Returns the new status, or None when the attempt no
    longer held the job."""
    job = s.get(Job, job_id)
    if job is None or job.attempts != attempt or job.status not in ACTIVE:
        return None
    now = utcnow()
    if job.status == CANCELLING:
        new, values, msg = CANCELLED, dict(status=CANCELLED, finished_at=now, error=None), f"cancelled ({reason})"
    else:
        new = QUEUED
        values = dict(status=QUEUED, worker_id=None, dispatched_at=None, max_attempts=Job.max_attempts + 1)
        msg = f"attempt {attempt} handed back, not counted: {reason}"
    res = s.execute(update(Job).where(_fenced(job_id, attempt)).values(updated_at=now, **values))
    if res.rowcount != 1:
        s.rollback()
        return None
    add_event(s, job, "handed_back" if new == QUEUED else new, msg, {"reason": redact_text(reason)}, attempt=attempt)
    s.commit()
    return new


def deferred_jobs(s: Session, tenant_id: str, tenant_max_running: int) -> list[str]:
    """Queued jobs of ``tenant_id`` that a worker deferred (fairness), oldest first, as many as the
    tenant has free running slots: the ones to send again now that a slot is free."""
    running = s.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status.in_(COUNTED_RUNNING))) or 0
    free = tenant_max_running - int(running)
    if free <= 0:
        return []
    deferred = select(JobEvent.id).where(JobEvent.job_id == Job.id, JobEvent.type == DEFERRED).exists()
    return list(s.scalars(select(Job.id).where(Job.tenant_id == tenant_id, Job.status == QUEUED, deferred)
                          .order_by(Job.created_at, Job.id).limit(free)))


def _retry_or_fail(s: Session, job: Job, reason: str) -> str | None:
    now = utcnow()
    reason = redact_text(reason)
    if job.status == CANCELLING:
        new, values = CANCELLED, dict(status=CANCELLED, finished_at=now, error=None)
        msg = f"cancelled ({reason})"
    elif job.attempts >= job.max_attempts:
        new = FAILED
        msg = f"failed after {job.attempts} attempt(s): {reason}"
        values = dict(status=FAILED, finished_at=now, error=msg)
    else:
        new, values, msg = QUEUED, dict(status=QUEUED, worker_id=None, dispatched_at=None), f"re-queued: {reason}"
    res = s.execute(update(Job).where(Job.id == job.id, Job.attempts == job.attempts, Job.status == job.status)
                    .values(updated_at=now, **values))
    if res.rowcount != 1:
        s.rollback()
        return None
    add_event(s, job, "reclaimed" if new == QUEUED else new, msg, {"reason": reason})
    s.commit()
    return new


# ------------------------------------------------------------------------------------------ sweeper
@dataclass
class SweepReport:
    reclaimed: list[str]
    failed: list[str]
    cancelled: list[str]
    redispatched: list[str]


def sweep(s: Session, *, heartbeat_timeout_s: float, redispatch_after_s: float,
          dispatch: Callable[[str], bool], now: datetime | None = None) -> SweepReport:
    now = now or utcnow()
    rep = SweepReport([], [], [], [])
    stale = s.scalars(select(Job).where(Job.status.in_(ACTIVE),
                                        Job.heartbeat_at < now - timedelta(seconds=heartbeat_timeout_s))).all()
    for job in stale:
        new = _retry_or_fail(s, job, f"worker {job.worker_id} stopped heart-beating "
                                     f"(last {job.heartbeat_at.isoformat() if job.heartbeat_at else 'never'})")
        if new == QUEUED:
            rep.reclaimed.append(job.id)
        elif new == FAILED:
            rep.failed.append(job.id)
        elif new == CANCELLED:
            rep.cancelled.append(job.id)
    cutoff = now - timedelta(seconds=redispatch_after_s)
    queued = s.scalars(select(Job).where(
        Job.status == QUEUED,
        or_(and_(Job.dispatched_at.is_(None), Job.created_at < cutoff), Job.dispatched_at < cutoff,
            Job.id.in_(rep.reclaimed)))).all()
    for job in queued:
        if job.dispatched_at is not None and job.id not in rep.reclaimed:
            backoff = min(redispatch_after_s * 2 ** max(job.dispatch_count - 1, 0), 3600.0)
            if job.dispatched_at > now - timedelta(seconds=backoff):
                continue
        if dispatch(job.id):
            mark_dispatched(s, job.id)
            add_event(s, job, "dispatched", "re-enqueued by the sweeper", {"dispatch_count": job.dispatch_count + 1})
            s.commit()
            rep.redispatched.append(job.id)
    return rep

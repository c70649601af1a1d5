"""Per-tenant quotas, checked when a job is created (in its transaction, the tenant row locked on
PostgreSQL, the database write-locked with ``BEGIN IMMEDIATE`` on SQLite, so that concurrent
submissions of one tenant are counted one after the other):

- concurrent jobs (queued + running + cancelling search/retrain/benchmark jobs): past the cap the
  submission is answered 429 with ``Retry-After``;
- stored bytes (artifacts + uploaded datasets not deleted): past the cap new jobs (and new
  datasets, whose validation job goes through the same path) are answered 409;
- validation jobs (queued + running, one per registration or upload): past
  ``GAS_QUOTA_VALIDATION_JOBS`` a registration is answered 429 with ``Retry-After``; an upload is
  checked before it streams (:func:`precheck_upload`, with its declared size against the storage quota).

Caps come from the tenant row (``max_concurrent_jobs``, ``max_storage_bytes``) or, where NULL, from
``GAS_QUOTA_CONCURRENT_JOBS`` / ``GAS_QUOTA_STORAGE_BYTES``.
"""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage import jobs as sm
from storage.datasets import VALIDATE_KIND
from storage.models import Artifact, Dataset, Job, Tenant
from storage.settings import ServiceSettings

from .problems import Problem

USER_KINDS = ("search", "retrain", "benchmark", "feasibility")
ACTIVE = (sm.QUEUED, sm.RUNNING, sm.CANCELLING)


def serialize(s: Session) -> None:
    """Make the rest of this transaction the only writer of the database on SQLite: ``BEGIN
    IMMEDIATE`` takes the write lock now (others wait on the busy timeout), so two submissions
    cannot both count the same free slot. A transaction that already wrote holds that lock."""
    conn = s.connection()
    if conn.dialect.name != "sqlite":
        return
    dbapi = conn.connection.dbapi_connection
    if not dbapi.in_transaction:  # pysqlite begins (deferred) only before its first write
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def limits(s: Session, settings: ServiceSettings, tenant: str, *, lock: bool = False) -> tuple[int, int]:
    if lock:
        serialize(s)
    q = select(Tenant).where(Tenant.id == tenant)
    if lock and s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    row = s.scalar(q)
    jobs = row.max_concurrent_jobs if row is not None and row.max_concurrent_jobs is not None else settings.quota_concurrent_jobs
    size = row.max_storage_bytes if row is not None and row.max_storage_bytes is not None else settings.quota_storage_bytes
    return int(jobs), int(size)


def active_jobs(s: Session, tenant: str, kinds: tuple[str, ...] = USER_KINDS) -> int:
    return int(s.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant, Job.kind.in_(kinds), Job.status.in_(ACTIVE))) or 0)


def precheck_upload(s: Session, settings: ServiceSettings, tenant: str, declared: int | None) -> None:
    """Before an upload is streamed: a tenant whose validation slots are full (429), or whose stored
    bytes plus the declared size would pass the storage quota (409), is refused at once (the
    extracted size is charged again after extraction; this stops a doomed upload from streaming)."""
    max_jobs, max_bytes = limits(s, settings, tenant)
    n = active_jobs(s, tenant, (VALIDATE_KIND,))
    if n >= settings.quota_validation_jobs:
        raise Problem(429, f"validation jobs quota reached: {n} datasets of this tenant are being validated, the "
                           f"quota is {settings.quota_validation_jobs}; retry when one is ready",
                      type_="/problems/quota-validation-jobs", headers={"Retry-After": str(settings.quota_retry_after_s)},
                      quota="validation_jobs", limit=settings.quota_validation_jobs, used=n)
    used = stored_bytes(s, tenant)
    if declared is not None and used + declared > max_bytes:
        raise Problem(409, f"storage quota exceeded: {used} bytes stored and the upload declares {declared} bytes, "
                           f"the quota is {max_bytes} bytes; delete datasets or ask for a larger quota",
                      type_="/problems/quota-storage", quota="storage_bytes", limit=max_bytes, used=used,
                      declared=declared)


def stored_bytes(s: Session, tenant: str) -> int:
    arts = s.scalar(select(func.coalesce(func.sum(Artifact.size), 0)).where(Artifact.tenant_id == tenant)) or 0
    # an archive stored once counts once, however many datasets use it (a re-upload with other parameters)
    per_archive = (select(func.max(Dataset.size_bytes).label("size"))
                   .where(Dataset.tenant_id == tenant, Dataset.deleted_at.is_(None), Dataset.sha256.is_not(None))
                   .group_by(Dataset.sha256).subquery())
    data = s.scalar(select(func.coalesce(func.sum(per_archive.c.size), 0))) or 0
    return int(arts) + int(data)


def enforce(s: Session, settings: ServiceSettings, tenant: str, kind: str, idem_key: str | None = None) -> None:
    """Raise the 429/409 problem when creating a job of ``kind`` would exceed a quota."""
    max_jobs, max_bytes = limits(s, settings, tenant, lock=True)
    if idem_key is not None and s.scalar(select(Job.id).where(Job.tenant_id == tenant,
                                                              Job.idempotency_key == idem_key)) is not None:
        return  # a replay of an accepted request (the insert below answers the existing job)
    used = stored_bytes(s, tenant)
    # a job needs room left (it will write artifacts); a new dataset's own bytes are already counted
    # (its row is flushed in this transaction) and may fill the quota exactly
    if (used >= max_bytes) if kind in USER_KINDS else (used > max_bytes):
        raise Problem(409, f"storage quota exceeded: {used} bytes stored, the quota is {max_bytes} bytes; "
                           "delete datasets or ask for a larger quota", type_="/problems/quota-storage",
                      quota="storage_bytes", limit=max_bytes, used=used)
    if kind == VALIDATE_KIND:  # a registration: its validation job counts against its own cap
        n = active_jobs(s, tenant, (VALIDATE_KIND,))
        if n >= settings.quota_validation_jobs:
            raise Problem(429, f"validation jobs quota reached: {n} datasets of this tenant are being validated, the "
                               f"quota is {settings.quota_validation_jobs}; retry when one is ready",
                          type_="/problems/quota-validation-jobs",
                          headers={"Retry-After": str(settings.quota_retry_after_s)},
                          quota="validation_jobs", limit=settings.quota_validation_jobs, used=n)
    if kind in USER_KINDS:
        n = active_jobs(s, tenant)
        if n >= max_jobs:
            raise Problem(429, f"concurrent jobs quota reached: {n} queued or running, the quota is {max_jobs}; "
                               "retry when one has finished", type_="/problems/quota-concurrent-jobs",
                          headers={"Retry-After": str(settings.quota_retry_after_s)},
                          quota="concurrent_jobs", limit=max_jobs, used=n)


def usage(s: Session, settings: ServiceSettings, tenant: str) -> dict:
    max_jobs, max_bytes = limits(s, settings, tenant)
    return {"concurrent_jobs": {"used": active_jobs(s, tenant), "limit": max_jobs},
            "storage_bytes": {"used": stored_bytes(s, tenant), "limit": max_bytes}}

"""Dataset lifecycle shared by the API and the worker.

A dataset is ``validating`` from registration until its validation job ends, then ``ready`` (every
file passed) or ``invalid`` (the report lists every bad file, or the validation job itself failed).
Only ``ready`` datasets can be used by jobs. Deleting is a soft delete (files of an upload removed),
refused while a queued or running job uses the dataset.
"""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import jobs as sm
from .artifacts import safe_name
from .models import Dataset, Job

VALIDATING, READY, INVALID = "validating", "ready", "invalid"
VALIDATE_KIND = "validate"


def effective_status(s: Session, ds: Dataset) -> tuple[str, str | None]:
    """(status, reason): a validation job that ended without a result makes the dataset invalid."""
    if ds.status != VALIDATING or not ds.validation_job_id:
        return ds.status, None
    job = s.get(Job, ds.validation_job_id)
    if job is not None and job.status in (sm.FAILED, sm.CANCELLED):
        return INVALID, f"validation job {job.status}: {job.error or 'no result'}"
    return VALIDATING, None


def apply_validation(s: Session, job: Job, report: dict | None) -> None:
    """Record a finished validation job's report on its dataset (called by the worker, same transaction)."""
    ds = s.scalar(select(Dataset).where(Dataset.validation_job_id == job.id))
    if ds is None or ds.status != VALIDATING:
        return
    ds.report = report
    ds.status = READY if report and report.get("ok") else INVALID
    if report:
        ds.stats = {**(ds.stats or {}), "splits": report.get("splits"), "class_frequency": report.get("class_frequency"),
                    "channel_mean": report.get("channel_mean"), "channel_std": report.get("channel_std")}


def active_jobs_using(s: Session, ds: Dataset) -> list[str]:
    return list(s.scalars(select(Job.id).where(Job.dataset_id == ds.id, Job.status.in_((sm.QUEUED, *sm.ACTIVE)))))


def upload_target(upload_root: Path, tenant: str, sha256: str) -> Path:
    """Where an uploaded archive is extracted: one folder per tenant and content hash (never a client name)."""
    if not safe_name(tenant) or len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise ValueError(f"unsafe upload location for tenant {tenant!r}")
    return Path(upload_root) / tenant / sha256

"""Celery tasks. The task body only claims and supervises; the job itself runs in a child process."""
from __future__ import annotations

from storage.dispatch import TASK_NAME
from storage.settings import get_settings

from .celery_app import app
from .runner import run_job as _run_job


@app.task(name=TASK_NAME, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    return _run_job(str(job_id), get_settings())

"""The Celery application of the workers: JSON only, prefetch 1, late acks."""
from __future__ import annotations

from celery import Celery
from celery.signals import worker_shutting_down

from storage.dispatch import celery_config
from storage.settings import get_settings

settings = get_settings()
app = Celery("gas", include=["worker.tasks"])
app.conf.update(celery_config(settings.broker, settings.queue_name, settings.broker_key_prefix,
                             settings.broker_visibility_timeout_s))
app.conf.update(worker_concurrency=settings.worker_concurrency, worker_pool=settings.worker_pool,
                worker_send_task_events=False, task_track_started=False)


@worker_shutting_down.connect
def _stopping(sig=None, how=None, **_) -> None:
    """SIGTERM/SIGINT/SIGQUIT: the job this worker runs is handed back (uncharged) instead of being
    run to its end unsupervised (worker.runner.STOP; solo pool: the task polls it)."""
    from .runner import STOP

    STOP.set()

"""Sending the wake-up message of a job (the database row is the truth; the message only wakes a
worker). Shared by the API (after commit) and the sweeper. Only Celery's client side is used."""
from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery

TASK_NAME = "gas.run_job"
log = logging.getLogger("gas.dispatch")


def celery_config(broker_url: str, queue: str, key_prefix: str = "", visibility_timeout_s: int = 86400) -> dict:
    opts: dict = {}
    if broker_url.startswith(("redis://", "rediss://")):
        opts["visibility_timeout"] = visibility_timeout_s
        if key_prefix:
            opts["global_keyprefix"] = key_prefix
    return dict(
        broker_url=broker_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=opts,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )


@lru_cache(maxsize=4)
def client_app(broker_url: str, queue: str, key_prefix: str = "") -> Celery:
    app = Celery("gas-client")
    app.conf.update(celery_config(broker_url, queue, key_prefix))
    if broker_url.startswith(("redis://", "rediss://")):
        # a publish must never hang a request thread (a broker that accepts and never answers): give up
        # after a few seconds; the job row stays queued and the sweeper sends it later
        app.conf.broker_transport_options = {**app.conf.broker_transport_options, "socket_timeout": 3.0,
                                             "socket_connect_timeout": 3.0}
        app.conf.broker_connection_timeout = 3.0
    return app


def send_job(broker_url: str, queue: str, key_prefix: str, job_id: str) -> bool:
    """Publish the wake-up of ``job_id``; False (logged) when the broker is unreachable."""
    try:
        client_app(broker_url, queue, key_prefix).send_task(
            TASK_NAME, args=[job_id], queue=queue, retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5})
        return True
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves the job to the sweeper
        log.warning("could not enqueue job %s (%s: %s); the sweeper will re-dispatch it",
                    job_id, type(exc).__name__, exc)
        return False

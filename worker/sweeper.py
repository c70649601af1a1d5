"""The sweeper (``python -m worker.sweeper``): re-enqueues queued jobs no worker holds and reclaims
running jobs whose heartbeat stopped (next attempt resumes from the checkpoint; attempts capped).
A plain loop: it needs no Celery beat schedule file and any number of copies may run (every
transition is a conditional update). ``--once`` runs a single sweep."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from storage import jobs as sm
from storage.db import get_sessionmaker
from storage.dispatch import send_job
from storage.settings import ServiceSettings, get_settings

log = logging.getLogger("gas.sweeper")


def sweep_once(settings: ServiceSettings) -> sm.SweepReport:
    def dispatch(job_id: str) -> bool:
        return send_job(settings.broker, settings.queue_name, settings.broker_key_prefix, job_id)

    with get_sessionmaker(settings.db_url, settings.db_pool_size)() as s:
        rep = sm.sweep(s, heartbeat_timeout_s=settings.heartbeat_timeout_s,
                       redispatch_after_s=settings.redispatch_after_s, dispatch=dispatch)
    if rep.reclaimed or rep.failed or rep.cancelled or rep.redispatched:
        log.info("sweep: reclaimed=%s failed=%s cancelled=%s redispatched=%s",
                 rep.reclaimed, rep.failed, rep.cancelled, rep.redispatched)
    return rep


STOP_GRACE_S = 5.0
"""Seconds the sweeper may take to finish its sweep after SIGTERM/SIGINT before it exits anyway (it holds no state)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.sweeper")
    ap.add_argument("--once", action="store_true", help="run one sweep and exit")
    args = ap.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.once:
        sweep_once(settings)
        return 0
    stop = threading.Event()
    def _stop(*_) -> None:
        # Finish the sweep in progress, but never outlive a dead launcher by more than STOP_GRACE_S: a sweep
        # blocked on a broker that went away with it would keep this process alive (seen under load).
        stop.set()
        timer = threading.Timer(STOP_GRACE_S, os._exit, args=(0,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("sweeper started (every %.1fs)", settings.sweep_interval_s)
    while not stop.is_set():
        try:
            sweep_once(settings)
        except Exception:  # noqa: BLE001 - a DB/broker outage must not end the loop; it is logged
            log.exception("sweep failed; retrying in %.1fs", settings.sweep_interval_s)
        stop.wait(settings.sweep_interval_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

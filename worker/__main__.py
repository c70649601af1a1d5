"""``python -m worker``: one Celery worker process (run one per GPU with CUDA_VISIBLE_DEVICES pinned)."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from storage.settings import get_settings


def watch_parent(expected: int, interval: float = 1.0) -> None:
    """Fallback of PR_SET_PDEATHSIG (set by the embedded launcher; Linux only): when the process
    that started this worker is gone (we were re-parented), stop gracefully with SIGTERM, which
    hands the running job back."""
    def loop() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != expected:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
                os.kill(os.getpid(), signal.SIGKILL)  # still here: the job was handed back or is lost to the sweeper

    threading.Thread(target=loop, name="parent-watchdog", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    from .celery_app import app

    parent = os.environ.get("GAS_PARENT_PID", "")
    if parent.isdigit():
        if os.getppid() != int(parent):  # the launcher died before we even started
            raise SystemExit(75)
        watch_parent(int(parent))
    s = get_settings()
    s.ensure_dirs()
    args = ["worker", "--loglevel", s.log_level, "--pool", s.worker_pool, "--concurrency", str(s.worker_concurrency),
            "--queues", s.queue_name, "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
            *(sys.argv[1:] if argv is None else argv)]
    app.worker_main(args)


if __name__ == "__main__":
    main()

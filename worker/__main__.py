"""``python -m worker``: one Celery worker process (run one per GPU with CUDA_VISIBLE_DEVICES pinned)."""
from __future__ import annotations

import sys

from storage.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    from .celery_app import app

    s = get_settings()
    s.ensure_dirs()
    args = ["worker", "--loglevel", s.log_level, "--pool", s.worker_pool, "--concurrency", str(s.worker_concurrency),
            "--queues", s.queue_name, "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
            *(sys.argv[1:] if argv is None else argv)]
    app.worker_main(args)


if __name__ == "__main__":
    main()

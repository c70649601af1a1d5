"""``python -m api``: the production API server (uvicorn, GAS_API_WORKERS processes, httptools +
uvloop, no access log). With several workers, Prometheus metrics are aggregated across them through
a multiprocess directory (PROMETHEUS_MULTIPROC_DIR, created when unset)."""
from __future__ import annotations

import os
import tempfile

import uvicorn

from storage.settings import get_settings


def main() -> None:
    s = get_settings()
    if s.api_workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gas-prom-")
    uvicorn.run("api.app:create_app", factory=True, host=s.api_host, port=s.api_port, workers=s.api_workers,
                log_level=s.log_level.lower(), access_log=False, proxy_headers=True)


if __name__ == "__main__":
    main()

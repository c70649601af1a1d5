"""Embedded mode: ONE command runs the whole service on one machine with no servers to install.

``gas-serve`` (or ``python -m api.embedded``) migrates the SQLite database, starts a real Celery
worker on kombu's SQLAlchemy transport (broker = a SQLite file), the sweeper loop, and the API
(uvicorn) bound to 127.0.0.1. At first start it creates the default tenant and an API key
and prints the key once. Everything lives under ``GAS_DATA_DIR`` (default ./var). The worker
and the sweeper are child processes (started by module name; api never imports worker) and are
restarted if they die. Ctrl-C stops all of them.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import uvicorn

from storage.migrate import upgrade
from storage.settings import ServiceSettings

from .app import create_app

log = logging.getLogger("gas.embedded")
REPO_ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the embedded launcher dies, even by SIGKILL (the worker
    then hands its running job back and exits; its own job process dies with it). The worker also
    watches its parent pid (GAS_PARENT_PID) as a fallback."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervised:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.proc: subprocess.Popen | None = None
        self.stopping = False
        self.started_at = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=str(REPO_ROOT), start_new_session=True, preexec_fn=_die_with_parent)
        out.close()
        log.info("%s started (pid %d, log %s)", self.name, self.proc.pid, self.log_path)

    def watch(self) -> None:
        while not self.stopping:
            time.sleep(1.0)
            if self.proc is not None and self.proc.poll() is not None and not self.stopping:
                quick = time.monotonic() - self.started_at < 10.0
                log.warning("%s exited with %s; restarting%s", self.name, self.proc.returncode,
                            " in 5 s (it died quickly)" if quick else "")
                if quick:
                    time.sleep(5.0)
                if not self.stopping:
                    self.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _first_key(settings: ServiceSettings) -> None:
    """First start (no API key exists): create the default tenant and a key, and print the key ONCE."""
    from storage.auth import bootstrap
    from storage.db import get_sessionmaker

    with get_sessionmaker(settings.db_url)() as s:
        new = bootstrap(s, settings.default_tenant)
    if new is not None:
        print(f"\nGAS API key for tenant {new.tenant_id!r} (shown only now; stored hashed):\n\n    {new.key}\n\n"
              f"    export GAS_API_KEY={new.key}\n\nMore keys: gas-admin keys create TENANT --create-tenant\n",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gas-serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=None, help="API port (default GAS_API_PORT)")
    ap.add_argument("--data-dir", default=None, help="data directory (default GAS_DATA_DIR)")
    args = ap.parse_args(argv)
    if args.data_dir:
        os.environ["GAS_DATA_DIR"] = args.data_dir
    if args.port:
        os.environ["GAS_API_PORT"] = str(args.port)
    settings = ServiceSettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings.ensure_dirs()
    data = Path(settings.data_dir).resolve()
    env = dict(os.environ)
    # Children must agree on every path even when defaults are relative.
    env.update(GAS_DATA_DIR=str(data), GAS_DATABASE_URL=settings.db_url, GAS_BROKER_URL=settings.broker,
               GAS_ARTIFACT_DIR=str(settings.artifacts_path), GAS_WORK_DIR=str(settings.work_path),
               GAS_LUT_DIR=str(settings.lut_path))
    if not settings.operators():  # one machine, one owner: its tenant may delete the latency tables
        env["GAS_OPERATOR_TENANTS"] = settings.default_tenant
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["GAS_PARENT_PID"] = str(os.getpid())  # the worker's watchdog: stop when this launcher is gone
    upgrade(settings.db_url)
    _first_key(settings)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    children = [Supervised("worker", [sys.executable, "-m", "worker"], env, logs / "worker.log"),
                Supervised("sweeper", [sys.executable, "-m", "worker.sweeper"], env, logs / "sweeper.log")]
    for c in children:
        c.start()
        threading.Thread(target=c.watch, daemon=True).start()
    app_settings = ServiceSettings(_env_file=None, **{k[4:].lower(): v for k, v in env.items()
                                                       if k.startswith("GAS_") and k[4:].lower() in ServiceSettings.model_fields})
    # uvicorn re-raises the SIGTERM it caught after its graceful shutdown; turn it into SystemExit so
    # that the children are stopped below instead of the process dying on the default action.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:  # embedded mode: loopback only, whatever GAS_API_HOST says
        log.info("API on http://127.0.0.1:%d (data in %s)", app_settings.api_port, data)
        uvicorn.run(create_app(app_settings), host="127.0.0.1", port=app_settings.api_port,
                    log_level=settings.log_level.lower(), access_log=False)
    finally:
        for c in children:
            c.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

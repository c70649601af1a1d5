"""Issue 10, section 4: the embedded launcher's processes (SQLite + kombu's SQLAlchemy broker,
``python -m api.embedded``, the fast fake search).

- SIGKILL of the launcher: its worker and the worker's job process die with it at once (no job
  runs on unsupervised), and the running job is handed back without being charged an attempt;
  after a restart it resumes and finishes.
- SIGTERM of the launcher: a graceful stop hands the running job back at once (no wait for the
  heartbeat timeout, no attempt lost); after a restart it finishes on its next attempt.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from storage.db import get_sessionmaker
from storage.models import Job, JobEvent
from svc_helpers import PY, REPO, fake_search_body, free_port, wait_dataset, wait_until

FAKE = json.dumps({"search": "tests.service.fake_core:fake_search"})


class Launcher:
    def __init__(self, data: Path, datasets_root: Path):
        self.data, self.port = data, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GAS_")}
        # the heartbeat timeout stays long (60 s): nothing here may rely on the sweeper
        self.env.update(GAS_DATASETS_ROOT=str(datasets_root), GAS_HEARTBEAT_INTERVAL_S="0.5",
                        GAS_PROGRESS_MIN_INTERVAL_S="0.2", GAS_JOB_KIND_OVERRIDES=FAKE, GAS_CANCEL_GRACE_S="3",
                        OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        self.proc: subprocess.Popen | None = None
        self.key: str | None = None
        self.starts = 0

    def start(self) -> None:
        log = open(self.data / f"embedded-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([PY, "-m", "api.embedded", "--port", str(self.port), "--data-dir", str(self.data)],
                                     env=self.env, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wlog = self.data / "logs" / "worker.log"
        before = wlog.read_bytes().count(b" ready.") if wlog.exists() else 0

        def ready():
            try:
                return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        wait_until(ready, 90, "embedded service ready", lambda: self.log()[-2000:])
        wait_until(lambda: wlog.exists() and wlog.read_bytes().count(b" ready.") > before, 90, "worker ready",
                   lambda: wlog.read_text()[-2000:] if wlog.exists() else None)
        if self.key is None:
            keys = re.findall(r"^    (gas_[0-9a-f]{12}_\S+)$", self.log(), re.M)
            assert len(keys) == 1
            self.key = keys[0]
        self.starts += 1

    def log(self) -> str:
        return (self.data / f"embedded-{self.starts}.log").read_text(errors="replace")

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {self.key}"})

    def processes(self) -> dict[int, str]:
        """pid -> role of every live process started for this data dir (worker, job, sweeper)."""
        out = {}
        marker = f"GAS_DATA_DIR={self.data.resolve()}".encode()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                env = (d / "environ").read_bytes()
                cmd = (d / "cmdline").read_bytes().split(b"\0")
                st = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker not in env.split(b"\0") or st == "Z":
                continue
            args = [c.decode(errors="replace") for c in cmd if c]
            if "worker.child" in args:
                out[int(d.name)] = "job"
            elif "worker.sweeper" in args:
                out[int(d.name)] = "sweeper"
            elif "worker" in args:
                out[int(d.name)] = "worker"
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.processes():  # nothing may be left; if it is, clean up (the test has failed)
            os.kill(pid, signal.SIGKILL)


def _job_row(data: Path, jid: str) -> tuple[Job, list[str]]:
    with get_sessionmaker(f"sqlite:///{(data / 'gas.db').resolve()}")() as s:
        job = s.get(Job, jid)
        s.expunge(job)
        types = list(s.scalars(select(JobEvent.type).where(JobEvent.job_id == jid).order_by(JobEvent.id)))
    return job, types


@pytest.fixture(scope="module")
def launcher(tmp_path_factory, datasets_root):
    la = Launcher(tmp_path_factory.mktemp("launcher"), datasets_root)
    try:
        la.start()
        with la.http() as http:
            r = http.post("/api/v1/datasets", json={"name": "tiny", "path": "camvid_tiny"})
            assert r.status_code == 201, r.text
            la.dataset = wait_dataset(http, r.json()["id"])["id"]
        yield la
    finally:
        la.stop()


def _running_job(la: Launcher) -> tuple[str, dict[int, str]]:
    with la.http() as http:
        jid = http.post("/api/v1/jobs/search", json=fake_search_body(la.dataset, epochs=40, steps=4, batch=2)).json()["id"]
        wait_until(lambda: (http.get(f"/api/v1/jobs/{jid}").json()["progress"].get("epoch") or 0) >= 1, 60,
                   "the job past its first epoch", lambda: http.get(f"/api/v1/jobs/{jid}").json())
    procs = la.processes()
    assert sorted(procs.values()) == ["job", "sweeper", "worker"], procs
    return jid, procs


def _finish_after_restart(la: Launcher, jid: str) -> dict:
    la.start()
    with la.http() as http:
        wait_until(lambda: http.get(f"/api/v1/jobs/{jid}").json()["attempts"] == 2, 60, "attempt 2 running",
                   lambda: http.get(f"/api/v1/jobs/{jid}").json())
        http.post(f"/api/v1/jobs/{jid}/cancel")  # no need to run 40 epochs: a cancel ends it as soon as it runs
        wait_until(lambda: http.get(f"/api/v1/jobs/{jid}").json()["status"] in ("cancelled", "succeeded", "failed"),
                   90, "the handed-back job ended", lambda: http.get(f"/api/v1/jobs/{jid}").json())
        return http.get(f"/api/v1/jobs/{jid}").json()


def test_sigkill_of_the_launcher_takes_worker_and_job_down(launcher):
    la = launcher
    jid, procs = _running_job(la)
    la.proc.kill()  # SIGKILL: no handler runs in the launcher
    la.proc.wait()
    t0 = time.monotonic()
    wait_until(lambda: not la.processes(), 20, "worker, job process and sweeper gone", la.processes)
    gone_after = time.monotonic() - t0
    for pid in procs:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    job, types = _job_row(la.data, jid)
    # the worker got SIGTERM from the kernel (PR_SET_PDEATHSIG) and handed the job back, uncharged
    assert job.status == "queued" and job.attempts == 1 and job.max_attempts == 4, (job.status, job.attempts, job.max_attempts)
    assert "handed_back" in types and "reclaimed" not in types, types
    assert gone_after < 15
    out = _finish_after_restart(la, jid)
    assert out["attempts"] == 2 and out["max_attempts"] == 4, out


def test_sigterm_of_the_launcher_hands_the_job_back(launcher):
    la = launcher
    jid, procs = _running_job(la)
    t0 = time.monotonic()
    la.proc.send_signal(signal.SIGTERM)
    la.proc.wait(60)
    took = time.monotonic() - t0
    assert not la.processes()
    job, types = _job_row(la.data, jid)
    assert job.status == "queued" and job.attempts == 1 and job.max_attempts == 4, (job.status, job.attempts, job.max_attempts)
    assert types.count("handed_back") == 1 and "reclaimed" not in types, types
    assert took < 30  # at once, not after the 60 s heartbeat timeout
    out = _finish_after_restart(la, jid)
    assert out["attempts"] == 2 and out["max_attempts"] == 4, out

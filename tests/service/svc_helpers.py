"""Helpers of the service tests (imported by conftest.py and the test modules)."""
from __future__ import annotations

import contextlib
import os
import signal
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = os.environ.get("GAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
# the read-only shared CamVid: GAS_TEST_CAMVID, else $GAS_SHARED/datasets/camvid, else ../shared beside the checkout
CAMVID = Path(os.environ.get("GAS_TEST_CAMVID") or
              Path(os.environ.get("GAS_SHARED", REPO.parent / "shared")) / "datasets" / "camvid")
TINY_SEARCH = {  # the tiny real search of the end-to-end tests
    "epochs": 2, "warmup_epochs": 1, "cells": 3, "reduction_cells": [1], "nodes": 2, "init_channels": 8,
    "batch_size": 2, "dataset_limit": 8,
    "advanced": {"network": {"stem_channels": 8, "head_channels": 16},
                 "latency": {"repeats": 3, "warmup_runs": 1}, "fps_iters": 5},
}
TINY_BUDGET = {"latency_ms": 50.0, "height": 64, "width": 96}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ databases
def create_pg_db() -> tuple[str, str]:
    name = f"gas_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_pg_db(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_cleanup(prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}*"))
    if keys:
        r.delete(*keys)
    r.close()


# --------------------------------------------------------------------------------------- data
# ------------------------------------------------------------------------------------- stacks
class Stack:
    """A running service: API (uvicorn subprocess), Celery worker subprocess, optional sweeper loop."""

    def __init__(self, name: str, base: Path, env: dict[str, str]):
        self.name, self.base, self.env = name, base, env
        self.port = int(env["GAS_API_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.api_key: str | None = None

    def _spawn(self, key: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.logs / f"{key}.log", "ab")
        p = subprocess.Popen(argv, env=self.env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs[key] = p
        return p

    def migrate(self) -> None:
        subprocess.run([PY, "-m", "storage.migrate", "upgrade", "head"], env=self.env, cwd=str(REPO), check=True,
                       capture_output=True)

    def create_key(self, tenant: str = "default", name: str = "tests") -> str:
        """A new API key for ``tenant`` (created if missing), made through the admin command."""
        out = subprocess.run([PY, "-m", "api.admin", "keys", "create", tenant, "--name", name, "--create-tenant"],
                             env=self.env, cwd=str(REPO), check=True, capture_output=True, text=True)
        return out.stdout.strip().splitlines()[-1]

    def use_key(self, key: str) -> None:
        """Every request of ``self.http`` (and CLI runs with ``self.env``) sends ``key``."""
        self.api_key = key
        self.env["GAS_API_KEY"] = key
        self.http.headers["Authorization"] = f"Bearer {key}"

    def client(self, key: str | None = None, **kw) -> httpx.Client:
        """A new HTTP client of this stack sending ``key`` (default: the stack's key)."""
        key = key or self.api_key
        return httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {key}"} if key else {}, **kw)

    def start_api(self) -> None:
        self._spawn("api", [PY, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1",
                            "--port", str(self.port), "--log-level", "warning"])
        wait_until(lambda: self._up(), 30, "API up")

    def _up(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def start_worker(self, key: str = "worker") -> subprocess.Popen:
        log = self.logs / f"{key}.log"
        before = log.read_bytes().count(b" ready.") if log.exists() else 0
        p = self._spawn(key, [PY, "-m", "worker", "--hostname", f"{self.name}-{uuid.uuid4().hex[:6]}@%h"])
        wait_until(lambda: log.read_bytes().count(b" ready.") > before, 30, "worker ready",
                   lambda: self.log_tail(key, 1500))
        return p

    def stop_worker(self, sig: int = signal.SIGTERM, key: str = "worker") -> None:
        p = self.procs.pop(key, None)
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            p.wait(30)

    def start_sweeper(self) -> None:
        self._spawn("sweeper", [PY, "-m", "worker.sweeper"])

    def sweep_once(self) -> None:
        subprocess.run([PY, "-m", "worker.sweeper", "--once"], env=self.env, cwd=str(REPO), check=True,
                       capture_output=True, timeout=60)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.http.close()

    # helpers
    def job(self, job_id: str) -> dict:
        r = self.http.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, job_id: str, statuses, timeout: float = 120) -> dict:
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)
        box = {}

        def check():
            box["job"] = self.job(job_id)
            return box["job"]["status"] in statuses
        wait_until(check, timeout, f"job {job_id} in {statuses}", lambda: box.get("job"))
        return box["job"]

    def events(self, job_id: str) -> list[dict]:
        return self.http.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 200}).json()["items"]

    def log_tail(self, key: str, n: int = 4000) -> str:
        p = self.logs / f"{key}.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""


def wait_until(cond, timeout: float, what: str, state=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last state: {state() if state else None}")


def make_stack(name: str, tmp_path_factory, datasets_root: Path, lut_dir: Path | None, **overrides) -> tuple[Stack, str, str]:
    db_name, db_url = create_pg_db()
    prefix = f"gas-test-{uuid.uuid4().hex[:8]}:"
    base = tmp_path_factory.mktemp(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAS_")}
    env.update({
        "PYTHONPATH": str(REPO), "GAS_DATA_DIR": str(base / "data"), "GAS_DATABASE_URL": db_url,
        "GAS_BROKER_URL": REDIS_URL, "GAS_BROKER_KEY_PREFIX": prefix, "GAS_QUEUE_NAME": f"jobs-{name}",
        "GAS_DATASETS_ROOT": str(datasets_root), "GAS_API_PORT": str(free_port()),
        "GAS_HEARTBEAT_INTERVAL_S": "0.5", "GAS_HEARTBEAT_TIMEOUT_S": "4", "GAS_REDISPATCH_AFTER_S": "3",
        "GAS_SWEEP_INTERVAL_S": "1", "GAS_CANCEL_GRACE_S": "3", "GAS_PROGRESS_MIN_INTERVAL_S": "0.2",
        "GAS_LOG_LEVEL": "info", "OMP_NUM_THREADS": "2", "GAS_AUTH_CACHE_TTL_S": "1",
        "GAS_QUOTA_CONCURRENT_JOBS": "64", "GAS_QUOTA_VALIDATION_JOBS": "64", "GAS_DASHBOARD_REFRESH_S": "0.3",
    })
    if lut_dir is not None:
        env["GAS_LUT_DIR"] = str(lut_dir)
    env.update({f"GAS_{k.upper()}": str(v) for k, v in overrides.items()})
    stack = Stack(name, base, env)
    stack.migrate()
    stack.use_key(stack.create_key("default"))  # the suite's clients send a valid key by default
    stack.start_api()
    return stack, db_name, prefix


def copy_camvid_tiny(root: Path) -> Path:
    """<root>/camvid_tiny: 8 frames per split copied from the shared read-only CamVid; returns root."""
    if not (CAMVID / "train.txt").is_file():
        raise AssertionError(f"CamVid not found at {CAMVID} (set GAS_SHARED or GAS_TEST_CAMVID)")
    dst = root / "camvid_tiny"
    for split in ("train", "val", "test"):
        (dst / split).mkdir(parents=True)
        (dst / f"{split}annot").mkdir()
        for stem in (CAMVID / f"{split}.txt").read_text().split()[:8]:
            shutil.copy(CAMVID / split / f"{stem}.jpg", dst / split)
            shutil.copy(CAMVID / f"{split}annot" / f"{stem}.png", dst / f"{split}annot")
    return root


def running_stack(name: str, tmp_path_factory, datasets_root: Path, lut_dir: Path | None, **overrides):
    """A started stack (API, worker, sweeper) for a fixture to yield; torn down, database and Redis keys dropped."""
    stack, db_name, prefix = make_stack(name, tmp_path_factory, datasets_root, lut_dir, **overrides)
    try:
        stack.start_worker()
        stack.start_sweeper()
        yield stack
    finally:
        stack.stop()
        drop_pg_db(db_name)
        redis_cleanup(prefix)


def register_tiny(http: httpx.Client, timeout: float = 120.0) -> str:
    """Register the tiny CamVid copy and wait for its validation job to make it ready."""
    r = http.post("/api/v1/datasets", json={"name": "tiny", "path": "camvid_tiny"})
    assert r.status_code == 201, r.text
    return wait_dataset(http, r.json()["id"], timeout)["id"]


def wait_dataset(http: httpx.Client, dataset_id: str, timeout: float = 120.0, want: str = "ready") -> dict:
    box: dict = {}

    def done() -> bool:
        box["ds"] = http.get(f"/api/v1/datasets/{dataset_id}").json()
        return box["ds"]["status"] != "validating"

    wait_until(done, timeout, f"validation of dataset {dataset_id}", lambda: box.get("ds"))
    assert box["ds"]["status"] == want, box["ds"]
    return box["ds"]


def db_session(stack: Stack):
    from storage.db import get_sessionmaker

    return get_sessionmaker(stack.env["GAS_DATABASE_URL"])()


def settings_of(stack: Stack):
    from storage.settings import ServiceSettings

    return ServiceSettings(**{k[4:].lower(): v for k, v in stack.env.items()
                              if k.startswith("GAS_") and k[4:].lower() in ServiceSettings.model_fields})


def fake_search_body(dataset_id: str, *, epochs: int = 2, steps: int = 4, batch: int = 1, seed: int = 0,
                     latency_ms: float = 50.0) -> dict:
    return {"dataset_id": dataset_id, "budget": {"latency_ms": latency_ms, "height": 64, "width": 96},
            "settings": {"epochs": epochs, "warmup_epochs": 0, "batch_size": batch, "seed": seed,
                         "advanced": {"search": {"steps_per_epoch": steps}}}}


def sqlite_stack(name: str, tmp_path_factory, datasets_root: Path, **overrides):
    """The embedded mode's storage (SQLite database, kombu's SQLAlchemy broker on a SQLite file), API
    only (no worker: jobs stay queued) for a fixture to yield; where SQLite behaves differently."""
    base = tmp_path_factory.mktemp(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAS_")}
    env.update({"PYTHONPATH": str(REPO), "GAS_DATA_DIR": str(base / "data"), "GAS_DATASETS_ROOT": str(datasets_root),
                "GAS_API_PORT": str(free_port()), "GAS_LOG_LEVEL": "info", "GAS_AUTH_CACHE_TTL_S": "1",
                "GAS_QUOTA_CONCURRENT_JOBS": "64", "GAS_QUOTA_VALIDATION_JOBS": "64"})
    env.update({f"GAS_{k.upper()}": str(v) for k, v in overrides.items()})
    (base / "data").mkdir(parents=True, exist_ok=True)
    stack = Stack(name, base, env)
    try:
        stack.migrate()
        stack.use_key(stack.create_key("default"))
        stack.start_api()
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def ui_client(stack: Stack, key: str | None = None, **kw):
    """(A context manager) an HTTP client of the stack's dashboard signed in with ``key`` (default: the
    stack's key) through the sign-in form, as a browser does: it holds the session cookie, no key header."""
    import re

    with httpx.Client(base_url=stack.url, timeout=30, **kw) as c:
        page = c.get("/ui/signin")
        assert page.status_code == 200, page.text
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = c.post("/ui/signin", data={"api_key": key or stack.api_key, "csrf": token, "next": ""})
        assert r.status_code == 303 and r.headers["location"].endswith("/ui/jobs"), (r.status_code, r.text[:500])
        yield c


def ui_csrf(html: str) -> str:
    """The CSRF token a dashboard page puts in its forms."""
    import re

    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def check_download_protocol(http: httpx.Client, url: str, whole: bytes, content_type: str) -> None:
    """An artifact download behaves as RFC 9110 says (issue 10 §6): HEAD = GET's headers without a body;
    ETag is the quoted sha256 and If-None-Match (weak comparison, lists, *) answers 304; one byte range
    is 206 with Content-Range; If-Range with another tag, a malformed range, another unit and several
    ranges are ignored (200, the whole file); a range past the end is 416 problem+json with
    Content-Range: bytes */size; the content type is the documented one."""
    import hashlib

    size, sha = len(whole), hashlib.sha256(whole).hexdigest()
    full = http.get(url)
    assert full.status_code == 200 and full.content == whole, full.text[:300]
    assert full.headers["content-type"].split(";")[0] == content_type, full.headers
    assert full.headers["etag"] == f'"{sha}"' and full.headers["accept-ranges"] == "bytes"
    head = http.head(url)
    assert head.status_code == 200 and head.content == b"", head
    for h in ("etag", "content-type", "content-length", "last-modified", "x-checksum-sha256"):
        assert head.headers[h] == full.headers[h], (h, head.headers, full.headers)
    assert int(head.headers["content-length"]) == size
    for inm in (f'"{sha}"', f'W/"{sha}"', f'"nope", "{sha}"', "*"):
        r = http.get(url, headers={"If-None-Match": inm})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == f'"{sha}"', (inm, r.status_code)
        assert http.head(url, headers={"If-None-Match": inm}).status_code == 304
    assert http.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    for rng, (a, b) in {"bytes=1-4": (1, 4), "bytes=3-": (3, size - 1), "bytes=-5": (size - 5, size - 1),
                        f"bytes=2-{10 ** 30}": (2, size - 1), "BYTES = 0-0": (0, 0)}.items():
        r = http.get(url, headers={"Range": rng})
        assert r.status_code == 206 and r.content == whole[a:b + 1], (rng, r.status_code, r.headers)
        assert r.headers["content-range"] == f"bytes {a}-{b}/{size}", (rng, r.headers)
    r = http.get(url, headers={"Range": "bytes=1-4", "If-Range": f'"{sha}"'})
    assert r.status_code == 206 and r.content == whole[1:5]
    for headers in ({"Range": "bytes=1-4", "If-Range": '"stale"'}, {"Range": "bytes=1-4", "If-Range": f'W/"{sha}"'},
                    {"Range": "bytes=abc"}, {"Range": "bytes=5-2"}, {"Range": "items=0-3"}, {"Range": "bytes=0-1,3-4"},
                    {"Range": "bytes=-"}, {"Range": "bytes 0-3"}, {"Range": ""}):
        r = http.get(url, headers=headers)
        assert r.status_code == 200 and r.content == whole, (headers, r.status_code, r.text[:200])
    for rng in (f"bytes={size}-", f"bytes={10 ** 40}-", "bytes=-0"):
        r = http.get(url, headers={"Range": rng})
        assert r.status_code == 416, (rng, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("application/problem+json"), r.headers
        assert r.headers["content-range"] == f"bytes */{size}"
        body = r.json()
        assert body["status"] == 416 and str(size) in body["detail"] and body["size"] == size, body

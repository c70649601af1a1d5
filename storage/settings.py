"""Typed service settings (environment variables prefixed ``GAS_``).

Every field has a name, a default and a one-line description; ``python -m storage.settings``
prints them as the markdown table that docs/SERVICE.md embeds.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


PAGE_SIZE_LIMIT = 100_000
"""Hard bound of a page size (GAS_PAGE_SIZE_MAX cannot exceed it; the API's schema states it)."""


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GAS_", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="Base directory of the embedded defaults (database, broker, artifacts, work dirs).")
    database_url: str = Field("", description="SQLAlchemy URL of the job database; empty = SQLite file `<data_dir>/gas.db`.")
    broker_url: str = Field("", description="Celery broker URL (e.g. redis://redis:6379/0); empty = `sqla+sqlite:///<data_dir>/broker.db` (no server).")
    queue_name: str = Field("gas-jobs", description="Celery queue the job messages go to.")
    broker_key_prefix: str = Field("", description="Redis key prefix of the broker (isolates deployments/tests sharing one Redis).")
    broker_visibility_timeout_s: int = Field(86400, ge=60, description="Redis: seconds before an unacked message is redelivered (late acks; long jobs). Lost workers are handled by the sweeper, not by this.")
    artifact_dir: Path | None = Field(None, description="Root of the local artifact store; empty = `<data_dir>/artifacts`.")
    work_dir: Path | None = Field(None, description="Root of per-job work dirs (checkpoints; must be shared by all workers); empty = `<data_dir>/work`.")
    lut_dir: Path | None = Field(None, description="Directory of latency lookup tables reused across jobs; empty = `<data_dir>/luts`.")
    datasets_root: Path = Field(Path("datasets"), description="Only directories under this root can be registered as datasets.")
    upload_dir: Path | None = Field(None, description="Where uploaded archives are extracted (one folder per tenant and sha256); empty = `<data_dir>/uploads`.")
    cache_dir: Path | None = Field(None, description="Prepared-data cache (decoded, resized uint8 tensors per dataset and resolution) shared by all jobs; empty = `<data_dir>/cache`.")
    upload_max_bytes: int = Field(8 * 2**30, ge=1, description="Largest accepted upload (bytes, counted while streaming; 413 past it).")
    archive_max_members: int = Field(200_000, ge=1, description="Most members an uploaded archive may hold.")
    archive_max_total_bytes: int = Field(40 * 2**30, ge=1, description="Most uncompressed bytes an archive may expand to (counted while extracting).")
    archive_max_ratio: float = Field(200.0, gt=1, description="Highest accepted uncompressed/compressed size ratio of an archive.")
    archive_max_member_ratio: float = Field(200.0, gt=1, description="Highest accepted uncompressed/compressed ratio of one archive member (checked while it expands, past its first MiB), so one bomb cannot hide among incompressible files.")
    upload_idle_timeout_s: float = Field(60.0, gt=0, le=3600, description="An upload that sends no byte for this long is answered 408 and its partial file removed (a stalled client cannot hold a connection and disk).")
    upload_max_duration_s: float = Field(6 * 3600.0, gt=0, description="An upload still streaming after this long is answered 408 and removed (a slow-drip client cannot hold it forever).")
    archive_max_member_depth: int = Field(32, ge=1, le=1024, description="Most directories an archive member's name may have (deeper: 422 `too_deep`).")
    archive_max_name_bytes: int = Field(1024, ge=16, le=4096, description="Longest archive member name in UTF-8 bytes (longer, or a component over 255 bytes: 422 `name_too_long`).")
    validation_max_bad_per_kind: int = Field(20, ge=1, description="Bad files listed per kind of problem in a validation report.")
    default_tenant: str = Field("default", description="Tenant the embedded mode creates (with its first API key) at first start.")

    # --- tenants, API keys, quotas -----------------------------------------------------------
    quota_concurrent_jobs: int = Field(16, ge=1, description="Default per-tenant cap on queued + running jobs (search, retrain, benchmark, feasibility); past it 429 + Retry-After. A tenant row can override it.")
    quota_storage_bytes: int = Field(100 * 2**30, ge=0, description="Default per-tenant cap on stored bytes (artifacts + uploaded datasets); past it new jobs and uploads are refused with 409. A tenant row can override it.")
    quota_validation_jobs: int = Field(4, ge=1, description="Per-tenant cap on queued + running validation jobs (one per dataset registration or upload); past it the registration is answered 429 + Retry-After.")
    quota_retry_after_s: int = Field(30, ge=1, description="Retry-After (seconds) of a 429 answered for the concurrent-jobs quota.")
    operator_tenants: str = Field("", description="Comma-separated tenants that may delete the shared latency tables through the API (`DELETE /latency-tables/{id}`); empty = none (gas-serve makes it its default tenant). Every tenant may list and inspect them.")
    auth_cache_ttl_s: float = Field(5.0, ge=0, description="Seconds an API process trusts a verified key without asking the database again (a revoked key stops working within this; 0 = always ask).")

    # --- job lifecycle ------------------------------------------------------------------------
    max_attempts: int = Field(3, ge=1, le=100, description="Attempts per job before it ends `failed` (worker loss or child crash counts).")
    heartbeat_interval_s: float = Field(5.0, gt=0, description="How often a worker stamps the heartbeat of the job it runs.")
    heartbeat_timeout_s: float = Field(60.0, gt=0, description="A running job whose heartbeat is older than this is reclaimed by the sweeper.")
    redispatch_after_s: float = Field(120.0, gt=0, description="A queued job not claimed this long after its last dispatch is re-enqueued (doubling per re-dispatch, capped at 1 h).")
    sweep_interval_s: float = Field(15.0, gt=0, description="Period of the sweeper loop.")
    cancel_grace_s: float = Field(30.0, gt=0, description="After a cancel request, seconds a running job gets to stop at a step boundary before it is killed.")
    progress_min_interval_s: float = Field(1.0, ge=0, description="Minimum seconds between two progress writes of one job (events are always written).")
    job_max_wall_s: float = Field(86400.0, gt=0, description="Longest wall-clock time a job's processes may run, summed over its attempts; past it the job process is stopped and the job ends `failed` with the reason.")
    job_memory_limit_bytes: int = Field(0, ge=-1, description="Memory limit of a job process (RLIMIT_DATA: heap and private writable mappings, which CUDA's PROT_NONE address-space reservations are not); 0 = 80 % of the host's RAM, -1 = no limit. Past it allocations fail and the job ends `failed` naming the limit; the worker survives.")
    job_max_memory_bytes: int = Field(80 * 2**30, ge=2**20, description="Cap on a job's estimated training memory (parameters, gradients, optimizer state and saved activations at the requested batch and crop, x1.25; core/cost.py); past it submission is 422 with the estimate. Default: one 80 GB GPU.")
    job_max_pixel_passes: int = Field(10**12, ge=10**6, description="Cap on a job's estimated compute: steps x batch x crop pixels (x2 for the search's weight and architecture steps; a benchmark's iterations x pixels); past it submission is 422 with the estimate. Default: about a day of one 80 GB GPU (~1000x the default CamVid search).")
    tenant_max_running: int = Field(2, ge=1, description="Fairness: most jobs of one tenant running at once across all workers; a worker that receives a job of a tenant at the cap leaves it queued (event `deferred`) and it is sent again when one of that tenant's jobs ends. Set it below the number of workers so one tenant never holds them all.")
    device_lock: bool = Field(True, description="Workers on one host take an exclusive lock per device (GAS_DEVICE_ID) for search, retrain and benchmark jobs, held by the job process itself, so one device never runs two measuring jobs at once (not even an orphaned one).")
    device_id: str = Field("", description="Name of the device this worker uses for the device lock; empty = `cuda:<CUDA_VISIBLE_DEVICES>` when that is set, else `cpu`.")
    device_lock_wait_s: float = Field(600.0, gt=0, description="How long a claimed job waits for its device lock (heart-beating) before it is handed back, uncharged, for later.")
    progress_pulse_s: float = Field(2.0, gt=0, le=3600, description="A running job's progress is re-sent with its elapsed time and ETA at least this often, so no phase looks hung.")
    job_kind_overrides: str = Field("", description="TESTS ONLY: JSON map kind -> 'module:function' replacing the core entry point of a job kind.")
    worker_pool: str = Field("solo", description="Celery pool of `python -m worker` (solo: one job per worker process, the GPU-per-worker model).")
    worker_concurrency: int = Field(1, ge=1, description="Celery concurrency of `python -m worker` (keep 1 per GPU).")

    # --- API ----------------------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Bind address of the API (embedded mode binds to loopback only).")
    api_port: int = Field(8000, ge=1, le=65535, description="Port of the API.")
    api_workers: int = Field(1, ge=1, le=64, description="Uvicorn worker processes of the API.")
    json_max_bytes: int = Field(1 << 20, ge=1024, le=64 << 20, description="Largest JSON request body (bytes, declared or counted); past it 413 problem+json. Archive uploads have their own cap.")
    page_size_default: int = Field(50, ge=1, le=PAGE_SIZE_LIMIT, description="Default page size of list endpoints.")
    page_size_max: int = Field(200, ge=1, le=PAGE_SIZE_LIMIT, description="Cap on the page size of list endpoints.")
    db_pool_size: int = Field(10, ge=1, description="SQLAlchemy connection pool size (PostgreSQL).")
    readiness_timeout_s: float = Field(2.0, gt=0, description="Timeout of each /readyz probe (database, broker).")
    log_level: str = Field("info", description="Log level of API, worker and sweeper.")

    # --- dashboard (api/dashboard: server-rendered pages under /ui) -------------------------------
    dashboard_secret: str = Field("", description="Key signing the dashboard's session cookies; empty = a random one kept in `<data_dir>/dashboard.secret` (created once; share the data dir, or set this, when API processes run on several machines).")
    dashboard_session_ttl_s: int = Field(8 * 3600, ge=60, le=30 * 86400, description="Lifetime of a dashboard session (seconds) after signing in with an API key.")
    dashboard_live: str = Field("sse", pattern="^(sse|poll)$", description="How dashboard pages follow running jobs: `sse` (Server-Sent Events, htmx SSE extension) or `poll` (periodic requests, for proxies that buffer SSE). `?live=poll` on a page overrides it.")
    dashboard_refresh_s: float = Field(1.0, ge=0.2, le=60, description="Interval of the dashboard's SSE checks and of its polling (seconds).")

    # --- derived ------------------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'gas.db').resolve()}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def artifacts_path(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @property
    def work_path(self) -> Path:
        return (self.work_dir or self.data_dir / "work").resolve()

    @property
    def lut_path(self) -> Path:
        return (self.lut_dir or self.data_dir / "luts").resolve()

    @property
    def upload_path(self) -> Path:
        return (self.upload_dir or self.data_dir / "uploads").resolve()

    @property
    def cache_path(self) -> Path:
        return (self.cache_dir or self.data_dir / "cache").resolve()

    def operators(self) -> set[str]:
        return {t.strip() for t in self.operator_tenants.split(",") if t.strip()}

    def kind_overrides(self) -> dict[str, str]:
        return json.loads(self.job_kind_overrides) if self.job_kind_overrides else {}

    @property
    def lock_path(self) -> Path:
        """Device locks of the workers of this host (under the data dir)."""
        return (self.data_dir / "locks").resolve()

    def device_name(self) -> str:
        if self.device_id:
            return self.device_id
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        return f"cuda:{visible}" if visible else "cpu"

    def job_memory_limit(self) -> int:
        """Bytes a job process may allocate (``GAS_JOB_MEMORY_LIMIT_BYTES``: 0 = 80 % of the RAM; -1 = no limit, returned as 0)."""
        if self.job_memory_limit_bytes < 0:
            return 0  # no limit
        if self.job_memory_limit_bytes:
            return self.job_memory_limit_bytes
        try:
            return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return 0

    def ensure_dirs(self) -> None:
        for p in (self.data_dir, self.artifacts_path, self.work_path, self.lut_path, self.upload_path, self.cache_path):
            Path(p).mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    return ServiceSettings()


def settings_table() -> str:
    rows = ["| Variable | Default | Description |", "|---|---|---|"]
    for name, f in ServiceSettings.model_fields.items():
        default = f.default
        shown = "(empty)" if default in ("", None) else f"`{default}`"
        rows.append(f"| `GAS_{name.upper()}` | {shown} | {f.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())

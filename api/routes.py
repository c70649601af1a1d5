"""Route handlers (thin: parse, call a service, shape the response)."""
from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from storage.db import get_sessionmaker
from storage.settings import PAGE_SIZE_LIMIT

from . import quotas
from . import submissions as sub
from . import latency as lat
from . import services as svc
from .auth import Authenticated
from .deps import ReaderDep, SessionDep, SettingsDep, StoreDep, TenantAsyncDep, TenantDep
from .downloads import DOWNLOAD_TYPES, artifact_response
from .problems import PROBLEM, Problem, problem_response
from .schemas import (ArtifactList, BenchmarkJobCreate, DatasetCreate, DatasetList, DatasetOut, DatasetUploadParams,
                      EventList, FeasibilityCreate, Health, JobList, JobOut, LatencyTableDetail, LatencyTableList,
                      RetrainJobCreate, SearchJobCreate)

PROBLEM_RESPONSES = {code: {"content": {PROBLEM: {}}, "description": desc} for code, desc in
                     {400: "Malformed request body (problem+json); a request line or header section past 64 KiB "
                           "(e.g. a very long query) is refused by the HTTP server itself with text/plain",
                      401: "Missing, invalid or revoked API key (problem+json, WWW-Authenticate)",
                      403: "Forbidden (problem+json)", 404: "Unknown id (problem+json)",
                      409: "Conflict, or the tenant's storage quota is used up (problem+json)",
                      413: "Request body larger than GAS_JSON_MAX_BYTES (problem+json)",
                      422: "Invalid request (problem+json)",
                      429: "A quota of the tenant is reached: concurrent jobs, or validation jobs for a registration (problem+json, Retry-After)",
                      503: "The database is unreachable (problem+json, Retry-After)"}.items()}
PROBLEM_RESPONSES[400]["content"]["text/plain"] = {"schema": {"type": "string"}}
AUTH_RESPONSES = {401: PROBLEM_RESPONSES[401], 503: PROBLEM_RESPONSES[503]}
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                       description="Retrying a POST with the same key returns the same job.")]
# every integer a client sends has both bounds (past them: 422, never a database overflow)
MAX_INT64 = 2**63 - 1
Limit = Annotated[int | None, Query(ge=1, le=PAGE_SIZE_LIMIT, description="Page size (default GAS_PAGE_SIZE_DEFAULT, capped at GAS_PAGE_SIZE_MAX).")]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]

# Every /api/v1 route needs an API key (api.auth); handlers get the tenant from the same dependency.
api = APIRouter(prefix="/api/v1", responses=PROBLEM_RESPONSES, dependencies=[Authenticated])
system = APIRouter()


def _limit(settings, limit: int | None) -> int:
    if limit is None:
        return settings.page_size_default
    if limit > settings.page_size_max:
        raise Problem(422, f"limit: at most {settings.page_size_max}", type_="/problems/validation",
                      errors=[{"loc": ["query", "limit"], "field": "limit",
                               "msg": f"at most {settings.page_size_max}", "type": "less_than_equal"}])
    return limit


# ------------------------------------------------------------------------------------------ datasets
@api.post("/datasets", status_code=201, response_model=DatasetOut, tags=["datasets"],
          summary="Register a server-side directory (status validating until its validation job ends)")
def register_dataset(body: DatasetCreate, s: SessionDep, settings: SettingsDep, tenant: TenantDep, response: Response):
    ds = svc.register_dataset(s, settings, tenant, body)
    response.headers["Location"] = f"/api/v1/datasets/{ds.id}"
    return svc.dataset_out(s, ds, settings)


UPLOAD_BODY = {"requestBody": {"required": True, "description": "The archive: zip, tar or tar.gz (kind read from its content).",
                               "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                                           "application/zip": {"schema": {"type": "string", "format": "binary"}},
                                           "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                                           "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}}


@api.post("/datasets/uploads", status_code=201, response_model=DatasetOut, tags=["datasets"],
          summary="Upload an archive as a dataset (streamed; 413 past the cap; same archive = same dataset)",
          openapi_extra=UPLOAD_BODY, responses={200: {"model": DatasetOut, "description": "The same archive was already uploaded"},
                                                413: {"content": {PROBLEM: {}}, "description": "Upload too large"},
                                                408: {"content": {PROBLEM: {}}, "description": "Upload stalled or too slow (GAS_UPLOAD_IDLE_TIMEOUT_S, GAS_UPLOAD_MAX_DURATION_S)"}})
async def upload_dataset(request: Request, params: Annotated[DatasetUploadParams, Query()], settings: SettingsDep,
                         tenant: TenantAsyncDep):
    declared = request.headers.get("content-length")

    def precheck() -> None:  # quotas before a byte is streamed (validation slots, declared size)
        with get_sessionmaker(settings.db_url, settings.db_pool_size)() as s:
            quotas.precheck_upload(s, settings, tenant, int(declared) if declared and declared.isdigit() else None)

    await run_in_threadpool(precheck)
    tmp, sha, size = await svc.receive_upload(request, settings)

    def register() -> tuple[dict, bool]:
        with get_sessionmaker(settings.db_url, settings.db_pool_size)() as s:
            ds, created = svc.register_upload(s, settings, tenant, params, tmp, sha, size)
            return svc.dataset_out(s, ds, settings), created

    out, created = await run_in_threadpool(register)
    return JSONResponse(DatasetOut.model_validate(out).model_dump(mode="json"), status_code=201 if created else 200,
                        headers={"Location": f"/api/v1/datasets/{out['id']}"})


@api.delete("/datasets/{dataset_id}", status_code=204, tags=["datasets"],
            summary="Delete a dataset (409 while a queued or running job uses it)")
def delete_dataset(dataset_id: str, s: SessionDep, settings: SettingsDep, tenant: TenantDep):
    svc.delete_dataset(s, settings, tenant, dataset_id)
    return Response(status_code=204)


@api.get("/datasets", response_model=DatasetList, tags=["datasets"])
def list_datasets(s: SessionDep, settings: SettingsDep, tenant: TenantDep, limit: Limit = None, offset: Offset = 0):
    n = _limit(settings, limit)
    items = svc.list_datasets(s, tenant, n, offset)
    return dict(items=[svc.dataset_out(s, d, settings) for d in items], limit=n, offset=offset,
                next_offset=offset + n if len(items) == n else None)


@api.get("/datasets/{dataset_id}", response_model=DatasetOut, tags=["datasets"])
def get_dataset(dataset_id: str, s: SessionDep, settings: SettingsDep, tenant: TenantDep):
    return svc.dataset_out(s, svc.get_dataset(s, tenant, dataset_id), settings)


# -------------------------------------------------------------------------------------------- jobs
def _accepted(job, created: bool) -> JSONResponse:
    headers = {"Location": f"/api/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(JobOut.model_validate(svc.job_out(job)).model_dump(mode="json"), status_code=202,
                        headers=headers)


@api.post("/jobs/search", status_code=202, response_model=JobOut, tags=["jobs"],
          summary="Submit a search job (202 + Location)")
def submit_search(body: SearchJobCreate, s: SessionDep, settings: SettingsDep, tenant: TenantDep,
                  idempotency_key: IdemKey = None):
    return _accepted(*sub.submit_search(s, settings, tenant, body, idempotency_key))


@api.post("/jobs/retrain", status_code=202, response_model=JobOut, tags=["jobs"],
          summary="Submit a retrain job for a search job's genotype or an inline genotype")
def submit_retrain(body: RetrainJobCreate, s: SessionDep, settings: SettingsDep, tenant: TenantDep,
                   idempotency_key: IdemKey = None):
    return _accepted(*sub.submit_retrain(s, settings, tenant, body, idempotency_key))


@api.post("/jobs/benchmark", status_code=202, response_model=JobOut, tags=["jobs"],
          summary="Measure a genotype's latency/FPS at a resolution")
def submit_benchmark(body: BenchmarkJobCreate, s: SessionDep, settings: SettingsDep, tenant: TenantDep,
                     idempotency_key: IdemKey = None):
    return _accepted(*sub.submit_benchmark(s, settings, tenant, body, idempotency_key))


@api.post("/jobs/feasibility", status_code=202, response_model=JobOut, tags=["jobs", "latency"],
          summary="What budgets are feasible: latency of the cheapest, a typical and the dearest network of a search "
                  "space at a resolution on the workers' device (from the cached validated table, or a short measuring job)")
def submit_feasibility(body: FeasibilityCreate, s: SessionDep, settings: SettingsDep, tenant: TenantDep,
                       idempotency_key: IdemKey = None):
    return _accepted(*sub.submit_feasibility(s, settings, tenant, body, idempotency_key))


@api.get("/jobs", response_model=JobList, tags=["jobs"])
def list_jobs(s: SessionDep, settings: SettingsDep, tenant: TenantDep,
              kind: Literal["search", "retrain", "benchmark", "validate", "feasibility"] | None = None,
              status: Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"] | None = None,
              limit: Limit = None, offset: Offset = 0):
    n = _limit(settings, limit)
    items = svc.list_jobs(s, tenant, kind, status, n, offset)
    return dict(items=[svc.job_out(j) for j in items], limit=n, offset=offset,
                next_offset=offset + n if len(items) == n else None)


@api.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
async def get_job(job_id: str, reader: ReaderDep, tenant: TenantAsyncDep):
    body = await reader.job_json(tenant, job_id)
    if body is None:
        raise Problem(404, f"no job {job_id}")
    return Response(body, media_type="application/json")


@api.post("/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"],
          responses={200: {"description": "Cancelled at once (was queued)"},
                     202: {"description": "Cancel requested; the job stops at its next step boundary"}})
def cancel_job(job_id: str, s: SessionDep, tenant: TenantDep):
    out = svc.cancel_job(s, tenant, job_id)
    code = 200 if out.job.status == "cancelled" else 202
    return JSONResponse(JobOut.model_validate(svc.job_out(out.job)).model_dump(mode="json"), status_code=code)


@api.get("/jobs/{job_id}/events", response_model=EventList, tags=["jobs"])
def job_events(job_id: str, s: SessionDep, settings: SettingsDep, tenant: TenantDep,
               after: Annotated[int, Query(ge=0, le=MAX_INT64, description="Return events with id > after.")] = 0,
               limit: Limit = None):
    n = _limit(settings, limit)
    items = svc.list_events(s, tenant, job_id, after, n)
    return dict(items=[dict(id=e.id, ts=e.ts, attempt=e.attempt, type=e.type, message=e.message, data=e.data)
                       for e in items], next_after=items[-1].id if items else after)


@api.get("/jobs/{job_id}/artifacts", response_model=ArtifactList, tags=["artifacts"])
def job_artifacts(job_id: str, s: SessionDep, tenant: TenantDep):
    return dict(items=[dict(name=a.name, size=a.size, sha256=a.sha256, content_type=a.content_type,
                            created_at=a.created_at, url=f"/api/v1/jobs/{job_id}/artifacts/{a.name}")
                       for a in svc.list_artifacts(s, tenant, job_id)])


ARTIFACT_HEADERS = {
    "ETag": {"description": "The sha256 of the file, quoted (strong validator).", "schema": {"type": "string"}},
    "Last-Modified": {"description": "When the artifact was recorded.", "schema": {"type": "string"}},
    "X-Checksum-Sha256": {"description": "The sha256 of the whole file.", "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "bytes", "schema": {"type": "string"}}}
# a .json artifact is any JSON document (report, genotype); the others are bytes
ARTIFACT_CONTENT = {t: {"schema": {} if t == "application/json" else {"type": "string", "format": "binary"}}
                    for t in DOWNLOAD_TYPES}
ARTIFACT_RESPONSES = {
    200: {"content": ARTIFACT_CONTENT, "headers": ARTIFACT_HEADERS,
          "description": "The whole file; its content type by suffix: .json application/json, .txt text/plain, "
                         ".md text/markdown, .csv text/csv, .png image/png (a retrain's samples), anything else (checkpoints, ONNX) "
                         "application/octet-stream. "
                         "A malformed Range, one of another unit or one of several ranges is ignored (RFC 9110 §14.2)."},
    206: {"content": ARTIFACT_CONTENT, "description": "One byte range (Range: bytes=FIRST-[LAST] or bytes=-SUFFIX)",
          "headers": {**ARTIFACT_HEADERS, "Content-Range": {"description": "bytes FIRST-LAST/SIZE", "required": True,
                                                             "schema": {"type": "string"}}}},
    304: {"description": "If-None-Match matched the ETag: the client's copy is current (no body)",
          "headers": {"ETag": ARTIFACT_HEADERS["ETag"]}},
    416: {"content": {PROBLEM: {}}, "description": "The range starts past the end of the file (problem+json; "
                                                   "Content-Range: bytes */SIZE)"}}


@api.get("/jobs/{job_id}/artifacts/{name}", tags=["artifacts"], response_class=Response, responses=ARTIFACT_RESPONSES,
         summary="Download an artifact (HEAD, Range, If-Range and If-None-Match supported)")
def download_artifact(job_id: str, name: str, request: Request, s: SessionDep, tenant: TenantDep, store: StoreDep):
    art = svc.get_artifact(s, tenant, job_id, name)
    path = store.local_path(art.key)
    if path is not None:
        if not path.is_file():
            raise Problem(404, f"artifact {name!r} of job {job_id} is missing from the store")
        size = path.stat().st_size
    else:
        size = art.size
    return artifact_response(request, name=art.name, sha256=art.sha256, content_type=art.content_type,
                             created_at=art.created_at, size=size, opener=lambda: store.open(art.key))


# ------------------------------------------------------------------------------------ latency tables
@api.get("/latency-tables", response_model=LatencyTableList, tags=["latency"],
         summary="Latency tables of the workers' devices (shared by every tenant; newest first)")
def list_latency_tables(settings: SettingsDep, limit: Limit = None, offset: Offset = 0,
                        height: Annotated[int | None, Query(ge=16, le=4096)] = None,
                        width: Annotated[int | None, Query(ge=16, le=4096)] = None):
    n = _limit(settings, limit)
    items = lat.list_tables(settings, n, offset, height, width)
    return dict(items=items, limit=n, offset=offset, next_offset=offset + n if len(items) == n else None)


@api.get("/latency-tables/{table_id}", response_model=LatencyTableDetail, tags=["latency"],
         summary="One latency table: identity, every entry with its spread, validations")
def get_latency_table(table_id: str, settings: SettingsDep):
    return lat.get_table(settings, table_id)


@api.delete("/latency-tables/{table_id}", status_code=204, tags=["latency"],
            summary="Delete a latency table (operator tenants only: it is shared); the next job measures it again")
def delete_latency_table(table_id: str, s: SessionDep, settings: SettingsDep, tenant: TenantDep):
    lat.delete_table(s, settings, tenant, table_id)
    return Response(status_code=204)


# ------------------------------------------------------------------------------------------ system
@system.get("/healthz", response_model=Health, tags=["system"], summary="Liveness")
async def healthz():
    return {"status": "ok", "checks": {}}


@system.get("/readyz", response_model=Health, tags=["system"], summary="Readiness: database and broker",
            responses={503: {"content": {PROBLEM: {}}, "description": "A dependency is down"}})
async def readyz(request: Request):
    settings = request.app.state.settings
    checks: dict[str, str] = {}

    def db():
        with get_sessionmaker(settings.db_url, settings.db_pool_size)() as s:
            svc.check_database(s)

    for name, fn in (("database", db), ("broker", lambda: svc.check_broker(settings))):
        try:
            await run_in_threadpool(fn)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; reported in the body
            # /readyz needs no key: name the failure, keep hosts and messages in the log only
            logging.getLogger("gas.api").warning("readiness: %s down: %s", name, str(exc)[:300])
            checks[name] = f"down: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    down = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem_response(503, f"not ready: {down} unreachable", instance="/readyz", checks=checks)


@system.get("/metrics", tags=["system"], summary="Prometheus metrics (service-wide aggregates; needs an API key)",
            dependencies=[Authenticated],
            response_class=Response, responses={200: {"content": {"text/plain": {}}}, **AUTH_RESPONSES})
def metrics(request: Request):
    return Response(generate_latest(request.app.state.metrics.scrape_registry()), media_type=CONTENT_TYPE_LATEST)

"""Job submission, one function per kind: idempotent replay, spec, cost caps, then the job row.

The API's POST /jobs/* routes and the dashboard's new-search form call these, so a submission from
either is checked by the same rules (schema, dataset, advanced allow-list, cost caps, quotas) and
answers the same problems. Each returns ``(job, created)``; ``created`` is False for an idempotent
replay (same tenant, key, kind and payload).
"""
from __future__ import annotations

from sqlalchemy.orm import Session

from storage.models import Job
from storage.settings import ServiceSettings

from . import costs
from . import latency as lat
from . import services as svc
from .schemas import BenchmarkJobCreate, FeasibilityCreate, RetrainJobCreate, SearchJobCreate


def _payload(body) -> dict:
    return body.model_dump(mode="json", by_alias=True, exclude_unset=True)


def submit_search(s: Session, settings: ServiceSettings, tenant: str, body: SearchJobCreate,
                  idem_key: str | None) -> tuple[Job, bool]:
    payload = _payload(body)
    if (job := svc.find_idempotent(s, tenant, idem_key, "search", payload)) is not None:
        return job, False
    spec, ds, warnings = svc.build_search_spec(s, tenant, body)
    costs.check_search(settings, spec, ds)  # 422 with the estimate past GAS_JOB_MAX_MEMORY_BYTES/_PIXEL_PASSES
    return svc.create_job(s, settings, tenant, kind="search", spec=spec, payload=payload, idem_key=idem_key,
                          dataset_id=ds.id, warnings=warnings)


def submit_retrain(s: Session, settings: ServiceSettings, tenant: str, body: RetrainJobCreate,
                   idem_key: str | None) -> tuple[Job, bool]:
    payload = _payload(body)
    if (job := svc.find_idempotent(s, tenant, idem_key, "retrain", payload)) is not None:
        return job, False
    spec, ds, parent = svc.build_retrain_spec(s, tenant, body)
    costs.check_retrain(settings, spec, ds)
    return svc.create_job(s, settings, tenant, kind="retrain", spec=spec, payload=payload, idem_key=idem_key,
                          dataset_id=ds.id, parent_job_id=parent)


def submit_benchmark(s: Session, settings: ServiceSettings, tenant: str, body: BenchmarkJobCreate,
                     idem_key: str | None) -> tuple[Job, bool]:
    payload = _payload(body)
    if (job := svc.find_idempotent(s, tenant, idem_key, "benchmark", payload)) is not None:
        return job, False
    spec, parent = svc.build_benchmark_spec(s, tenant, body)
    costs.check_benchmark(settings, spec)
    return svc.create_job(s, settings, tenant, kind="benchmark", spec=spec, payload=payload, idem_key=idem_key,
                          parent_job_id=parent)


def submit_feasibility(s: Session, settings: ServiceSettings, tenant: str, body: FeasibilityCreate,
                       idem_key: str | None) -> tuple[Job, bool]:
    payload = _payload(body)
    if (job := svc.find_idempotent(s, tenant, idem_key, "feasibility", payload)) is not None:
        return job, False
    spec, dataset_id = lat.build_feasibility_spec(s, tenant, body)
    return svc.create_job(s, settings, tenant, kind="feasibility", spec=spec, payload=payload, idem_key=idem_key,
                          dataset_id=dataset_id)

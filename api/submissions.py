"""Job submission, one function per kind: idempotent replay, spec, cost caps, then the job row.

The API's POST /jobs/* routes and the dashboard's new-search form call these, so a submission from
either is checked by the same rules (schema, dataset, advanced allow-list, cost caps, quotas) and
answers the same problems. Each returns ``(job, created)``; ``created`` is False for an idempotent
replay (same tenant, key, kind and payload).
"""
from __future__ import annotations

from typing import Callable

from sqlalchemy.orm import Session

from storage.models import Job
from storage.settings import ServiceSettings

from . import costs
from . import latency as lat
from . import services as svc
from .schemas import BenchmarkJobCreate, FeasibilityCreate, RetrainJobCreate, SearchJobCreate


def _submit(s: Session, settings: ServiceSettings, tenant: str, kind: str, body, idem_key: str | None,
            build: Callable[[], tuple[dict, dict]]) -> tuple[Job, bool]:
    """Idempotent replay, else ``build()`` (the spec and the job row's links; raises the 4xx), then the row."""
    payload = body.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if (job := svc.find_idempotent(s, tenant, idem_key, kind, payload)) is not None:
        return job, False
    spec, links = build()
    return svc.create_job(s, settings, tenant, kind=kind, spec=spec, payload=payload, idem_key=idem_key, **links)


def submit_search(s: Session, settings: ServiceSettings, tenant: str, body: SearchJobCreate,
                  idem_key: str | None) -> tuple[Job, bool]:
    def build() -> tuple[dict, dict]:
        spec, ds, warnings = svc.build_search_spec(s, tenant, body)
        costs.check_search(settings, spec, ds)  # 422 with the estimate past GAS_JOB_MAX_MEMORY_BYTES/_PIXEL_PASSES
        return spec, {"dataset_id": ds.id, "warnings": warnings}
    return _submit(s, settings, tenant, "search", body, idem_key, build)


def submit_retrain(s: Session, settings: ServiceSettings, tenant: str, body: RetrainJobCreate,
                   idem_key: str | None) -> tuple[Job, bool]:
    def build() -> tuple[dict, dict]:
        spec, ds, parent = svc.build_retrain_spec(s, tenant, body)
        costs.check_retrain(settings, spec, ds)
        return spec, {"dataset_id": ds.id, "parent_job_id": parent}
    return _submit(s, settings, tenant, "retrain", body, idem_key, build)


def submit_benchmark(s: Session, settings: ServiceSettings, tenant: str, body: BenchmarkJobCreate,
                     idem_key: str | None) -> tuple[Job, bool]:
    def build() -> tuple[dict, dict]:
        spec, parent = svc.build_benchmark_spec(s, tenant, body)
        costs.check_benchmark(settings, spec)
        return spec, {"parent_job_id": parent}
    return _submit(s, settings, tenant, "benchmark", body, idem_key, build)


def submit_feasibility(s: Session, settings: ServiceSettings, tenant: str, body: FeasibilityCreate,
                       idem_key: str | None) -> tuple[Job, bool]:
    def build() -> tuple[dict, dict]:
        spec, dataset_id = lat.build_feasibility_spec(s, tenant, body)
        return spec, {"dataset_id": dataset_id}
    return _submit(s, settings, tenant, "feasibility", body, idem_key, build)

"""Application factory: ``uvicorn api.app:create_app --factory``."""
from __future__ import annotations

import logging

from fastapi import FastAPI

from storage.artifacts import get_store
from storage.db import get_sessionmaker
from storage.settings import ServiceSettings, get_settings

from . import dashboard, problems
from .auth import KeyCache, add_security_to_openapi
from .limits import BodyLimitMiddleware
from .protocol import HeadMiddleware
from .metrics import JobsCollector, Metrics, MetricsMiddleware
from .routes import api, system
from .services import jobs_by_status, make_reader


def state_limits(doc: dict, settings: ServiceSettings) -> dict:
    """The document states the limits this server enforces: a page's ``limit`` is at most
    GAS_PAGE_SIZE_MAX (a setting, so filled in here rather than in the route signatures)."""
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            for p in op.get("parameters", []) if isinstance(op, dict) else []:
                if p.get("in") == "query" and p.get("name") == "limit":
                    for s in [p["schema"], *p["schema"].get("anyOf", [])]:
                        if s.get("type") == "integer":
                            s["maximum"] = settings.page_size_max
    return doc


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = FastAPI(title="GAS as a service", version="1.0.0",
                  description="Graph-guided architecture search for real-time segmentation, as jobs. "
                              "Errors are application/problem+json.")
    app.state.settings = settings
    app.state.store = get_store(settings.artifacts_path)
    app.state.reader = make_reader(settings)
    app.state.key_cache = KeyCache()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    metrics = Metrics()

    def count():
        try:
            with get_sessionmaker(settings.db_url, settings.db_pool_size)() as s:
                return jobs_by_status(s)
        except Exception:  # noqa: BLE001 - a scrape while the DB is down reports no job gauges
            logging.getLogger("gas.api").warning("job gauge: database unreachable")
            return {}

    metrics.register_extra(JobsCollector(count))
    app.state.metrics = metrics
    problems.install(app)
    app.include_router(api)
    app.include_router(system)
    app.include_router(system, prefix="/api/v1", include_in_schema=False)
    dashboard.install(app)  # server-rendered pages under /ui (docs/DASHBOARD.md)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.json_max_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(HeadMiddleware)
    base_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = state_limits(add_security_to_openapi(base_openapi()), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app

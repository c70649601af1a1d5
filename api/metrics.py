"""Prometheus metrics: a pure-ASGI middleware (cheap on the hot path) and a scrape-time collector of
job counts by status."""
from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Request metrics. Under several uvicorn workers (PROMETHEUS_MULTIPROC_DIR set) every worker
    writes its samples to that directory and a scrape aggregates all of them."""

    def __init__(self) -> None:
        self.multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        self._extra: list = []
        self.requests = Counter("gas_http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("gas_http_request_duration_seconds", "HTTP request duration", ["method", "route"],
                                 buckets=BUCKETS, registry=self.registry)

    def register_extra(self, collector) -> None:
        """A scrape-time collector (e.g. job gauges read from the database)."""
        self._extra.append(collector)
        if not self.multiproc:
            self.registry.register(collector)

    def scrape_registry(self) -> CollectorRegistry:
        if not self.multiproc:
            return self.registry
        from prometheus_client import multiprocess

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        for c in self._extra:
            reg.register(c)
        return reg


class JobsCollector:
    def __init__(self, count_fn) -> None:
        self.count_fn = count_fn

    def collect(self):
        g = GaugeMetricFamily("gas_jobs", "Jobs by status", labels=["status"])
        for status, n in sorted(self.count_fn().items()):
            g.add_metric([status], n)
        yield g


class MetricsMiddleware:
    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def _send(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], path, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - t0)


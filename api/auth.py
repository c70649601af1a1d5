"""Authentication: every route but ``/healthz`` and ``/readyz`` (and the API docs) needs an API key,
as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The one dependency :func:`authenticate`
answers the caller's tenant id; every query of the handlers is scoped by it (``TenantDep``).

Verified keys are cached per process for ``GAS_AUTH_CACHE_TTL_S`` seconds (keyed by the key's
sha256), so the hot read path does not pay a database round trip per request; a revoked key stops
working within that time. ``last_used_at`` is stamped on a cache miss, at most once a minute.
"""
from __future__ import annotations

import asyncio
import threading
import time

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from storage.auth import Principal, hash_key, parse_key, verify_key
from storage.db import get_sessionmaker

from .problems import Problem

WWW_AUTHENTICATE = 'Bearer realm="gas", charset="UTF-8"'
SECURITY_SCHEMES = {
    "bearerKey": {"type": "http", "scheme": "bearer", "description": "An API key made by `gas-admin keys create TENANT`."},
    "headerKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same API key, in a header of its own."},
}
PUBLIC_PATHS = {"/healthz", "/readyz"}  # no key needed (probes); also the API description itself


def add_security_to_openapi(schema: dict) -> dict:
    """Declare the key schemes and require one of them on every operation but the probes."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    for path, ops in schema.get("paths", {}).items():
        if path in PUBLIC_PATHS:
            continue
        for op in ops.values():
            if isinstance(op, dict) and "responses" in op:
                op["security"] = [{"bearerKey": []}, {"headerKey": []}]
    return schema


class KeyCache:
    def __init__(self) -> None:
        self._d: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        self.inflight: dict[str, asyncio.Future] = {}  # one database check per key at a time

    def get(self, digest: str) -> Principal | None:
        hit = self._d.get(digest)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, digest: str, p: Principal, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            if len(self._d) > 10_000:
                self._d.clear()
            self._d[digest] = (time.monotonic() + ttl, p)


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, type_="/problems/unauthorized", headers={"WWW-Authenticate": WWW_AUTHENTICATE})


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return (request.headers.get("x-api-key") or "").strip() or None


async def authenticate(request: Request) -> str:
    """The authenticated tenant id (401 problem+json with ``WWW-Authenticate`` otherwise).

    It reads the two headers itself (no sub-dependencies: this runs on every request, and each
    dependency node costs the hot path); the OpenAPI security schemes are declared in api.app."""
    key = _presented_key(request)
    if not key:
        raise _unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key: <key>)")
    if parse_key(key) is None:
        raise _unauthorized("invalid API key")
    app = request.app
    cache: KeyCache = app.state.key_cache
    digest = hash_key(key)
    principal = cache.get(digest)
    if principal is None:
        principal = await _lookup(app, cache, key, digest)
        if principal is None:
            raise _unauthorized("invalid or revoked API key")
    request.state.tenant = principal.tenant_id
    request.state.key_prefix = principal.prefix
    return principal.tenant_id


async def _lookup(app, cache: KeyCache, key: str, digest: str) -> Principal | None:
    """Ask the database (in the thread pool); concurrent requests with the same key share one query,
    so a cache expiry under load is one round trip, not one per waiting request."""
    pending = cache.inflight.get(digest)
    if pending is not None:
        return await asyncio.shield(pending)
    fut = asyncio.get_running_loop().create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception never retrieved"
    cache.inflight[digest] = fut
    settings = app.state.settings

    def lookup() -> Principal | None:
        with get_sessionmaker(settings.db_url, settings.db_pool_size)() as s:
            return verify_key(s, key)

    try:
        principal = await run_in_threadpool(lookup)
    except BaseException as exc:
        fut.set_exception(exc)
        raise
    else:
        if principal is not None:
            cache.put(digest, principal, settings.auth_cache_ttl_s)
        fut.set_result(principal)
        return principal
    finally:
        cache.inflight.pop(digest, None)


Authenticated = Depends(authenticate)

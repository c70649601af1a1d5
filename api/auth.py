"""Authentication: every route but ``/healthz`` and ``/readyz`` (and the API docs) needs an API key,
as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The one dependency :func:`authenticate`
answers the caller's tenant id; every query of the handlers is scoped by it (``TenantDep``).

Verified keys are cached per process for ``GAS_AUTH_CACHE_TTL_S`` seconds (keyed by the key's
sha256), so the hot read path does not pay a database round trip per request; a revoked key stops
working within that time. ``last_used_at`` is stamped at each cache miss (at most once per TTL).
"""
from __future__ import annotations

import threading
import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from storage.auth import Principal, hash_key, parse_key, verify_key
from storage.db import get_sessionmaker

from .problems import Problem

WWW_AUTHENTICATE = 'Bearer realm="gas", charset="UTF-8"'
_bearer = HTTPBearer(auto_error=False, description="An API key made by `gas-admin keys create TENANT`.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same API key, in a header of its own.")


class KeyCache:
    def __init__(self) -> None:
        self._d: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

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


async def authenticate(request: Request,
                       bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                       x_api_key: Annotated[str | None, Depends(_header)]) -> str:
    """The authenticated tenant id (401 problem+json with ``WWW-Authenticate`` otherwise)."""
    key = bearer.credentials if bearer is not None else x_api_key
    if not key:
        raise _unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key: <key>)")
    key = key.strip()
    if parse_key(key) is None:
        raise _unauthorized("invalid API key")
    app = request.app
    cache: KeyCache = app.state.key_cache
    digest = hash_key(key)
    principal = cache.get(digest)
    if principal is None:
        settings = app.state.settings

        def lookup() -> Principal | None:
            with get_sessionmaker(settings.db_url, settings.db_pool_size)() as s:
                return verify_key(s, key)

        principal = await run_in_threadpool(lookup)
        if principal is None:
            raise _unauthorized("invalid or revoked API key")
        cache.put(digest, principal, settings.auth_cache_ttl_s)
    request.state.tenant = principal.tenant_id
    request.state.key_prefix = principal.prefix
    return principal.tenant_id


Authenticated = Depends(authenticate)

"""Dashboard sessions: an API key, given once on the sign-in form, becomes a signed, expiring cookie.

The cookie (``gas_session``) holds ``{tenant, key prefix, expiry, csrf token}`` signed with HMAC-SHA256;
it is HttpOnly, SameSite=Strict, Secure when the request came over https, scoped to the dashboard's
path. The key itself is never stored. Every request checks the signature, the expiry and that the
key is still unrevoked (cached per process for ``GAS_AUTH_CACHE_TTL_S``, like the API's keys), so
revoking a key ends its dashboard sessions within that time.

CSRF: every form that changes something carries the session's token (a hidden field, compared in
constant time) and a cross-site ``Origin`` is refused; the sign-in form, which has no session yet,
uses a double-submit token (cookie ``gas_csrf`` = hidden field). SameSite=Strict is a second layer.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from sqlalchemy import select

from storage.auth import parse_key, verify_key
from storage.db import get_sessionmaker
from storage.models import ApiKey
from storage.settings import ServiceSettings

COOKIE = "gas_session"
LOGIN_CSRF_COOKIE = "gas_csrf"
SECRET_FILE = "dashboard.secret"


class NotSignedIn(Exception):
    """No valid session: the page redirects to the sign-in form."""


class CsrfError(Exception):
    """A state-changing form without the session's token, or from another origin."""


@dataclass(frozen=True)
class DashSession:
    tenant: str
    prefix: str
    exp: int
    csrf: str


def load_secret(settings: ServiceSettings) -> bytes:
    """``GAS_DASHBOARD_SECRET``, else a random secret kept in ``<data_dir>/dashboard.secret`` (made once,
    mode 0600; API processes sharing the data dir share it)."""
    if settings.dashboard_secret:
        return settings.dashboard_secret.encode()
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # the first process wins; the others read its secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def sign(secret: bytes, payload: dict) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    mac = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    return f"{body}.{mac}"


def unsign(secret: bytes, value: str) -> dict | None:
    body, _, mac = value.partition(".")
    if not body or not mac:
        return None
    want = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want, mac):
        return None
    try:
        doc = json.loads(_unb64(body))
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class Sessions:
    """Issues and checks session cookies; remembers live key prefixes for a few seconds."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.secret = load_secret(settings)
        self._live: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- sign in --------------------------------------------------------------------------
    def sign_in(self, api_key: str) -> tuple[str, DashSession] | None:
        """The cookie value and session for a valid key, else None."""
        if parse_key(api_key) is None:
            return None
        with get_sessionmaker(self.settings.db_url, self.settings.db_pool_size)() as s:
            principal = verify_key(s, api_key)
            s.commit()
        if principal is None:
            return None
        sess = DashSession(principal.tenant_id, principal.prefix, int(time.time() + self.settings.dashboard_session_ttl_s),
                           secrets.token_urlsafe(24))
        self._remember(sess.prefix)
        return sign(self.secret, {"t": sess.tenant, "p": sess.prefix, "exp": sess.exp, "c": sess.csrf}), sess

    def _remember(self, prefix: str) -> None:
        if self.settings.auth_cache_ttl_s > 0:
            with self._lock:
                if len(self._live) > 10_000:
                    self._live.clear()
                self._live[prefix] = time.monotonic() + self.settings.auth_cache_ttl_s

    # -- every request --------------------------------------------------------------------
    def read(self, value: str | None) -> DashSession | None:
        """The session of a cookie whose signature and expiry hold (the key is not checked here)."""
        doc = unsign(self.secret, value) if value else None
        if not doc:
            return None
        try:
            sess = DashSession(str(doc["t"]), str(doc["p"]), int(doc["exp"]), str(doc["c"]))
        except (KeyError, TypeError, ValueError):
            return None
        return sess if sess.exp > time.time() else None

    def key_live(self, prefix: str) -> bool:
        """The session's key still exists and is not revoked (asks the database at most once per TTL)."""
        if self._live.get(prefix, 0.0) > time.monotonic():
            return True
        with get_sessionmaker(self.settings.db_url, self.settings.db_pool_size)() as s:
            ok = s.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))) is not None
        if ok:
            self._remember(prefix)
        return ok


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def cookie_path(request: Request) -> str:
    return (request.scope.get("root_path") or "") + "/ui"


def set_session_cookie(response, request: Request, value: str, max_age: int) -> None:
    response.set_cookie(COOKIE, value, max_age=max_age, path=cookie_path(request), httponly=True,
                        samesite="strict", secure=is_https(request))


def clear_session_cookie(response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=cookie_path(request), httponly=True, samesite="strict",
                           secure=is_https(request))


def same_origin(request: Request) -> bool:
    """A browser's ``Origin`` (when it sends one) must be this server's."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host


def check_csrf(request: Request, sent: str | None, expected: str | None) -> None:
    if not same_origin(request):
        raise CsrfError("cross-origin form refused")
    if not sent or not expected or not hmac.compare_digest(str(sent), str(expected)):
        raise CsrfError("missing or wrong CSRF token: reload the page and submit again")


def verify_api_key_hint(api_key: str) -> str | None:
    """Why a typed key cannot be a key at all (before the database is asked), else None."""
    if not api_key:
        return "enter an API key"
    if parse_key(api_key) is None:
        return "this is not an API key (they look like gas_<12 hex>_<43 characters>)"
    return None

"""Tenants and API keys (shared by the API, which verifies keys, and ``gas-admin``, which makes them).

A key looks like ``gas_<prefix>_<secret>``: ``prefix`` (12 hex characters) is stored in clear and
unique, to find the row; ``secret`` is 32 random bytes. Only the sha256 of the whole key is stored
(the key carries 256 random bits, so a fast hash cannot be brute-forced; the comparison is
constant-time). The clear key is returned once, by :func:`create_key`, and never stored or logged.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from .models import ApiKey, Tenant, utcnow

KEY_RE = re.compile(r"^gas_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOUCH_EVERY = timedelta(seconds=60)  # resolution of ApiKey.last_used_at


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key(key: str) -> str | None:
    """The lookup prefix of a well-formed key, else None."""
    m = KEY_RE.match(key or "")
    return m.group(1) if m else None


@dataclass(frozen=True)
class NewKey:
    key: str      # shown once
    prefix: str
    tenant_id: str
    key_id: str


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str
    prefix: str


def create_tenant(s: Session, tenant_id: str, name: str = "", *, max_concurrent_jobs: int | None = None,
                  max_storage_bytes: int | None = None, exist_ok: bool = False) -> Tenant:
    if not TENANT_RE.match(tenant_id):
        raise ValueError(f"tenant id {tenant_id!r}: 1-64 of [A-Za-z0-9._-], starting with a letter or digit")
    t = s.get(Tenant, tenant_id)
    if t is not None:
        if not exist_ok:
            raise ValueError(f"tenant {tenant_id!r} exists")
        return t
    t = Tenant(id=tenant_id, name=name or tenant_id, max_concurrent_jobs=max_concurrent_jobs,
               max_storage_bytes=max_storage_bytes)
    s.add(t)
    s.flush()
    return t


def create_key(s: Session, tenant_id: str, name: str = "") -> NewKey:
    if s.get(Tenant, tenant_id) is None:
        raise ValueError(f"no tenant {tenant_id!r}")
    for _ in range(5):
        prefix = secrets.token_hex(6)
        if s.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is None:
            break
    key = f"gas_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(tenant_id=tenant_id, prefix=prefix, hash=hash_key(key), name=name)
    s.add(row)
    s.flush()
    return NewKey(key=key, prefix=prefix, tenant_id=tenant_id, key_id=row.id)


def revoke_key(s: Session, prefix: str) -> bool:
    res = s.execute(update(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))
    return res.rowcount == 1


def verify_key(s: Session, key: str, *, touch: bool = True) -> Principal | None:
    """The tenant of a valid, unrevoked key (stamping ``last_used_at``), else None."""
    prefix = parse_key(key)
    if prefix is None:
        return None
    row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.hash, hash_key(key)):
        return None
    if touch and (row.last_used_at is None or row.last_used_at < utcnow() - TOUCH_EVERY):
        # at most one write per key and minute (a conditional update: concurrent checks do not queue)
        s.execute(update(ApiKey).where(ApiKey.id == row.id, or_(ApiKey.last_used_at.is_(None),
                                                               ApiKey.last_used_at < utcnow() - TOUCH_EVERY))
                  .values(last_used_at=utcnow()))
        s.commit()
    return Principal(tenant_id=row.tenant_id, key_id=row.id, prefix=row.prefix)


def bootstrap(s: Session, tenant_id: str) -> NewKey | None:
    """First start of a deployment (no key at all yet): create ``tenant_id`` and a key for it."""
    if s.scalar(select(ApiKey.id).limit(1)) is not None:
        return None
    create_tenant(s, tenant_id, exist_ok=True)
    new = create_key(s, tenant_id, name="bootstrap")
    s.commit()
    return new

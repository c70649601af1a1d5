"""``gas-admin``: operator commands.

    gas-admin migrate [REV] | downgrade [REV] | settings | sweep
    gas-admin tenants create TENANT [--name NAME] [--max-concurrent-jobs N] [--max-storage-bytes N]
    gas-admin tenants list
    gas-admin tenants set-quota TENANT [--max-concurrent-jobs N|default] [--max-storage-bytes N|default]
    gas-admin keys create TENANT [--name NAME] [--create-tenant]   # prints the key ONCE on stdout
    gas-admin keys list [TENANT]
    gas-admin keys revoke PREFIX

The database is ``GAS_DATABASE_URL`` (or the embedded SQLite default). Keys are stored hashed: a
lost key cannot be shown again; make a new one and revoke the old one.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from sqlalchemy import select

from storage import auth, migrate
from storage.db import get_sessionmaker
from storage.models import ApiKey, Tenant
from storage.settings import ServiceSettings, settings_table


def _quota(v: str) -> int | None:
    if v == "default":
        return None
    n = int(v)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gas-admin", description="GAS service operator commands",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("migrate", "downgrade"):
        p = sub.add_parser(name, help=f"alembic {name}")
        p.add_argument("rev", nargs="?")
    sub.add_parser("settings", help="print the settings table")
    sub.add_parser("sweep", help="run one sweep")

    t = sub.add_parser("tenants", help="create, list tenants; set quotas").add_subparsers(dest="tcmd", required=True)
    c = t.add_parser("create")
    c.add_argument("tenant")
    c.add_argument("--name", default="")
    c.add_argument("--max-concurrent-jobs", type=_quota, default=None)
    c.add_argument("--max-storage-bytes", type=_quota, default=None)
    t.add_parser("list")
    q = t.add_parser("set-quota", help="N, or 'default' to follow the GAS_QUOTA_* settings")
    q.add_argument("tenant")
    q.add_argument("--max-concurrent-jobs", type=_quota, default=argparse.SUPPRESS)
    q.add_argument("--max-storage-bytes", type=_quota, default=argparse.SUPPRESS)

    k = sub.add_parser("keys", help="create, list, revoke API keys").add_subparsers(dest="kcmd", required=True)
    kc = k.add_parser("create", help="make a key; it is printed once on stdout and stored hashed")
    kc.add_argument("tenant")
    kc.add_argument("--name", default="")
    kc.add_argument("--create-tenant", action="store_true", help="create the tenant first if it does not exist")
    kl = k.add_parser("list")
    kl.add_argument("tenant", nargs="?")
    kr = k.add_parser("revoke")
    kr.add_argument("prefix", help="the 12 hex characters after gas_ (as `keys list` shows them)")
    return ap


def _session():
    s = ServiceSettings()
    return get_sessionmaker(s.db_url, s.db_pool_size)()


def _iso(dt) -> str | None:
    return dt.isoformat() if dt else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(__doc__)
        return 2
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.cmd in ("migrate", "downgrade"):
        return migrate.main(["upgrade" if args.cmd == "migrate" else "downgrade", *([args.rev] if args.rev else [])])
    if args.cmd == "settings":
        print(settings_table())
        return 0
    if args.cmd == "sweep":  # one sweep, run in the worker package's process (api never imports worker)
        return subprocess.call([sys.executable, "-m", "worker.sweeper", "--once"])
    try:
        with _session() as s:
            if args.cmd == "tenants":
                return _tenants(s, args)
            return _keys(s, args)
    except ValueError as exc:
        print(f"gas-admin: {exc}", file=sys.stderr)
        return 2


def _tenants(s, args) -> int:
    if args.tcmd == "create":
        t = auth.create_tenant(s, args.tenant, args.name, max_concurrent_jobs=args.max_concurrent_jobs,
                               max_storage_bytes=args.max_storage_bytes)
        s.commit()
        print(json.dumps({"id": t.id, "name": t.name}))
        return 0
    if args.tcmd == "list":
        for t in s.scalars(select(Tenant).order_by(Tenant.id)):
            print(json.dumps({"id": t.id, "name": t.name, "max_concurrent_jobs": t.max_concurrent_jobs,
                              "max_storage_bytes": t.max_storage_bytes, "created_at": _iso(t.created_at)}))
        return 0
    t = s.get(Tenant, args.tenant)
    if t is None:
        raise ValueError(f"no tenant {args.tenant!r}")
    for col in ("max_concurrent_jobs", "max_storage_bytes"):
        if hasattr(args, col):
            setattr(t, col, getattr(args, col))
    s.commit()
    print(json.dumps({"id": t.id, "max_concurrent_jobs": t.max_concurrent_jobs, "max_storage_bytes": t.max_storage_bytes}))
    return 0


def _keys(s, args) -> int:
    if args.kcmd == "create":
        if args.create_tenant:
            auth.create_tenant(s, args.tenant, exist_ok=True)
        new = auth.create_key(s, args.tenant, args.name)
        s.commit()
        print(new.key)
        print(f"key {new.prefix} for tenant {new.tenant_id} created; it is shown only now", file=sys.stderr)
        return 0
    if args.kcmd == "list":
        q = select(ApiKey).order_by(ApiKey.created_at)
        if args.tenant:
            q = q.where(ApiKey.tenant_id == args.tenant)
        for k in s.scalars(q):
            print(json.dumps({"prefix": k.prefix, "tenant": k.tenant_id, "name": k.name, "created_at": _iso(k.created_at),
                              "last_used_at": _iso(k.last_used_at), "revoked_at": _iso(k.revoked_at)}))
        return 0
    if not auth.revoke_key(s, args.prefix):
        raise ValueError(f"no active key with prefix {args.prefix!r}")
    s.commit()
    print(f"key {args.prefix} revoked", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

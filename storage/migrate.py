"""Schema migrations (Alembic is the only way the schema changes).

``python -m storage.migrate upgrade head`` / ``downgrade base`` / ``current``; the URL comes from
``GAS_DATABASE_URL`` (or the SQLite default of the embedded mode).
"""
from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from .settings import ServiceSettings

INI = Path(__file__).resolve().parent.parent / "migrations" / "alembic.ini"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config(str(INI))
    cfg.set_main_option("sqlalchemy.url", (url or ServiceSettings().db_url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("upgrade", "downgrade", "current"):
        print("usage: python -m storage.migrate upgrade [REV] | downgrade [REV] | current", file=sys.stderr)
        return 2
    cfg = alembic_config()
    if argv[0] == "current":
        command.current(cfg)
    elif argv[0] == "upgrade":
        command.upgrade(cfg, argv[1] if len(argv) > 1 else "head")
    else:
        command.downgrade(cfg, argv[1] if len(argv) > 1 else "base")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

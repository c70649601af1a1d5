"""``gas-admin``: operator commands (``migrate [REV]``, ``downgrade [REV]``, ``settings``, ``sweep``)."""
from __future__ import annotations

import subprocess
import sys

from storage import migrate
from storage.settings import settings_table


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "migrate":
        return migrate.main(["upgrade", *rest])
    if cmd == "downgrade":
        return migrate.main(["downgrade", *rest])
    if cmd == "settings":
        print(settings_table())
        return 0
    if cmd == "sweep":  # one sweep, run in the worker package's process (api never imports worker)
        return subprocess.call([sys.executable, "-m", "worker.sweeper", "--once"])
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

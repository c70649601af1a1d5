#!/usr/bin/env bash
# Sets up what is missing, then runs the whole test suite (needs PostgreSQL and Redis on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Sets up what is missing, then runs the embedded default: API + a real Celery worker, SQLite,
# a serverless broker, local artifacts, bound to 127.0.0.1. Extra arguments go to the launcher.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m api.embedded "$@"

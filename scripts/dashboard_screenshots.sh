#!/usr/bin/env bash
# Regenerates the dashboard screenshots of docs/DASHBOARD.md (docs/img/dashboard/*.png): runs the browser
# tests (real PostgreSQL, Redis, worker; Debian's chromium) with GAS_DASHBOARD_SCREENSHOTS pointing there.
# With it set, the tests also run a 1-epoch retrain for the retrain page's screenshot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="$PWD/docs/img/dashboard"
mkdir -p "$out"
GAS_DASHBOARD_SCREENSHOTS="$out" exec .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/service/test_svc_dashboard_browser.py "$@"

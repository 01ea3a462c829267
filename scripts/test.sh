#!/usr/bin/env bash
# The test suite: set up, lint, type-check, check the layers (import-linter), then pytest
# (real Kafka/PostgreSQL/Redis servers are started by the fixtures from PyPI wheels).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The review station's browser tests drive Debian's Chromium (Playwright's own browser
# download cannot work offline). Install it where we can; elsewhere those tests skip.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }) \
    || echo "chromium could not be installed: the browser tests will skip" >&2
fi
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The test suite: set up, lint, type-check, check the layers (import-linter), then pytest
# (real Kafka/PostgreSQL/Redis servers are started by the fixtures from PyPI wheels).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The main job on the embedded defaults: set up, then `linecheck demo` (arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/linecheck demo "$@"

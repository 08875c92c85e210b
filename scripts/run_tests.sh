#!/usr/bin/env bash
# Set up (idempotent) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_timm.sh  # the timm test runs in its own environment (the script says why)
exec .venv/bin/python -m pytest -q "$@"

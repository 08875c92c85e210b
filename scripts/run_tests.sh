#!/usr/bin/env bash
# Set up (idempotent) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the timm test runs in its own environment (the script says why); without it that one test skips, saying so
bash scripts/setup_timm.sh || echo "setup_timm: the timm environment could not be made; the timm test will skip"
exec .venv/bin/python -m pytest -q "$@"

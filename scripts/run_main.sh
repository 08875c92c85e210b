#!/usr/bin/env bash
# Set up (idempotent) and run the project's main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/shootout experiment=default "$@"

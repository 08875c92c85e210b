#!/usr/bin/env bash
# Create .venv and install attention-shootout with its dependencies. Idempotent: a stamp of the files that
# decide what gets installed makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import attention_impls" 2>/dev/null; then
    exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check --quiet)
# torch first, pinned: 2.13.0 resolves to the CPU build stored on the project's machines; an unpinned
# torch could pull a multi-GB CUDA build. Keep whatever torch >= 2.10 is already installed.
if ! .venv/bin/python -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 10))" 2>/dev/null; then
    "${pip[@]}" "torch==2.13.0"
fi
extras="dev,hf"
if [ "$(uname -s)" = "Linux" ] && [ "$(uname -m)" = "x86_64" ]; then
    extras="dev,hf,xformers"
fi
"${pip[@]}" -e ".[${extras}]"
echo "$want" > "$stamp"

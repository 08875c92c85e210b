#!/usr/bin/env bash
# Create .venv-timm, where tests/attention_impls/test_timm.py runs: timm with a torch and torchvision built as a
# pair. It cannot be .venv: timm imports torchvision, and PyPI's torchvision is built against a CUDA torch, so
# beside .venv's CPU torch 2.13.0 it fails to import ('operator torchvision::nms does not exist'). Idempotent;
# about 1 minute and 5.5 GB on x86_64 (a CUDA build of torch, run on the CPU), so it steps aside, saying so, where
# the disk has less than 8 GiB free (the timm test then skips with that reason).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
venv=.venv-timm
case "$(uname -m)" in
    x86_64) pair=("torch==2.14.1" "torchvision==0.29.1") ;;
    aarch64) pair=("torch==2.9.1" "torchvision==0.24.1") ;;  # a CPU build there
    *) echo "setup_timm: no known torch + torchvision pair for $(uname -m); the timm test will skip"; exit 0 ;;
esac
stamp=$venv/.setup-stamp
want=$(echo "${pair[*]} timm>=1.0,<2 pytest>=8 hypothesis>=6.100" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
free_kib=$(df -Pk . | awk 'NR == 2 {print $4}')
if [ ! -d "$venv" ] && [ "$free_kib" -lt $((8 * 1024 * 1024)) ]; then
    echo "setup_timm: $((free_kib / 1024 / 1024)) GiB free here, the timm environment needs 8: the timm test will skip"
    exit 0
fi
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet --no-cache-dir "${pair[@]}" "timm>=1.0,<2" \
    "pytest>=8" "hypothesis>=6.100" 2> >(grep -v "^WARNING: Location" >&2)
echo "$want" > "$stamp"

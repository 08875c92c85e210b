#!/usr/bin/env bash
# The project's GPU checks as one prepared run for the device machine (an H200 whose python3 holds a CUDA torch):
# the CUDA backends against the float64 reference in bf16, then scripts/perf_targets.py in bf16, GPU target included.
#
# Here, once, in the repository root: the wheels the device image lacks (pure Python; .whl/ stays out of git):
#     bash scripts/gpu_check.sh fetch
# Then through the device tool:  command "bash scripts/gpu_check.sh", carry [".whl"], timeout_s 600.
# What comes back under $OUT: device.txt, tests.log, perf_targets.log, perf_targets.csv (the stored rows).
# GPU_CHECK_DEVICE / GPU_CHECK_ARGS (e.g. cpu / --smoke) run the same steps without a GPU, to check the script.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == fetch ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1 || exit
    python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 || exit  # published as source only
    ls .whl
    exit
fi

out=${OUT:-results/gpu_check}
device=${GPU_CHECK_DEVICE:-cuda}
python=${GPU_CHECK_PYTHON:-python3}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1;
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
    | tee "$out/device.txt"

# 1. exactness first: no number from an unchecked kernel
timeout 150 "$python" -m pytest -q -p no:cacheprovider tests/attention_impls/test_kernels.py \
    tests/attention_impls/test_backends.py::test_cuda_backend_in_bfloat16_matches_reference 2>&1 \
    | tee "$out/tests.log"
tests_status=${PIPESTATUS[0]}

# 2. the performance targets on this device (bf16 on a GPU), the GPU-only target included
dtype=bfloat16; [[ "$device" == cpu ]] && dtype=float32
timeout 400 "$python" scripts/perf_targets.py --device "$device" --dtype "$dtype" --threads "$(nproc)" \
    --results-dir /tmp/gpu_check_results ${GPU_CHECK_ARGS:-} 2>&1 | tee "$out/perf_targets.log"
perf_status=${PIPESTATUS[0]}
cp /tmp/gpu_check_results/perf_targets/results.csv "$out/perf_targets.csv" 2>/dev/null

echo "tests exit $tests_status, perf_targets exit $perf_status" | tee -a "$out/device.txt"
exit $(( tests_status != 0 || perf_status != 0 ))

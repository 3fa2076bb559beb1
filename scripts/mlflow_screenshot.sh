#!/usr/bin/env bash
# Screenshots of an autoquant study in MLflow's UI, rendered by headless Chromium: the
# experiment's page (MLflow 3 opens it in the model-training view: runs table, charts,
# since autoquant tags experiments mlflow.experimentKind=custom_model_development) and
# the study's parent run.
#
#   bash scripts/mlflow_screenshot.sh [STORE_URI] [OUT_DIR]
#     STORE_URI  default sqlite:///mlflow.db (what `autoquant` writes by default)
#     OUT_DIR    default ./mlflow-screenshots: experiment.png, parent_run.png
#
# Needs Chromium (Debian: apt-get install chromium). Starts `mlflow server` on a free
# port of 127.0.0.1 and stops it (and Chromium) before it exits.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STORE="${1:-sqlite:///mlflow.db}"
OUT="${2:-mlflow-screenshots}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
if [[ -z "$CHROMIUM" ]]; then
    echo "mlflow_screenshot.sh: no chromium found; on Debian: apt-get install chromium" >&2
    exit 1
fi
mkdir -p "$OUT"

# The newest parent run of a study (tag autoquant.role=study) and its experiment.
read -r EXP RUN < <("$PY" - "$STORE" <<'PYEOF'
import sys, warnings
warnings.simplefilter("ignore")
from mlflow import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1])
exps = [e.experiment_id for e in client.search_experiments()]
runs = client.search_runs(exps, "tags.`autoquant.role` = 'study'", max_results=1,
                          order_by=["attributes.start_time DESC"]) if exps else []
if not runs:
    sys.exit(f"no autoquant study run in {sys.argv[1]}")
print(runs[0].info.experiment_id, runs[0].info.run_id)
PYEOF
)
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LOG="$(mktemp)"
PROFILE="$(mktemp -d)"
"$PY" -m mlflow server --backend-store-uri "$STORE" --host 127.0.0.1 --port "$PORT" \
    --workers 1 >"$LOG" 2>&1 &
SERVER=$!
cleanup() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    rm -rf "$PROFILE" "$LOG"
}
trap cleanup EXIT
for _ in $(seq 1 120); do
    if "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; then
        break
    fi
    kill -0 "$SERVER" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
    sleep 1
done

shot() {  # URL FILE: render the page (its scripts given 20 s of virtual time)
    timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --user-data-dir="$PROFILE" --window-size=1600,1000 --virtual-time-budget=20000 \
        --screenshot="$2" "$1" >/dev/null 2>&1
    echo "wrote $2 ($1)"
}
BASE="http://127.0.0.1:$PORT"
shot "$BASE/#/experiments/$EXP?workflowType=machine_learning" "$OUT/experiment.png"
shot "$BASE/#/experiments/$EXP/runs/$RUN?workflowType=machine_learning" "$OUT/parent_run.png"

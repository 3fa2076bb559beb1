#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv at the repo root.
#
# Idempotent: when .venv already imports torch and autoquant (this checkout's) and neither
# pyproject.toml nor the torch spec changed since the last successful install, it does
# nothing. Otherwise it installs torch FIRST, then the package with its dev extras.
#
# Why torch first: pyproject.toml leaves torch unpinned (so GPU users can bring their own
# build). Installing the pinned CPU build first satisfies that requirement, so pip never
# resolves "torch" on its own and pulls a multi-GB CUDA build.
#
# Environment:
#   AUTOQUANT_TORCH_SPEC  pip arguments for torch (default: torch==2.13.0), e.g.
#                         AUTOQUANT_TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
#   PYTHON                interpreter used to create .venv (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.autoquant-setup-stamp"
TORCH_SPEC="${AUTOQUANT_TORCH_SPEC:-torch==2.13.0}"

trap 'echo "scripts/setup.sh: FAILED (line $LINENO); see the pip output above." >&2' ERR

if [[ ! -x "$PY" ]]; then
    BASE_PY="${PYTHON:-python3}"
    if ! "$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "scripts/setup.sh: $BASE_PY is $("$BASE_PY" --version 2>&1); autoquant needs Python >= 3.10." >&2
        exit 1
    fi
    echo "scripts/setup.sh: creating $VENV with $("$BASE_PY" --version 2>&1)"
    "$BASE_PY" -m venv "$VENV"
fi

# What the last install was made from: pyproject.toml's content plus the torch spec.
want="$("$PY" - "$TORCH_SPEC" <<'PYEOF'
import hashlib, sys
digest = hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest()
print(f"{digest} {sys.argv[1]}")
PYEOF
)"

# -I: isolated mode, so the repo root (cwd) is not on sys.path and "import autoquant"
# only succeeds through the installed (editable) package, and it must be this checkout's.
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] &&
    "$PY" -I -c 'import sys, torch, autoquant; sys.exit(not autoquant.__file__.startswith(sys.argv[1]))' "$ROOT/" 2>/dev/null; then
    exit 0
fi

rm -f "$STAMP"
echo "scripts/setup.sh: installing $TORCH_SPEC, then autoquant[dev,bench] (editable) into .venv"
read -r -a torch_args <<<"$TORCH_SPEC"
"$PY" -m pip install -q "${torch_args[@]}"
"$PY" -m pip install -q -e ".[dev,bench]"
"$PY" -I -c 'import torch, autoquant' # fail here, not in the first test, if it is broken
echo "$want" >"$STAMP"

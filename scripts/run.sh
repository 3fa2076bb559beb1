#!/usr/bin/env bash
# The main job: set up .venv (scripts/setup.sh), then run `autoquant` with any Hydra
# overrides given, e.g.: bash scripts/run.sh strategy=sensitivity tuning.max_trials=20
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/autoquant "$@"

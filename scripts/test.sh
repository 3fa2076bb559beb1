#!/usr/bin/env bash
# Run the test suite in the project's .venv (created or refreshed by scripts/setup.sh).
# Extra arguments go to pytest, e.g.: bash scripts/test.sh tests/test_config.py -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"

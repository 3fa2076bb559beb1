#!/usr/bin/env bash
# Quantization demo on a small CNN trained on scikit-learn's digits data set.
# Extra arguments go to the demo module.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m autoquant.examples.digits "$@"

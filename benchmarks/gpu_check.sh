#!/usr/bin/env bash
# The GPU acceptance kit: every GPU figure in one command (platform/multistep/bench/gpu_check.py, docs/performance.md).
#   benchmarks/gpu_check.sh OUT_DIR [--cpu-rehearsal] [--peak-tflops X] [--budget-s S] [--parts a,b]
# Needs only python3 with PyTorch (and numpy, scipy, pytest): no Ray, MLflow or pydantic, no install of the package.
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md; exit 0 when every part ran or was skipped, 1 if one failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/platform${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m multistep.bench.gpu_check "$@"

#!/usr/bin/env bash
# The prepared GPU run of issue 24 (see jobs/bench/gpu_run.py): health, speed, the family evidence at convergence
# and, if time is left, the growth evidence, in --budget seconds (default 540) on one CUDA machine where scalenas'
# dependencies are installed (this script installs nothing). Writes results/bench/gpu_run*.csv as it measures.
#   bash jobs/bench/gpu_run.sh [--budget 540] [--dry] [--phases a,b,c,d] ...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-$(command -v python || command -v python3)}"
exec "$PY" jobs/bench/gpu_run.py "$@"

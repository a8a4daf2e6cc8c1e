#!/usr/bin/env bash
# The prepared GPU check (see jobs/bench/README.md): run once, from anywhere, on a CUDA machine where scalenas and
# its dependencies are installed (this script installs nothing); writes results/bench/gpu.csv in ~2-5 minutes.
# Arguments go to gpu_check.py, e.g. --dry --out /tmp/gpu_dry.csv (CPU dry run) or --checks export,throughput.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# A private Ray on 127.0.0.1 only, no usage stats, no auth token file (set before Ray is first imported).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=disabled
PY="${PYTHON:-$(command -v python || command -v python3)}"
exec "$PY" jobs/bench/gpu_check.py "$@"

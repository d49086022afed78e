#!/usr/bin/env bash
# The whole test suite, from nothing: set-up (a no-op when done), then pytest. Multi-process tests
# launch themselves with horovodrun (Gloo) and mpirun (MPI) from inside pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 TF_USE_LEGACY_KERAS=1
exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"

#!/usr/bin/env bash
# The whole test suite, from nothing: set-up (a no-op when done), the docs build (mkdocs build
# --strict: a broken link, a missing page or a docstring the API reference cannot render fails it),
# then pytest. Multi-process tests launch themselves with horovodrun (Gloo) and mpirun (MPI) from
# inside pytest. Extra arguments go to pytest, e.g. the fast tier: bash scripts/test.sh -m unit
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 TF_USE_LEGACY_KERAS=1
docs_start=$(date +%s)
# not --quiet: it hides the warnings from the count that --strict aborts on
if ! docs_log=$(NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict 2>&1); then
  echo "$docs_log"
  echo "==> [test] docs: mkdocs build --strict FAILED" >&2
  exit 1
fi
echo "==> [test] docs: mkdocs build --strict passed ($(( $(date +%s) - docs_start )) s, site in build/site)"
exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"

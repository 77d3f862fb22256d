#!/usr/bin/env bash
# Install everything, then run the whole test suite. The tests run on the hand-made rows in tests/data; the checks
# on the real benchmark dev splits run too when ADAFUSE_DATA names them, which defaults to ../shared/data when that
# folder exists (and are skipped, saying so, when there is none).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh all
if [ -z "${ADAFUSE_DATA:-}" ] && [ -d ../shared/data ]; then
  ADAFUSE_DATA="$(cd ../shared/data && pwd)"
  export ADAFUSE_DATA
fi
# --durations: the slowest tests, so that the suite stays well under its 20 minutes.
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=10 "$@"

#!/usr/bin/env bash
# Install everything, then run the whole test suite. The data directory defaults to ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh all
export ADAFUSE_DATA="${ADAFUSE_DATA:-$(cd .. && pwd)/shared/data}"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Install (first time) and run the demo study on the embedded digits dataset; prints the report path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/causalgeom demo --out "${1:-demo_out}"

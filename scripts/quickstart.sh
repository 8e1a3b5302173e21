#!/usr/bin/env bash
# Sets everything up (idempotent) and runs the default recipe end to end:
# all-MiniLM-L6-v2 continues MLM pretraining on the Python documentation.
# Extra arguments go to `runner run`, e.g. --set training.max_steps=50
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec target/release/runner run recipes/quickstart.yaml --overwrite "$@"

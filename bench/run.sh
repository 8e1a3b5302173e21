#!/usr/bin/env bash
# The benchmark in one command: builds the runner (release), installs the PyTorch peers
# into bench/.venv, and runs everything on the same data in one go.
#   bench/run.sh [--bert-base] [--steps N] [--repeats N] [--threads N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! bench/.venv/bin/python -c 'import torch, transformers, matplotlib' 2>/dev/null; then
    python3 -m venv bench/.venv
    bench/.venv/bin/pip install -q -r bench/requirements.txt
fi
exec bench/.venv/bin/python bench/run.py "$@"

#!/usr/bin/env bash
# Corpus preparation: the runner's token store against Hugging Face `datasets`.
# Builds the runner (release), installs `datasets` into bench/.venv-data, and runs
# bench/data_prep.py (see its header).
#   bench/data_prep.sh [--size-mb 500]
#   bench/data_prep.sh --rss-bound-mb 1024 --sizes-mb 100,1000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! bench/.venv-data/bin/python -c 'import datasets, transformers' 2>/dev/null; then
    python3 -m venv bench/.venv-data
    bench/.venv-data/bin/pip install -q -r bench/data-requirements.txt
fi
exec bench/.venv-data/bin/python bench/data_prep.py "$@"

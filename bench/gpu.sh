#!/usr/bin/env bash
# Every GPU check of the runner in one command (bench/gpu_check.py lists the parts):
# parity of the tiny fixtures on the device, fp16 loss scaling, keyed dropout's cost,
# speed against the PyTorch peers, two Gloo processes on one GPU, NCCL through
# `runner launch`, peak memory. Each part has its own time budget (under 10 minutes
# in all); results go to OUT_DIR/gpu.json and OUT_DIR/gpu.md, rewritten after each part.
#
#   bench/gpu.sh OUT_DIR [--device cuda|cuda:N|cpu] [--quick] [--batch N] [--parts a,b]
#   bench/gpu.sh --pack          # here: the built binary and plugins, stripped, into bench/gpu-bin.tar.xz
#
# On a GPU host without Rust (torch 2.11.0+cu130 and transformers installed there):
#   1. here:  cargo build --release --workspace && bench/gpu.sh --pack
#             (bench/gpu-bin.tar.xz, git-ignored, about 15 MB: carry it along; the stripped
#             files themselves are about 63 MB)
#   2. there: bench/gpu.sh /tmp/gpu-out
#      It unpacks bench/gpu-bin.tar.xz into bench/gpu-bin/ and runs bench/gpu-bin/runner
#      (else --runner PATH, else target/release/runner).
#      The script finds that torch's lib/ (through PYTHON, default .venv/bin/python, else
#      python3) and puts it on LD_LIBRARY_PATH, so the binary and libtorch_cuda.so load
#      from it; it prints whether the runner sees CUDA ("cuda available: ...").
#      The binary does not link libtorch_cuda.so (cargo's --as-needed drops it); the runner
#      loads it at run time (runner/src/device.rs), so CUDA is found only if that library
#      is on the library path.
# The test suite runs `bench/gpu.sh OUT --device cpu --quick` (tests/it/gpu_script.rs).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

if [ "${1:-}" = "--pack" ]; then
    src="${CARGO_TARGET_DIR:-$root/target}/release"
    dst="$root/bench/gpu-bin"
    rm -rf "$dst" && mkdir -p "$dst"
    cp "$src/runner" "$src"/librunner_plugin_*.so "$dst/"
    nccl="$(ls -t "$src"/build/runner-*/out/librunner_nccl.so 2>/dev/null | head -1 || true)"
    [ -n "$nccl" ] && cp "$nccl" "$dst/"
    strip "$dst"/*   # the plugins' declarations are dynamic symbols, which strip keeps
    tar -C "$dst" -cJf "$root/bench/gpu-bin.tar.xz" .
    du -sh "$dst" "$root/bench/gpu-bin.tar.xz"
    exit 0
fi

if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi

python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python="python3"; fi
fi
torch_lib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd "$root"
extra=()
if [[ " $* " != *" --runner "* ]]; then
    if [ ! -x bench/gpu-bin/runner ] && [ -f bench/gpu-bin.tar.xz ]; then
        mkdir -p bench/gpu-bin && tar -C bench/gpu-bin -xJf bench/gpu-bin.tar.xz
    fi
    [ -x bench/gpu-bin/runner ] && extra=(--runner "$root/bench/gpu-bin/runner")
fi
exec "$python" "$root/bench/gpu_check.py" "$@" "${extra[@]}"

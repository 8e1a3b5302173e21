#!/usr/bin/env bash
# Coverage-guided fuzzing of recipe parsing, `--set` overrides and the value
# checks (fuzz/: libFuzzer through the libfuzzer-sys crate), on a stable
# toolchain and without cargo-fuzz: the sanitizer-coverage instrumentation
# cargo-fuzz would ask rustc for is given here directly.
#   scripts/fuzz.sh [SECONDS]     (default 600; 0 builds and replays the seeds only)
# The corpus grows in target/fuzz/corpus (seeded from fuzz/seeds, the shipped
# recipes); a failing input is written to target/fuzz/artifacts and the script
# exits non-zero. Replay one with: target/fuzz/bin/recipe FILE
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
triple=$(rustc -vV | sed -n 's/^host: //p')
out=target/fuzz
mkdir -p "$out/corpus" "$out/artifacts" "$out/bin"
# --target keeps the instrumentation off build scripts and proc macros (serde_derive).
start=$(date +%s)
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks --cfg fuzzing" \
    cargo build --quiet --release --manifest-path fuzz/Cargo.toml --target "$triple" --target-dir "$out/build" --bin recipe
cp "$out/build/$triple/release/recipe" "$out/bin/recipe"
echo "fuzz: built in $(( $(date +%s) - start ))s" >&2
if [ "$seconds" = 0 ]; then
    exec "$out/bin/recipe" -runs=0 fuzz/seeds
fi
exec "$out/bin/recipe" "$out/corpus" fuzz/seeds -max_total_time="$seconds" -max_len=8192 -timeout=10 \
    -artifact_prefix="$out/artifacts/" -print_final_stats=1

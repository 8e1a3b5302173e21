#!/usr/bin/env bash
# Sets up the environment and data (idempotent), then runs the whole test suite
# against the release build the quickstart uses, so the second command rebuilds
# nothing the first one built.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-build
cargo build --release --workspace  # the runner and the plugin libraries it loads
cargo test --release --workspace --all-targets
# Recipe parsing, --set and the value checks under libFuzzer for 30 s (fuzz/; its
# build is serde, serde_yaml and libFuzzer only). scripts/fuzz.sh alone runs 10 minutes.
scripts/fuzz.sh 30

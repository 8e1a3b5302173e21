#!/usr/bin/env bash
# Sets up the environment and data (idempotent), then runs the whole test suite
# against the release build the quickstart uses, so the second command rebuilds
# nothing the first one built.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-build
cargo build --release --workspace  # the runner and the plugin libraries it loads
cargo test --release --workspace --all-targets

#!/usr/bin/env bash
# Sets up the environment and data (idempotent), then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-build
cargo build --workspace  # the plugin libraries the runner binary loads
cargo test --workspace --all-targets

#!/usr/bin/env bash
# The CI entry point (called by .ci/run); runnable locally.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "ci: cargo fmt --check"
cargo fmt --all -- --check
echo "ci: cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "ci: tests"
bash scripts/test.sh

#!/usr/bin/env bash
# Set up (if needed), then run every test: the Rust workspace (unit,
# deterministic L7 core, kernel data path) and the end-to-end suite (real
# MCP SDK clients and servers through `dpuproxy run --mode kernel`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build -p dpuproxy
cargo test --workspace
DPUPROXY_BIN="$PWD/target/debug/dpuproxy" .venv/bin/python -m pytest tests/e2e -v --timeout=120

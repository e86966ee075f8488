#!/usr/bin/env bash
# Set up (if needed), then run every test: the Rust workspace (unit,
# deterministic L7 core, kernel data path, TLS record layer, userspace TCP,
# DPDK wrappers and ports), the TLS interop suite (Python ssl and openssl
# s_client against `dpuproxy tls-echo`) and the end-to-end suite (real MCP
# SDK clients and servers through `dpuproxy run --mode kernel`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build -p dpuproxy
cargo test --workspace
DPUPROXY_BIN="$PWD/target/debug/dpuproxy" .venv/bin/python -m pytest tests/tls tests/e2e tests/dpdk -v --timeout=300

#!/usr/bin/env bash
# Set up (if needed), build, and run `dpuproxy demo`: three real MCP
# backends, the kernel-mode proxy over TLS and an MCP client session.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p dpuproxy
exec ./target/release/dpuproxy demo --python .venv/bin/python "$@"

#!/usr/bin/env bash
# One-time (idempotent) set-up for a fresh Debian 12 machine: system
# packages, then a Python venv (.venv) with the official MCP SDK used by the
# demo backends, the demo client and the end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(pkg-config libssl-dev openssl ca-certificates wrk haproxy)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv with $($PY --version)"
    $PY -m venv .venv
fi
if ! .venv/bin/python -c "import mcp, uvicorn, httpx2, pytest, pytest_timeout" 2>/dev/null \
    || ! cmp -s scripts/requirements.txt .venv/.requirements.installed; then
    echo "setup: installing Python packages from scripts/requirements.txt"
    .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements.txt
    cp scripts/requirements.txt .venv/.requirements.installed
fi
echo "setup: done"

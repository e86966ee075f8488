#!/usr/bin/env bash
# One-time (idempotent) set-up for a fresh Debian 12 machine: system
# packages, then a Python venv (.venv) with the official MCP SDK used by the
# demo backends, the demo client and the end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(pkg-config libssl-dev openssl ca-certificates curl wrk haproxy)
# --- DPDK (issue 4): DPDK 22.11 headers and PMDs, libclang for bindgen,
# and the tools the namespace/veth tests drive. ---
APT_PACKAGES+=(libdpdk-dev clang libclang-dev iproute2 ethtool iputils-ping)
# --- end DPDK ---
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

# --- DPDK (issue 4): 256 x 2M hugepages for the DPDK tests (root only; the
# tests fall back to --no-huge without them). Never lowers a larger count. ---
if [[ $(id -u) -eq 0 && -w /proc/sys/vm/nr_hugepages ]] && (($(cat /proc/sys/vm/nr_hugepages) < 256)); then
    echo 256 >/proc/sys/vm/nr_hugepages || echo "setup: could not reserve hugepages"
    echo "setup: hugepages 2M: $(cat /proc/sys/vm/nr_hugepages)"
fi
# --- end DPDK ---

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

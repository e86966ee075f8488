#!/usr/bin/env bash
# One-time (idempotent) set-up for a fresh Debian 12 machine: checks that
# Rust (cargo) is installed and new enough, installs the system packages,
# then a Python venv (.venv) with the official MCP SDK used by the demo
# backends, the demo client and the end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust comes from rustup, not apt (Debian 12's rustc is older than the
# workspace's rust-version).
RUST_MIN=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n1)
RUSTUP_HINT="install Rust with rustup (https://rustup.rs):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\"
then run this again"
if ! CARGO_VERSION=$(cargo --version 2>/dev/null); then
    echo "setup: cargo not found (or not working); $RUSTUP_HINT" >&2
    exit 1
fi
CARGO_VERSION=$(awk '{print $2}' <<<"$CARGO_VERSION")
if [[ -n $RUST_MIN && $(printf '%s\n%s\n' "$RUST_MIN" "$CARGO_VERSION" | sort -V | head -n1) != "$RUST_MIN" ]]; then
    echo "setup: cargo $CARGO_VERSION is older than the workspace's rust-version $RUST_MIN; run \`rustup update\`, or $RUSTUP_HINT" >&2
    exit 1
fi

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
apt_install() {
    echo "setup: installing $*"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# gcc + libc6-dev: the C compiler and linker for -sys crates and the DPDK shim.
APT_PACKAGES=(pkg-config libssl-dev openssl ca-certificates curl gcc libc6-dev wrk haproxy patch)
# --- DPDK (issue 4): DPDK 22.11 headers and PMDs, libclang for bindgen,
# and the tools the namespace/veth tests drive. ---
# libbpf-dev: our XDP program's headers and the map updates (libdpdk-dev
# pulls it in today; named so that it stays).
APT_PACKAGES+=(libdpdk-dev libbpf-dev clang libclang-dev iproute2 ethtool iputils-ping procps)
# --- end DPDK ---
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt_install "${missing[@]}"
fi

# --- DPDK (issue 4): 256 x 2M hugepages for the DPDK tests (root only; the
# tests fall back to --no-huge without them). Never lowers a larger count. ---
if [[ $(id -u) -eq 0 && -w /proc/sys/vm/nr_hugepages ]] && (($(cat /proc/sys/vm/nr_hugepages) < 256)); then
    echo 256 >/proc/sys/vm/nr_hugepages || echo "setup: could not reserve hugepages"
    echo "setup: hugepages 2M: $(cat /proc/sys/vm/nr_hugepages)"
fi
# --- end DPDK ---

# Patched registry crates (patches/) must exist before any cargo command.
bash scripts/patch-deps.sh

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    # Debian's python3 has no ensurepip (so no `-m venv`) without python3-venv.
    if ! $PY -c 'import ensurepip' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
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

#!/usr/bin/env bash
# Requests/s for a small MCP tools/call through `dpuproxy run --mode kernel`
# (TLS, session affinity) and, for reference, straight to one backend.
# Prints figures; asserts nothing. Usage: bench/wrk_kernel.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-8}
bash scripts/setup.sh >/dev/null
cargo build --release -q -p dpuproxy
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

# Backends and wrk share core 0; the proxy has core 1 to itself.
BPORTS=()
for name in b1 b2 b3; do
    p=$(port); BPORTS+=("$p")
    taskset -c 0 .venv/bin/python scripts/mcp_backend.py --port "$p" --name "$name" >/dev/null 2>&1 & PIDS+=($!)
done
for p in "${BPORTS[@]}"; do wait_port "$p"; done
BPORT=${BPORTS[0]}
./target/release/dpuproxy gen-cert --cert "$WORK/cert.pem" --key "$WORK/key.pem" >/dev/null
PPORT=$(port)
DPUPROXY_LOG=warn taskset -c 1 ./target/release/dpuproxy run --mode kernel --listen 127.0.0.1:"$PPORT" \
    --backend 127.0.0.1:"${BPORTS[0]}" --backend 127.0.0.1:"${BPORTS[1]}" --backend 127.0.0.1:"${BPORTS[2]}" --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" --workers 1 & PIDS+=($!)
wait_port "$PPORT"

init() { # $1 = base URL, prints the session id
    local hdrs="$WORK/h.txt"
    curl -sk -D "$hdrs" -o /dev/null "$1/mcp" -H 'Content-Type: application/json' \
        -H 'Accept: application/json, text/event-stream' \
        -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"wrk","version":"1"}}}'
    local sid; sid=$(awk 'tolower($1)=="mcp-session-id:" {print $2}' "$hdrs" | tr -d '\r')
    [ -n "$sid" ] || { echo "initialize at $1 returned no Mcp-Session-Id" >&2; exit 1; }
    curl -sk -o /dev/null "$1/mcp" -H 'Content-Type: application/json' -H "Mcp-Session-Id: $sid" \
        -H 'MCP-Protocol-Version: 2025-11-25' -H 'Accept: application/json, text/event-stream' \
        -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
    echo "$sid"
}

show() { grep -E "Requests/sec|50%|99%|Non-2xx|Socket errors|requests in"; }
echo "== stateless 2026-07-28 tools/call, ${DURATION}s, $CONNS connections"
echo "-- direct to one backend (plain HTTP)"
taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s bench/mcp_stateless.lua "http://127.0.0.1:$BPORT" | show
echo "-- through dpuproxy (TLS, 3 backends, least outstanding)"
taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s bench/mcp_stateless.lua "https://127.0.0.1:$PPORT" | show

echo "== handshake-era tools/call on one session (the SDK server runs one session's requests one at a time)"
for target in "direct http://127.0.0.1:$BPORT" "proxy https://127.0.0.1:$PPORT"; do
    set -- $target
    SID=$(init "$2")
    echo "-- $1 ($2) session ${SID:0:8}"
    MCP_SESSION_ID="$SID" taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s bench/mcp_call.lua "$2" | show
done

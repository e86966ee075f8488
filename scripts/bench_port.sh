#!/usr/bin/env bash
# Packets per second received through `dpuproxy port`, beside testpmd on
# the same vdev: a memif link between two processes, testpmd txonly (64 B
# frames) as the generator, and as the receiver first `dpdk-testpmd
# --forward-mode=rxonly`, then `dpuproxy port` (rx burst, ARP/ICMP parse,
# free). Prints figures, asserts nothing. The receiver polls core 1, the
# generator's forwarding lcore core 0, so run it on an otherwise idle box.
#
# Needs root, `dpdk-testpmd` (Debian package dpdk-dev), a release build
# (cargo build --release -p dpuproxy) and free 2M hugepages: memif uses
# DPDK's multi-process channel, so no --in-memory here; hugetlbfs is
# mounted if missing and every run uses --huge-unlink (no files left).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-6}
ROUNDS=${ROUNDS:-2}
BIN=${DPUPROXY_BIN:-target/release/dpuproxy}
TESTPMD=$(command -v dpdk-testpmd) || { echo "bench_port: dpdk-testpmd missing (apt-get install dpdk-dev)"; exit 1; }
[[ -x $BIN ]] || { echo "bench_port: build first: cargo build --release -p dpuproxy"; exit 1; }
free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)
pages_before=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)
if ((free < 600)); then
    "$BIN" hugepages --reserve $((pages_before + 600 - free)) --size 2M
fi
grep -q " /dev/hugepages hugetlbfs" /proc/mounts || "$BIN" hugepages --mount /dev/hugepages --size 2M

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
    "$BIN" hugepages --reserve "$pages_before" --size 2M >/dev/null || true
}
trap cleanup EXIT

COMMON=(--no-telemetry --no-pci --iova-mode=va --huge-unlink)
generator() { # $1 socket $2 prefix; runs SECS+1 seconds
    timeout -s INT $((SECS + 1)) "$TESTPMD" -l 0,1 --main-lcore 1 "${COMMON[@]}" --file-prefix="$2" \
        --vdev="net_memif0,role=client,socket=$1" -- --forward-mode=txonly --txpkts=64 \
        --nb-cores=1 --total-num-mbufs=16384 --stats-period 1 >"$tmp/gen.log" 2>&1 || true
}

best_testpmd() { grep -o "Rx-pps: *[0-9]*" "$1" | awk '{ if ($2 > m) m = $2 } END { print m + 0 }'; }
best_port() { # largest per-interval delta of "port rx N pkts"
    awk '/^t=/ { for (i = 1; i <= NF; i++) if ($i == "rx") { n = $(i + 1); break }
                 t = substr($1, 3) + 0; if (pt != "" && t > pt) { r = (n - pn) / (t - pt); if (r > m) m = r }
                 pt = t; pn = n }
         END { printf "%d\n", m }' "$1"
}
busy_at_best() { # busy share and busy cycles per packet in the best second
    awk '/^t=/ { b = ""; c = ""; n0 = 0
                 for (i = 1; i <= NF; i++) {
                     if ($i == "rx" && !n0) { n = $(i + 1); n0 = 1 }
                     if ($i == "busy" && b == "") b = $(i + 1)
                     if ($i == "busy_cycles") c = $(i + 1) }
                 if (pn != "" && n - pn > m) { m = n - pn; bb = b; cc = c / m } pn = n }
         END { printf "lcore busy %s, %.0f busy cycles/pkt", bb, cc }' "$1"
}

printf '%-28s %14s\n' "receiver (memif, 64 B)" "rx pps (best 1 s)"
for round in $(seq "$ROUNDS"); do
    s="$tmp/tp$round.sock"
    timeout -s INT $((SECS + 4)) "$TESTPMD" -l 0,1 --main-lcore 0 "${COMMON[@]}" --file-prefix="dpbr$$" \
        --vdev="net_memif0,role=server,socket=$s" -- --forward-mode=rxonly --nb-cores=1 \
        --total-num-mbufs=16384 --stats-period 1 >"$tmp/rx.log" 2>&1 &
    pids+=($!)
    disown "${pids[-1]}" # testpmd 22.11 may segfault on its SIGINT exit: no job notice
    sleep 2
    generator "$s" "dpbg$$"
    for _ in $(seq 50); do kill -0 "${pids[-1]}" 2>/dev/null || break; sleep 0.2; done
    printf '%-28s %14s\n' "testpmd rxonly (round $round)" "$(best_testpmd "$tmp/rx.log")"

    s="$tmp/dp$round.sock"
    "$BIN" port --dpdk-eal "-l 1 ${COMMON[*]} --file-prefix=dpbp$$ --vdev=net_memif0,role=server,socket=$s" \
        --ip 10.77.99.1/24 --for $((SECS + 3)) >"$tmp/port.log" 2>&1 &
    pids+=($!)
    sleep 2
    generator "$s" "dpbg$$"
    wait "${pids[-1]}" 2>/dev/null || true
    printf '%-28s %14s   (%s in that second)\n' "dpuproxy port (round $round)" \
        "$(best_port "$tmp/port.log")" "$(busy_at_best "$tmp/port.log")"
done
echo "generator (testpmd txonly) best: $(grep -o 'Tx-pps: *[0-9]*' "$tmp/gen.log" | awk '{ if ($2 > m) m = $2 } END { print m + 0 }') pps"

"""Two lcores over a multi-queue tap: both carry traffic, and session affinity holds across them.

The proxy runs `--lcores=0@1,1@1` (two polling lcores, both pinned to core 1, per the machine's
rules) on `net_tap` with two queue pairs, inside its own namespace (see dpdk_topo.TapTopology).
The kernel picks a tap queue per flow with its own hash, which is not ours, and net_tap here
cannot be given our RSS key (no rte_flow), so the proxy runs in software-steering mode: an lcore
hands packets of flows it does not own to the owner. Every request below uses a fresh TCP
connection, so the flows of one MCP session land on both lcores; the admin counters say which
lcore accepted each one.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import dpdk_topo as dt
import pytest
from mcp_helpers import metric, metric_family, parse_prometheus
from proc_helpers import free_port, self_signed_cert, stop_process

pytestmark = pytest.mark.timeout(180)

LCORES = ("0", "1")
EAL = "--lcores=0@1,1@1 --in-memory --no-telemetry --iova-mode=va --no-pci --vdev=net_tap0,iface={tap}"


@pytest.fixture(scope="module")
def tap_topo(dpdk_env):
    if dpdk_env != "dpdk":
        pytest.skip("the multi-lcore test needs the DPDK path")
    with dt.built(dt.TapTopology.for_this_process()) as t:
        yield t


@pytest.fixture(scope="module")
def cert(workdir: Path, tap_topo) -> tuple[str, str]:
    ip = tap_topo.proxy_ip
    return self_signed_cert(workdir / "mc-cert.pem", workdir / "mc-key.pem", ip, [f"IP:{ip}"])


class TwoLcoreProxy(dt.ProxyTarget):
    def __init__(self, run: dt.ProxyRun, topo: dt.TapTopology, admin: str, cafile: str, token: str):
        super().__init__(topo, cafile, token)
        self.run, self.admin = run, admin

    def metrics(self):
        res = self.topo.nsh(["curl", "-sS", "-m", "5", f"{self.admin}/metrics"], timeout=10)
        return parse_prometheus(res.stdout)


@pytest.fixture(scope="module")
def proxy(tap_topo, cert, jwt_auth, workdir: Path):
    admin_port = free_port()
    cmd = tap_topo.ns_cmd(
        [dt.proxy_binary(), "run", "--mode", "dpdk", "--dpdk-eal", EAL.format(tap=tap_topo.veth_ns),
         "--dpdk-ip", f"{tap_topo.proxy_ip}/24", "--listen", f"{tap_topo.proxy_ip}:{dt.PROXY_PORT}",
         *[a for p in dt.BACKEND_PORTS for a in ("--backend", f"{tap_topo.ns_ip}:{p}")],
         "--tls-cert", cert[0], "--tls-key", cert[1], "--admin", f"127.0.0.1:{admin_port}",
         *jwt_auth.args()]  # fmt: skip
    )
    run = dt.launch(cmd, workdir, "dpuproxy-2lcores", "dpdk", None)
    backends: list[dt.NsBackend] = []
    try:
        deadline = time.monotonic() + 30
        try:
            tap_topo.configure_tap(deadline)
            backends = dt.start_backends(tap_topo, workdir)
            dt.wait_proxy_reachable(tap_topo, run, dt.PROXY_PORT, deadline + 30)
        except RuntimeError as e:
            dt.fail(f"two-lcore proxy did not come up ({' '.join(cmd)}):\n{e}\n{dt.tail(run.stderr)}")
        yield TwoLcoreProxy(run, tap_topo, f"http://127.0.0.1:{admin_port}", cert[0], jwt_auth.token)
    finally:
        if run.alive():
            run.terminate(timeout=10)
        for b in backends:
            stop_process(b.proc, grace=3)


def test_two_lcores_poll_with_software_steering(proxy):
    s = proxy.metrics()
    busy = metric_family(s, "dpuproxy_lcore_busy_cycles_total")
    assert sorted(dict(lbl)["lcore"] for lbl in busy) == list(LCORES), f"polling lcores: {busy}"
    assert {dict(lbl)["lcore"]: v for lbl, v in metric_family(s, "dpuproxy_lcore_queue").items()} == {
        "0": 0.0,
        "1": 1.0,
    }
    assert metric(s, "dpuproxy_dpdk_steering", mode="software") == 1.0
    err = dt.strip_ansi(proxy.run.stderr_text())
    assert "polling 2 queue pair(s), one per lcore" in err, err[-2000:]
    assert "software steering" in err, err[-2000:]


def test_sessions_spread_over_both_lcores_and_keep_their_backend(proxy):
    res = proxy.topo.ns_run(
        [dt.PYTHON, str(dt.NS_CLIENT), "spread", "--url", proxy.url, "--cafile", proxy.cafile, "--token",
         proxy.token, "--admin", proxy.admin, "--sessions", "3", "--calls", "12"],  # fmt: skip
        timeout=150,
    )
    assert res.returncode == 0, f"spread client failed ({res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}"
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["errors"] == [] and len(report["sessions"]) == 3, report
    per_lcore = {lc: 0 for lc in LCORES}
    for sess in report["sessions"]:
        assert len(sess["calls"]) == 12, sess
        # Affinity: every call, whichever lcore took its connection, reached the session's backend.
        assert {c["backend"] for c in sess["calls"]} == {sess["backend"]}, sess
        lcores = [c["lcore"] for c in sess["calls"]] + [sess["init_lcore"]]
        assert None not in lcores, f"a request could not be attributed to one lcore: {sess}"
        for lc in lcores:
            per_lcore[lc] += 1
    # Round-robin is shared by the lcores: three new sessions, three backends.
    assert sorted(s["backend"] for s in report["sessions"]) == ["b1", "b2", "b3"], report
    # 39 fresh connections: both lcores accepted some (all on one has odds 2^-38).
    assert all(n > 0 for n in per_lcore.values()), f"connections per lcore: {per_lcore}"
    # A session whose requests were accepted on both lcores shows affinity across them.
    crossing = [s for s in report["sessions"] if len({c["lcore"] for c in s["calls"]}) == 2]
    assert crossing, f"no session had requests on both lcores: {report}"
    print(f"\nconnections per lcore: {per_lcore}; sessions crossing lcores: {len(crossing)}/3")

    # The kernel's queue choice ignores our hash, so some packets were handed over. Counters are
    # published every 100 ms and a frame may still be in a ring: wait (bounded) for in == out.
    deadline = time.monotonic() + 5
    while True:
        m = proxy.metrics()
        steered_out = sum(metric_family(m, "dpuproxy_lcore_steered_out_total").values())
        steered_in = sum(metric_family(m, "dpuproxy_lcore_steered_in_total").values())
        dropped = sum(metric_family(m, "dpuproxy_lcore_steer_dropped_total").values())
        if steered_in == steered_out or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert steered_out > 0 and steered_in == steered_out and dropped == 0, (steered_out, steered_in, dropped)
    for lc in LCORES:
        assert metric(m, "dpuproxy_lcore_busy_cycles_total", lcore=lc) > 0, lc
        assert metric(m, "dpuproxy_lcore_rx_packets_total", lcore=lc) > 0, lc


def test_sdk_demo_client_over_two_lcores(proxy):
    res = proxy.topo.ns_run(
        [dt.PYTHON, str(dt.DEMO_SCRIPT), "--url", proxy.url, "--cafile", proxy.cafile, "--token", proxy.token,
         "--overall-timeout", "80"],  # fmt: skip
        timeout=90,
    )
    assert res.returncode == 0, f"demo failed ({res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}"
    assert "all checks passed" in res.stdout and "(3 distinct backends)" in res.stdout, res.stdout


def test_slow_sse_client_is_bounded_and_throttles_the_backend(proxy):
    """A client that reads nothing while its backend floods ~4.8 MB of SSE: the proxy holds a
    bounded amount for it, the backend's TCP send queue fills (our window closed on it), and once
    the client reads, every event arrives, in order, intact."""
    events, size = 600, 8000
    res = proxy.topo.ns_run(
        [dt.PYTHON, str(dt.NS_CLIENT), "stall", "--url", proxy.url, "--cafile", proxy.cafile, "--token",
         proxy.token, "--admin", proxy.admin, "--events", str(events), "--size", str(size), "--stall", "4"],  # fmt: skip
        timeout=120,
    )
    assert res.returncode == 0, f"stall client failed ({res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}"
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["status"].startswith("http/1.1 200"), report["status"]
    samples = report["samples"]
    assert len(samples) >= 8, samples
    # Per connection the proxy holds at most: TLS records out (256 KiB + one sealed batch),
    # plaintext for the client (max_downstream_buffer, 256 KiB, + one read) and input.
    limit = 1024 * 1024
    assert max(b for b, _ in samples) <= limit, f"buffered bytes over {limit}: {samples}"
    assert max(b for b, _ in samples) > 0, f"nothing was ever buffered for the stalled client: {samples}"
    # Flow control upstream: while the client stalls, the backend cannot hand its bytes to us.
    assert max(q for _, q in samples[len(samples) // 2 :]) > 64 * 1024, f"backend Send-Q stayed small: {samples}"
    assert report["events"] == events and report["in_order"] and report["sizes_ok"], {
        k: v for k, v in report.items() if k != "samples"
    }
    assert report["result"] is not None and report["result"].startswith(f"flooded {events} x {size} from b"), report
    # Once the response is read and the connection closed, nothing stays held (the gauge is
    # refreshed every 100 ms).
    deadline = time.monotonic() + 5
    while (held := sum(metric_family(proxy.metrics(), "dpuproxy_lcore_buffered_bytes").values())) > 0:
        assert time.monotonic() < deadline, f"{held} bytes still held after the client finished"
        time.sleep(0.2)
    print(
        f"\nstalled client: proxy held at most {max(b for b, _ in samples)} B, backend Send-Q reached "
        f"{max(q for _, q in samples)} B; then {report['events']} events, {report['body_bytes']} B, in order"
    )


def test_sigterm_stops_both_lcores_and_returns_every_mbuf(proxy):
    rc, secs = proxy.run.terminate(timeout=15)
    assert rc == 0, f"exit status {rc} after {secs:.1f}s:\n{dt.tail(proxy.run.stderr)}"
    err = dt.strip_ansi(proxy.run.stderr_text())
    m = re.search(r"port net_tap0: mempool in_use=(\d+) of (\d+) after close; steering software", err)
    assert m, f"no shutdown accounting line:\n{err[-2000:]}"
    assert int(m.group(1)) == 0, f"mbufs leaked: {m.group(0)}"
    accepted = {lc: int(n) for lc, n in re.findall(r"dpdk: lcore (\d+) \(queue \d+\): .*?, (\d+) client", err)}
    assert set(accepted) == set(LCORES) and all(n > 0 for n in accepted.values()), accepted

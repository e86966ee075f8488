"""Two lcores over `net_af_packet` with `qpairs=2` on the veth: the kernel fans packets out to the
two AF_PACKET sockets by its own flow hash, per direction, and never learns from our transmits
(unlike a tap), so this is software steering at its busiest. One MCP session, every request on a
fresh connection made by curl in the namespace; between requests the test reads the admin
counters (root namespace) to see which lcore accepted it. The session must keep its backend on
both lcores, and the pool must be whole at SIGTERM."""

from __future__ import annotations

import re
import time

import dpdk_topo as dt
import pytest
from http_raw import MCP_ACCEPT, accepted_per_lcore, curl, initialize_via_curl, lcore_that_accepted, server_name
from mcp_helpers import LEGACY_VERSION, jsonrpc, metric, metric_family, rpc_messages, scrape, tool_body

pytestmark = pytest.mark.timeout(150)

CALLS = 14


def which_lcore(admin: str, before: dict[str, float]) -> str:
    after = accepted_per_lcore(admin)
    lcore = lcore_that_accepted(before, after)
    assert lcore is not None, f"one connection, but accept counts went {before} -> {after}"
    return lcore


def test_session_keeps_its_backend_across_lcores_over_af_packet_fanout(
    topo, ns_backends, tls_cert, jwt_auth, dpdk_env, start_proxy
):
    if dpdk_env != "dpdk":
        pytest.skip("needs the DPDK path")
    eal = dt.eal_args(topo.veth_root).replace("-l 1 ", "--lcores=0@1,1@1 ") + ",qpairs=2"
    run = start_proxy(ns_backends, "dpuproxy-af-packet-qpairs", "dpdk", eal=eal)
    try:
        target = dt.ProxyTarget(topo, tls_cert[0], jwt_auth.token)
        s = scrape(run.admin_url)
        assert metric(s, "dpuproxy_dpdk_steering", mode="software") == 1.0, "expected software steering"
        assert sorted(dict(lbl)["lcore"] for lbl in metric_family(s, "dpuproxy_lcore_queue")) == ["0", "1"]

        before = accepted_per_lcore(run.admin_url)
        status, headers, body = initialize_via_curl(target)
        assert status == 200, (status, body[:300])
        lcores = [which_lcore(run.admin_url, before)]
        sid = headers["mcp-session-id"]
        backend = server_name(body, headers.get("content-type", ""))
        mcp = ["-H", "Content-Type: application/json", "-H", f"Accept: {MCP_ACCEPT}",
               "-H", f"Mcp-Session-Id: {sid}", "-H", f"MCP-Protocol-Version: {LEGACY_VERSION}"]  # fmt: skip
        status, _, _ = curl(target, mcp, body=jsonrpc("notifications/initialized", id=None))
        assert status in (200, 202), status
        served_by = []
        for i in range(CALLS):
            before = accepted_per_lcore(run.admin_url)
            status, h, body = curl(target, mcp, body=tool_body("whoami", id=i + 2))
            assert status == 200, (status, body[:300])
            lcores.append(which_lcore(run.admin_url, before))
            msgs = rpc_messages(body, h.get("content-type", ""))
            served_by.append(next(m for m in msgs if "result" in m)["result"]["content"][0]["text"])
        assert set(served_by) == {backend}, f"session on {backend}, calls served by {served_by}"
        # 15 fresh connections: both lcores took some (all on one lcore has odds 2^-14).
        assert set(lcores) == {"0", "1"}, f"connections by lcore: {lcores}"
        # The fan-out hash is not ours: packets were handed over, and (counters are published
        # every 100 ms; a frame may be in a ring) every one handed out was taken in.
        deadline = time.monotonic() + 5
        while True:
            s = scrape(run.admin_url)
            out = sum(metric_family(s, "dpuproxy_lcore_steered_out_total").values())
            taken = sum(metric_family(s, "dpuproxy_lcore_steered_in_total").values())
            if (out > 0 and out == taken) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert out > 0 and out == taken, (out, taken)
        assert sum(metric_family(s, "dpuproxy_lcore_steer_dropped_total").values()) == 0
        print(f"\naf_packet qpairs=2: connections by lcore {lcores}; {out:.0f} packets handed over")
    finally:
        rc, secs = run.terminate(timeout=15)
    assert rc == 0, f"exit status {rc} after {secs:.1f}s:\n{dt.tail(run.stderr)}"
    err = dt.strip_ansi(run.stderr_text())
    assert re.search(r"port net_af_packet0: mempool in_use=0 of \d+ after close; steering software", err), err[-2000:]

"""The backend pool in DPDK mode follows the configuration, as in kernel mode (one driver for
both): reused by default, never kept with `pool_max_per_backend = 0`, and counted on the admin
endpoint either way."""

from __future__ import annotations

import dpdk_topo as dt
import pytest
from http_raw import MCP_ACCEPT, curl, initialize_via_curl
from mcp_helpers import jsonrpc, metric, scrape

pytestmark = pytest.mark.timeout(120)


def session_calls(proxy, n: int) -> None:
    """initialize, then `n` tools/list in that session, each on a fresh TLS connection."""
    status, headers, _ = initialize_via_curl(proxy)
    assert status == 200, status
    sid = headers["mcp-session-id"]
    for i in range(n):
        status, _, body = curl(
            proxy,
            ["-H", "Content-Type: application/json", "-H", f"Accept: {MCP_ACCEPT}",
             "-H", f"Mcp-Session-Id: {sid}", "-H", "MCP-Protocol-Version: 2025-11-25"],
            body=jsonrpc("tools/list", {}, id=i + 2),
        )  # fmt: skip
        assert status == 200, f"tools/list {i} -> {status}: {body[:300]}"


def pool_counters(admin_url: str) -> tuple[float, float]:
    s = scrape(admin_url)
    connects = metric(s, "dpuproxy_upstream_connects_total")
    reuses = metric(s, "dpuproxy_upstream_pool_reuses_total")
    assert connects is not None and reuses is not None, "pool counters missing from /metrics"
    return connects, reuses


@pytest.mark.parametrize("pool_max", [None, 0])
def test_pool_follows_the_configuration(topo, ns_backends, start_proxy, tls_cert, jwt_auth, workdir, dpdk_env, pool_max):
    if dpdk_env != "dpdk":
        pytest.skip("kernel suite mode")
    extra: list[str] = []
    if pool_max is not None:
        cfg = workdir / f"pool{pool_max}.toml"
        cfg.write_text(f"[limits]\npool_max_per_backend = {pool_max}\n")
        extra = ["--config", str(cfg)]
    run = start_proxy(ns_backends, f"dpuproxy-pool-{pool_max}", "dpdk", extra=extra)
    try:
        session_calls(dt.ProxyTarget(topo, tls_cert[0], jwt_auth.token), 4)
        connects, reuses = pool_counters(run.admin_url)
        if pool_max == 0:
            assert reuses == 0, f"a pooled connection was reused with pool_max_per_backend = 0 ({reuses})"
            assert connects >= 5, f"every request needs its own backend connection: {connects}"
        else:
            assert reuses >= 1, f"no pooled backend connection was reused: connects {connects}, reuses {reuses}"
    finally:
        rc, _ = run.terminate(timeout=10)
        assert rc == 0, dt.tail(run.stderr)

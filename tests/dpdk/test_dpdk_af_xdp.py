"""The same proxy over `net_af_xdp` instead of `net_af_packet`: the real SDK demo client (affinity,
round-robin, SSE progress, DELETE then 404, a 2026-07-28 call) through TLS and JWT, then a clean
SIGTERM stop. af_xdp keeps the mbufs of its UMEM rings until the pool itself is freed, so the
shutdown line is checked for its presence and a bounded count, not for zero."""

from __future__ import annotations

import re
import time

import dpdk_topo as dt
import pytest

pytestmark = pytest.mark.timeout(120)


def test_demo_client_over_af_xdp(topo, ns_backends, tls_cert, jwt_auth, workdir, dpdk_env, proxy_cmd):
    if dpdk_env != "dpdk":
        pytest.skip("af_xdp variant only in dpdk suite mode")
    dpdk_proxy_cmd, startup_timeout = proxy_cmd
    admin = dt.free_port()
    cmd = dpdk_proxy_cmd(topo, ns_backends, tls_cert, jwt_auth, admin, "dpdk", driver="af_xdp")
    run = dt.launch(cmd, workdir, "dpuproxy-af-xdp", "dpdk", f"http://127.0.0.1:{admin}")
    try:
        deadline = time.monotonic() + startup_timeout
        try:
            dt.wait_tcp_local(admin, run, "admin endpoint", deadline)
            dt.wait_proxy_reachable(topo, run, dt.PROXY_PORT, deadline)
        except RuntimeError as e:
            dt.fail(f"af_xdp proxy did not come up ({' '.join(cmd)}):\n{e}")
        url = f"https://{topo.proxy_ip}:{dt.PROXY_PORT}/mcp"
        res = topo.ns_run(
            [dt.PYTHON, str(dt.DEMO_SCRIPT), "--url", url, "--cafile", tls_cert[0], "--token", jwt_auth.token,
             "--overall-timeout", "80"],  # fmt: skip
            timeout=90,
        )
        assert res.returncode == 0, f"demo over af_xdp failed ({res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}"
        assert "all checks passed" in res.stdout and "(3 distinct backends)" in res.stdout, res.stdout
    finally:
        rc, secs = run.terminate(timeout=10)
    assert rc == 0, f"af_xdp proxy exit status {rc} after {secs:.1f}s:\n{dt.tail(run.stderr)}"
    err = dt.strip_ansi(run.stderr_text())
    m = re.search(r"port net_af_xdp0: mempool in_use=(\d+) of (\d+)", err)
    assert m, f"no shutdown accounting line:\n{err[-2000:]}"
    assert int(m.group(1)) < int(m.group(2)), m.group(0)

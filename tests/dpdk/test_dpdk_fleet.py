"""Sealed session ids, a reload and the graceful drain on the DPDK path (the same driver and
core as kernel mode): the id clients see is sealed and routes back; a tampered one gets 404 with
no backend hit; a reload that removes the session's backend ends the session with 404; POST
/drain makes /healthz say draining and the process exit 0 with every mbuf back."""

from __future__ import annotations

import base64
import time

import dpdk_topo as dt
import httpx2
import pytest
from http_raw import MCP_ACCEPT, curl, initialize_via_curl, server_name
from mcp_helpers import backend_requests, jsonrpc, metric, scrape

pytestmark = pytest.mark.timeout(120)


def whoami(proxy, sid: str) -> tuple[int, str]:
    status, headers, body = curl(
        proxy,
        ["-H", "Content-Type: application/json", "-H", f"Accept: {MCP_ACCEPT}",
         "-H", f"Mcp-Session-Id: {sid}", "-H", "MCP-Protocol-Version: 2025-11-25"],
        body=jsonrpc("tools/call", {"name": "whoami", "arguments": {}}, id=3),
    )  # fmt: skip
    return status, body


def test_sealed_ids_reload_and_drain_on_the_dpdk_path(topo, ns_backends, start_proxy, tls_cert, jwt_auth, workdir, dpdk_env):
    if dpdk_env != "dpdk":
        pytest.skip("kernel suite mode")
    key = workdir / "dpdk-session.key"
    key.write_text(base64.b64encode(b"dpdk fleet key, 32 bytes of it..").decode() + "\n")
    cfg = workdir / "dpdk-fleet.toml"
    cfg.write_text("backends = [" + ", ".join(f'"{b.name}={b.addr}"' for b in ns_backends) + "]\n")
    # The backend list comes from the file (so a reload can change it).
    run = start_proxy([], "dpuproxy-dpdk-fleet", "dpdk", extra=["--config", str(cfg), "--session-key", str(key)])
    proxy = dt.ProxyTarget(topo, tls_cert[0], jwt_auth.token)
    try:
        status, headers, body = initialize_via_curl(proxy)
        assert status == 200, body[:300]
        sid = headers["mcp-session-id"]
        assert sid.startswith("s1."), sid
        owner = server_name(body, headers.get("content-type", ""))
        status, body = whoami(proxy, sid)
        assert status == 200 and owner in body, body[:300]
        before = sum(backend_requests(scrape(run.admin_url)).values())
        status, _ = whoami(proxy, sid[:-6])
        assert status == 404
        assert sum(backend_requests(scrape(run.admin_url)).values()) == before, "a refused id reached a backend"
        # Remove the session's backend: its session ends with 404.
        cfg.write_text("backends = [" + ", ".join(f'"{b.name}={b.addr}"' for b in ns_backends if b.name != owner) + "]\n")
        r = httpx2.post(f"{run.admin_url}/reload", timeout=10)
        assert r.status_code == 200 and f'removed ["{owner}"]' in r.text, r.text
        status, _ = whoami(proxy, sid)
        assert status == 404
        s = scrape(run.admin_url)
        assert metric(s, "dpuproxy_session_ids_total", result="refused_backend") == 1
        # Drain.
        r = httpx2.post(f"{run.admin_url}/drain", timeout=10)
        assert r.status_code == 202
        deadline = time.monotonic() + 20
        while run.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run.proc.returncode == 0, dt.tail(run.stderr)
        err = run.stderr_text()
        assert "drained" in err, err[-2000:]
        assert "in_use=0" in err, err[-2000:]
    finally:
        if run.alive():
            run.terminate(timeout=10)

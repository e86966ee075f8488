"""End-to-end through `dpuproxy run --mode dpdk` (af_packet on a veth, userspace TCP and TLS
records), TLS + JWT, with real MCP SDK backends and clients in a network namespace.

Tests run in file order against one module-scoped proxy; the last one stops it (SIGTERM: exit 0
within 10 s, stderr ending in `mempool in_use=0`). The backend-kill test comes just before.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import threading
import time

import dpdk_topo as dt
import pytest
from http_raw import MCP_ACCEPT, curl, dechunk, initialize_via_curl, parse_http, server_name
from mcp_helpers import BACKEND_NAMES, INITIALIZE_PARAMS, backend_requests, jsonrpc, metric, metric_family, scrape

pytestmark = pytest.mark.timeout(120)


def auth_rejections(admin_url: str) -> float:
    return sum(metric_family(scrape(admin_url), "dpuproxy_auth_rejections_total").values())


def requests_sum(admin_url: str) -> float:
    fam = backend_requests(scrape(admin_url))
    assert fam, "dpuproxy_requests_total{backend=...} missing from /metrics"
    return sum(fam.values())


# ---------------------------------------------------------------------------- tests


def test_proxy_reachable_from_namespace(dpdk_proxy):
    topo = dpdk_proxy.topo
    assert topo.ping_ok(topo.proxy_ip), f"ping {topo.proxy_ip} from {topo.ns} failed"
    ok, err = topo.tcp_connect_ok(topo.proxy_ip, dt.PROXY_PORT)
    assert ok, f"TCP connect to {topo.proxy_ip}:{dt.PROXY_PORT} from {topo.ns} failed: {err}"


def test_demo_client_script(dpdk_proxy):
    """scripts/mcp_client_demo.py (real SDK): affinity, round-robin over the 3 backends, SSE
    progress, DELETE then 404, a 2026-07-28 stateless call; the token on every request."""
    p = dpdk_proxy
    rejected_before = auth_rejections(p.admin_url)
    args = [dt.PYTHON, str(dt.DEMO_SCRIPT), "--url", p.url, "--cafile", p.cafile, "--token", p.token,
            "--overall-timeout", "80"]  # fmt: skip
    try:
        res = p.topo.ns_run(args, timeout=90)
    except subprocess.TimeoutExpired as e:
        dt.fail(f"demo client hung (killed after 90 s):\n{e.output}\n{(e.stderr or '')[-3000:]}")
    assert res.returncode == 0, f"demo failed ({res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}"
    assert "all checks passed" in res.stdout, res.stdout
    assert "(3 distinct backends)" in res.stdout, f"round-robin did not reach all 3 backends:\n{res.stdout}"
    # Every request the demo made (SDK POSTs, GET streams, DELETE, the raw httpx POST) carried
    # the token: the proxy rejected none of them.
    rejected_after = auth_rejections(p.admin_url)
    assert rejected_after == rejected_before, f"auth rejections during the demo: {rejected_before} -> {rejected_after}"


def test_curl_http11_initialize(dpdk_proxy):
    p = dpdk_proxy
    status, headers, body = initialize_via_curl(p)
    assert status == 200, f"initialize via curl -> {status}\n{headers}\n{body[:500]}"
    sid = headers.get("mcp-session-id")
    assert sid, f"no Mcp-Session-Id in {headers}"
    # curl has already decoded any chunked transfer coding.
    assert server_name(body, headers.get("content-type", "")) in BACKEND_NAMES
    # And end the session: DELETE routed by affinity to the backend that minted it.
    status, headers, body = curl(
        p, ["-X", "DELETE", "-H", f"Mcp-Session-Id: {sid}", "-H", "MCP-Protocol-Version: 2025-11-25"]
    )
    assert status == 200, f"DELETE -> {status}: {body[:300]}"


def test_openssl_s_client_initialize(dpdk_proxy):
    p = dpdk_proxy
    ip, port = p.topo.proxy_ip, dt.PROXY_PORT
    body = jsonrpc("initialize", INITIALIZE_PARAMS).decode()
    request = (
        "POST /mcp HTTP/1.1\r\n"
        f"Host: {ip}:{port}\r\n"
        f"Authorization: Bearer {p.token}\r\n"
        "Content-Type: application/json\r\n"
        f"Accept: {MCP_ACCEPT}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "\r\n" + body
    )
    args = ["openssl", "s_client", "-connect", f"{ip}:{port}", "-quiet", "-CAfile", p.cafile,
            "-verify_return_error", "-verify_ip", ip]  # fmt: skip
    try:
        res = p.topo.ns_run(args, timeout=20, input=request.encode(), text=False)
    except subprocess.TimeoutExpired as e:
        got = (e.output or b"").decode("latin-1")
        dt.fail(
            "openssl s_client did not finish within 20 s: the proxy did not close the connection after "
            f"a `Connection: close` response (got a 200: {'HTTP/1.1 200' in got}):\n{got[:1500]}"
        )
    out, err = res.stdout.decode("latin-1"), res.stderr.decode("utf-8", "replace")
    assert out.startswith("HTTP/1.1 200"), f"s_client rc={res.returncode}\nstdout:\n{out[:1500]}\nstderr:\n{err[-1500:]}"
    status, headers, raw_body = parse_http(out)
    assert headers.get("mcp-session-id"), headers
    text = dechunk(raw_body) if "chunked" in headers.get("transfer-encoding", "") else raw_body
    assert server_name(text, headers.get("content-type", "")) in BACKEND_NAMES


def test_missing_token_401_without_backend_hit(dpdk_proxy):
    p = dpdk_proxy
    before, rejected_before = requests_sum(p.admin_url), auth_rejections(p.admin_url)
    status, headers, body = initialize_via_curl(p, token=None)
    assert status == 401, f"no token -> {status}: {body[:300]}"
    assert headers.get("www-authenticate", "").lower().startswith("bearer"), headers
    time.sleep(0.5)  # a request wrongly forwarded would be counted by now
    after = requests_sum(p.admin_url)
    assert after == before, f"dpuproxy_requests_total moved {before} -> {after} for a 401"
    assert auth_rejections(p.admin_url) == rejected_before + 1, "dpuproxy_auth_rejections_total did not count the 401"


def test_admin_metrics_report_dpdk_path(dpdk_proxy):
    p = dpdk_proxy
    status, _, _ = initialize_via_curl(p)  # TLS traffic of our own, whatever ran before
    assert status == 200
    s = scrape(p.admin_url)
    info = {dict(lbls).get("mode"): v for lbls, v in metric_family(s, "dpuproxy_info").items()}
    assert info.get(p.mode) == 1, f"dpuproxy_info: {info}, expected mode={p.mode!r}"
    assert sum(backend_requests(s).values()) > 0
    if p.mode != "dpdk":
        pytest.skip("kernel suite mode: the dpdk-only metrics are not checked")
    busy = metric(s, "dpuproxy_lcore_busy_cycles_total", lcore="1")
    idle = metric(s, "dpuproxy_lcore_idle_cycles_total", lcore="1")
    rx = metric(s, "dpuproxy_port_rx_packets_total", port="0")
    tx = metric(s, "dpuproxy_port_tx_packets_total", port="0")
    rec = metric(s, "dpuproxy_tls_record_path_total", path="userspace")
    # The connection counters are the shared driver's, in this mode too.
    conns = {
        name: metric(s, f"dpuproxy_{name}")
        for name in ("connections_accepted_total", "connections_closed_total", "tls_handshakes_total",
                     "upstream_connects_total")
    }  # fmt: skip
    found = {"busy": busy, "idle": idle, "rx": rx, "tx": tx, "tls userspace": rec, **conns}
    missing = [k for k, v in found.items() if v is None]
    assert not missing, f"missing from /metrics: {missing} (found {found})"
    for k, v in found.items():
        assert v > 0, f"{k} is {v} after TLS traffic: {found}"


def _reader(stream, q: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        q.put(line.rstrip("\n"))
    q.put(None)


def _next_line(q: queue.Queue, deadline: float, pred, seen: list[str]) -> str | None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            line = q.get(timeout=left)
        except queue.Empty:
            return None
        if line is None:
            return None
        seen.append(line)
        if pred(line):
            return line


def test_kill_backend_mid_sse(dpdk_proxy):
    """SIGKILL the backend serving a long SSE progress stream: the client's stream ends (error or
    clean, not a hang); then 6 new sessions land on the 2 survivors and work."""
    p = dpdk_proxy
    args = [dt.PYTHON, str(dt.NS_CLIENT), "sse-victim", "--url", p.url, "--cafile", p.cafile,
            "--token", p.token, "--steps", "50", "--delay", "0.2", "--read-timeout", "30"]  # fmt: skip
    client = p.topo.ns_popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(client.stdout, q), daemon=True).start()
    seen: list[str] = []
    try:
        line = _next_line(q, time.monotonic() + 30, lambda s: s.startswith(("BACKEND ", "FAIL")), seen)
        assert line and line.startswith("BACKEND "), f"victim client never reported its backend: {seen}"
        victim = p.backend(line.split()[1])
        survivors = {b.name for b in p.backends} - {victim.name}

        for _ in range(3):
            got = _next_line(q, time.monotonic() + 15, lambda s: s.startswith("PROGRESS "), seen)
            assert got, f"no progress notifications through the proxy: {seen}"
        victim.proc.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        victim.proc.wait(timeout=5)

        end = _next_line(q, t_kill + 8, lambda s: s.startswith("END "), seen)
        assert end, (
            f"the client's SSE stream from {victim.name} was still open 8 s after the backend was killed "
            f"(a hang: the proxy did not end it): {seen[-5:]}"
        )
        info = json.loads(end[4:])
        print(f"victim {victim.name}: stream ended {time.monotonic() - t_kill:.2f}s after the kill: {info}")
        assert info["how"] in ("clean", "error"), f"stream ended by the client's read timeout (a hang): {info}"
        assert not info["result"] and info["progress"] < 50, f"the stream completed: was the backend killed? {info}"
        client.wait(timeout=10)
    finally:
        if client.poll() is None:
            dt.kill_hard(client)

    res = p.topo.ns_run(
        [dt.PYTHON, str(dt.NS_CLIENT), "sessions", "--url", p.url, "--cafile", p.cafile, "--token", p.token,
         "--count", "6"],  # fmt: skip
        timeout=90,
    )
    lines = [x for x in res.stdout.splitlines() if x.startswith("{")]
    assert lines, f"sessions client printed no result (rc {res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}"
    doc = json.loads(lines[-1])
    assert not doc["errors"], f"new sessions after the kill failed: {doc}"
    landed = doc["landed"]
    print(f"after the kill: sessions landed on {landed}")
    assert len(landed) == 6 and set(landed) <= survivors, f"sessions landed on {landed}; survivors {survivors}"
    assert set(landed) == survivors, f"round-robin over the 2 survivors expected, got {landed}"
    assert doc["delete_statuses"] == [200] * 6, f"DELETE of the new sessions: {doc['delete_statuses']}"

    up = metric(scrape(p.admin_url), "dpuproxy_backend_up", backend=victim.addr)
    assert up == 0, f"dpuproxy_backend_up for the dead {victim.addr} is {up} (None: no such series)"


def test_sigterm_clean_shutdown(dpdk_proxy):
    """Last: SIGTERM -> exit 0 within 10 s; in dpdk mode stderr ends with the shutdown report:
    `mempool in_use=0` (every mbuf back in the pool, after a backend died mid-stream), then the
    one polling lcore's line."""
    run = dpdk_proxy.run
    assert run.alive(), f"the proxy died during the suite (status {run.proc.returncode})\n{dt.tail(run.stderr)}"
    rc, secs = run.terminate(timeout=10)
    err = run.stderr_text()
    assert rc is not None, f"the proxy did not exit within 10 s of SIGTERM (killed)\n{err[-3000:]}"
    assert rc == 0, f"the proxy exited {rc} after SIGTERM\n{err[-3000:]}"
    if dpdk_proxy.mode != "dpdk":
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) >= 2 and "mempool in_use=0" in lines[-2] and "steering single" in lines[-2], (
        f"stderr does not end with a 'mempool in_use=0' line (mbufs leaked or no report):\n"
        f"{chr(10).join(lines[-15:])}"
    )
    assert re.match(r"dpdk: lcore 1 \(queue 0\): busy \d+ idle \d+ cycles, \d+ client", lines[-1]), lines[-1]

"""Limits an attacker reaches first: open files, connection slots held by stalled handshakes,
and an admin listener that must answer health checks while slow clients hold connections."""

from __future__ import annotations

import socket
import time

import httpx2
import pytest
from conftest import launch_proxy
from mcp_helpers import INITIALIZE_PARAMS, jsonrpc, mcp_headers, metric, raw_client, scrape

pytestmark = pytest.mark.timeout(120)


def soft_nofile(pid: int) -> int:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc/<pid>/limits")


def test_open_file_limit_is_raised_or_the_configuration_fitted(workdir, backends, tls_cert):
    with launch_proxy(workdir, backends, tls_cert, [], name="nofile", nofile=(1024, 20000)) as p:
        soft = soft_nofile(p.proc.pid)
        log = p.stderr_path.read_text()
    # 2 workers × 50,000 clients need ~200k files: the soft limit goes to the hard one, and the
    # connections per worker come down to what 20,000 files hold, said in the log.
    assert soft == 20000, soft
    assert "raised the open-file limit" in log, log[-2000:]
    assert "client connections per worker lowered to fit" in log, log[-2000:]


def test_stalled_handshakes_do_not_shut_clients_out(workdir, backends, tls_cert):
    cfg = workdir / "limits.toml"
    cfg.write_text("[limits]\nmax_connections_per_worker = 100\nmax_handshaking_per_worker = 100\n")
    with launch_proxy(workdir, backends, tls_cert, ["--config", str(cfg)], name="stalled") as p:
        stalled = []
        try:
            for _ in range(300):
                stalled.append(socket.create_connection(("127.0.0.1", p.port), timeout=5))
            time.sleep(0.5)
            t0 = time.monotonic()
            with raw_client(p.cafile, timeout=5) as http:
                r = http.post(p.url, headers=mcp_headers(), content=jsonrpc("initialize", INITIALIZE_PARAMS))
            elapsed = time.monotonic() - t0
            shed = metric(scrape(p.admin_url), "dpuproxy_connections_shed_total")
        finally:
            for s in stalled:
                s.close()
    assert r.status_code == 200, r.text[:300]
    assert elapsed < 3, f"a legitimate client waited {elapsed:.1f}s behind stalled handshakes"
    # Two workers hold 200 connections at most: at least 100 stalled ones were shed.
    assert shed and shed >= 100, f"shed {shed}"


def test_health_checks_do_not_queue_behind_idle_admin_clients(proxy):
    host, port = proxy.admin_url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(12)]
    try:
        t0 = time.monotonic()
        r = httpx2.get(f"{proxy.admin_url}/healthz", timeout=5)
        elapsed = time.monotonic() - t0
    finally:
        for s in idle:
            s.close()
    assert r.status_code == 200 and r.text == "ok\n"
    assert elapsed < 1.0, f"/healthz took {elapsed:.2f}s with 12 idle admin clients"


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_goes_back_after_a_burst(workdir, backends, tls_cert):
    with launch_proxy(workdir, backends, tls_cert, [], name="burst") as p:
        time.sleep(0.5)
        idle = rss_mb(p.proc.pid)
        peaks = []
        for _ in range(2):
            socks = [socket.create_connection(("127.0.0.1", p.port), timeout=5) for _ in range(4000)]
            # Some start a handshake and stall in it (OpenSSL's buffers), the rest send nothing.
            for s in socks[:1000]:
                s.sendall(b"\x16\x03\x01\x00\x05\x01\x00")
            time.sleep(1.0)
            peaks.append(rss_mb(p.proc.pid))
            for s in socks:
                s.close()
        deadline = time.monotonic() + 15
        while True:
            after = rss_mb(p.proc.pid)
            if after <= idle + max(8.0, 0.2 * (max(peaks) - idle)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert after <= idle + max(8.0, 0.2 * (max(peaks) - idle)), (
        f"RSS idle {idle:.1f} MB, peaks {peaks}, {after:.1f} MB 15 s after the burst"
    )

"""Mode selection at start-up: `--mode dpdk` with an EAL that cannot start fails cleanly;
`--mode auto` with the same EAL falls back to kernel mode and says why.

This module sorts before test_dpdk_mode.py, so these short-lived EAL attempts never overlap the
module-scoped DPDK proxy (dpdk_topo.launch refuses to start a second one anyway).
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time

import dpdk_topo as dt
import pytest
from mcp_helpers import metric_family, scrape
from proc_helpers import free_port

pytestmark = pytest.mark.timeout(60)

BAD_IFACE = "doesnotexist0"


def test_dpdk_mode_bad_eal_exits_with_one_line_error(topo, tls_cert, workdir):
    cert, key = tls_cert
    cmd = [
        dt.proxy_binary(), "run", "--mode", "dpdk",
        "--dpdk-eal", dt.eal_args(BAD_IFACE), "--dpdk-ip", f"{topo.proxy_ip}/24",
        "--listen", f"{topo.proxy_ip}:{dt.PROXY_PORT}", "--backend", f"{topo.ns_ip}:9001",
        "--tls-cert", cert, "--tls-key", key,
    ]  # fmt: skip
    run = dt.launch(cmd, workdir, "dpuproxy-bad-eal", "dpdk", None)
    try:
        rc = run.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        run.terminate(timeout=2)
        dt.fail(f"--mode dpdk with a missing interface still running after 15 s\n{dt.tail(run.stderr)}")
    finally:
        run._release()
    err = run.stderr_text()
    assert rc not in (0, None), f"--mode dpdk with iface={BAD_IFACE} exited {rc}, expected a failure\n{err}"
    assert rc > 0, f"killed by signal {-rc} instead of exiting with an error status\n{err}"
    for bad in ("panicked", "stack backtrace", "RUST_BACKTRACE", "Segmentation", "core dumped"):
        assert bad not in err, f"stderr contains {bad!r}:\n{err}"
    errors = [line for line in err.splitlines() if line.startswith("dpuproxy: error:")]
    assert len(errors) == 1, f"expected exactly one 'dpuproxy: error:' line, got {len(errors)}:\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == errors[0], f"the error line is not the last line of stderr:\n{err}"
    assert len(errors[0]) > len("dpuproxy: error: ") + 10, f"error line says nothing: {errors[0]!r}"


def test_auto_mode_falls_back_to_kernel(topo, tls_cert, workdir):
    cert, key = tls_cert
    port, admin, backend = free_port(), free_port(), free_port()
    cmd = [
        dt.proxy_binary(), "run", "--mode", "auto",
        "--dpdk-eal", dt.eal_args(BAD_IFACE), "--dpdk-ip", f"{topo.proxy_ip}/24",
        "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{backend}",
        "--tls-cert", cert, "--tls-key", key, "--admin", f"127.0.0.1:{admin}",
    ]  # fmt: skip
    run = dt.launch(cmd, workdir, "dpuproxy-auto", "auto", f"http://127.0.0.1:{admin}")
    try:
        deadline = time.monotonic() + 20
        try:
            dt.wait_tcp_local(port, run, "--mode auto kernel listener", deadline)
            dt.wait_tcp_local(admin, run, "--mode auto admin", deadline)
        except RuntimeError as e:
            dt.fail(str(e))

        # It is a working TLS listener on a kernel socket (127.0.0.1 is unreachable for DPDK).
        ctx = ssl.create_default_context(cafile=cert)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as tcp:
            with ctx.wrap_socket(tcp, server_hostname="127.0.0.1") as s:
                assert s.version() is not None

        samples = scrape(run.admin_url)
        info = {dict(lbls).get("mode"): v for lbls, v in metric_family(samples, "dpuproxy_info").items()}
        assert info.get("kernel") == 1, f"dpuproxy_info after the fallback: {info}"

        err = run.stderr_text()
        fallback = [
            line
            for line in err.splitlines()
            if re.search(r"fall(s|ing|en)?[ -]?back", line, re.I) and re.search(r"kernel", line, re.I)
        ]
        assert fallback, f"no log line about falling back to kernel mode:\n{err}"
        # ... with the reason: the EAL/port failure (the interface, the port, the EAL).
        assert any(re.search(rf"{BAD_IFACE}|\bport\b|\beal\b|dpdk-ip", line, re.I) for line in fallback), (
            f"the fallback line gives no reason (expected it to name the EAL/port failure):\n{fallback}"
        )
    finally:
        rc, secs = run.terminate(timeout=10)
    assert rc == 0, f"--mode auto (kernel fallback) exited {rc} after SIGTERM ({secs:.1f}s)\n{dt.tail(run.stderr)}"


def _run_briefly(cmd: list[str], workdir, name: str, admin: int) -> tuple[dt.ProxyRun, dict]:
    """Start a DPDK proxy, wait (bounded) until its admin endpoint reports polling lcores, read
    the lcore and steering gauges, SIGTERM it. Returns the run and {"lcores": [...], "steering":
    mode}."""
    run = dt.launch(cmd, workdir, name, "dpdk", f"http://127.0.0.1:{admin}")
    seen: dict = {}
    try:
        dt.wait_tcp_local(admin, run, "admin endpoint", time.monotonic() + 30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            s = scrape(f"http://127.0.0.1:{admin}")
            lcores = sorted(dict(lbl)["lcore"] for lbl in metric_family(s, "dpuproxy_lcore_queue"))
            modes = [dict(lbl)["mode"] for lbl, v in metric_family(s, "dpuproxy_dpdk_steering").items() if v == 1]
            if lcores and modes:
                seen = {"lcores": lcores, "steering": modes[0]}
                break
            time.sleep(0.1)
    finally:
        rc, secs = run.terminate(timeout=15)
    assert rc == 0, f"{name}: exit status {rc} after {secs:.1f}s\n{dt.tail(run.stderr)}"
    assert seen, f"{name}: the admin endpoint never reported polling lcores\n{dt.tail(run.stderr)}"
    return run, seen


def test_two_lcores_program_our_rss_key_where_the_port_takes_it(topo, tls_cert, workdir):
    """net_null accepts an RSS key and RETA: the proxy programs ours and runs hardware steering on
    two lcores (no traffic: this checks the set-up, the gauges and the clean stop)."""
    cert, key = tls_cert
    admin = free_port()
    eal = "--lcores=0@1,1@1 --in-memory --no-telemetry --iova-mode=va --no-pci --vdev=net_null0"
    cmd = [
        dt.proxy_binary(), "run", "--mode", "dpdk", "--dpdk-eal", eal, "--dpdk-ip", "10.79.250.1/24",
        "--listen", "10.79.250.1:8443", "--backend", "10.79.250.2:9001",
        "--tls-cert", cert, "--tls-key", key, "--admin", f"127.0.0.1:{admin}",
    ]  # fmt: skip
    run, seen = _run_briefly(cmd, workdir, "dpuproxy-null-rss", admin)
    assert seen == {"lcores": ["0", "1"], "steering": "hardware"}, seen
    err = dt.strip_ansi(run.stderr_text())
    assert "RSS programmed with our key and RETA" in err, err[-2000:]
    assert re.search(r"port net_null0: mempool in_use=0 of \d+ after close; steering hardware", err), err[-2000:]
    assert len(re.findall(r"^dpdk: lcore \d \(queue \d\)", err, re.M)) == 2, err[-2000:]


def test_one_queue_vdev_is_polled_by_one_lcore_and_says_so(topo, tls_cert, workdir):
    """af_packet has one queue pair: with two lcores given, one polls and the log says why."""
    cert, key = tls_cert
    admin = free_port()
    eal = dt.eal_args(topo.veth_root).replace("-l 1 ", "--lcores=0@1,1@1 ")
    cmd = [
        dt.proxy_binary(), "run", "--mode", "dpdk", "--dpdk-eal", eal, "--dpdk-ip", f"{topo.proxy_ip}/24",
        "--listen", f"{topo.proxy_ip}:{dt.PROXY_PORT}", "--backend", f"{topo.ns_ip}:9001",
        "--tls-cert", cert, "--tls-key", key, "--admin", f"127.0.0.1:{admin}",
    ]  # fmt: skip
    run, seen = _run_briefly(cmd, workdir, "dpuproxy-one-queue", admin)
    assert seen == {"lcores": ["0"], "steering": "single"}, seen
    err = dt.strip_ansi(run.stderr_text())
    assert "the port has one rx/tx queue pair: one lcore owns it" in err, err[-2000:]
    assert re.search(r"idle_lcores=\[1\]", err), err[-2000:]

"""The live mode switch: one proxy with both data paths (`--mode dpdk --dpdk-switchable` on
`net_af_xdp` with our XDP steering), established TLS connections moved between them while they
carry SSE streams and keep-alive tool calls.

The kernel path needs the proxy's address on a kernel interface: for this module it is put on
the root end of the veth (the af_xdp port's interface; our XDP program decides, per flow, whether
a frame goes to DPDK or to the kernel) and removed afterwards. TCP timestamps are off in the
namespace: a connection the kernel accepted with timestamps could not move to the userspace
stack, which sends none (the proxy counts such a connection as "stayed").
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import dpdk_topo as dt
import pytest

pytestmark = pytest.mark.timeout(300)

CLIENT = Path(__file__).resolve().parent / "switch_client.py"


@pytest.fixture(scope="module")
def switch_topo(topo, dpdk_env):
    if dpdk_env != "dpdk":
        pytest.skip("the live mode switch runs in dpdk suite mode only")
    dt.sh(["ip", "addr", "add", f"{topo.proxy_ip}/24", "dev", topo.veth_root])
    old_ts = topo.nsh(["sysctl", "-n", "net.ipv4.tcp_timestamps"]).stdout.strip()
    topo.nsh(["sysctl", "-q", "-w", "net.ipv4.tcp_timestamps=0"])
    try:
        yield topo
    finally:
        topo.nsh(["sysctl", "-q", "-w", f"net.ipv4.tcp_timestamps={old_ts}"], check=False)
        dt.sh(["ip", "addr", "del", f"{topo.proxy_ip}/24", "dev", topo.veth_root], check=False)


@pytest.fixture(scope="module")
def switchable(switch_topo, ns_backends, start_proxy):
    run = start_proxy(ns_backends, "dpuproxy-switch", "dpdk", driver="af_xdp", extra=["--dpdk-switchable"])
    try:
        yield run
    finally:
        rc, secs = run.terminate(timeout=15)
        assert rc == 0, f"switchable proxy exit status {rc} after {secs:.1f}s:\n{dt.tail(run.stderr)}"


def post_switch(run: dt.ProxyRun, to: str, fail: int = 0) -> dict:
    req = urllib.request.Request(f"{run.admin_url}/switch?to={to}&fail={fail}", method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=40) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        pytest.fail(f"POST /switch?to={to} -> {e.code}: {e.read()!r}\n{dt.tail(run.stderr)}")


def metric_value(text: str, series: str) -> float:
    """The value of one series (`name` or `name{labels}` exactly as exposed)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {series} in the metrics")


def metrics(run: dt.ProxyRun) -> str:
    with urllib.request.urlopen(f"{run.admin_url}/metrics", timeout=10) as r:
        return r.read().decode()


def accepted(run: dt.ProxyRun) -> float:
    return metric_value(metrics(run), "dpuproxy_connections_accepted_total")


def start_clients(topo, workdir: Path, tls_cert, jwt_auth, name: str, extra: list[str]):
    ready = workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    out, err = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    url = f"https://{topo.proxy_ip}:{dt.PROXY_PORT}/mcp"
    cmd = [dt.PYTHON, str(CLIENT), "--url", url, "--cafile", tls_cert[0], "--token", jwt_auth.token,
           "--ready-file", str(ready), *extra]  # fmt: skip
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = topo.ns_popen(cmd, stdout=fo, stderr=fe)
    deadline = time.monotonic() + 90
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode} before ready:\n{dt.tail(err)}\n{dt.tail(out)}")
        if time.monotonic() > deadline:
            dt.kill_hard(proc)
            pytest.fail(f"{name} not ready in 90 s:\n{dt.tail(err)}")
        time.sleep(0.05)
    return proc, out, err


def finish(proc, out: Path, err: Path, timeout: float = 180) -> dict:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        dt.kill_hard(proc)
        pytest.fail(f"clients did not finish in {timeout:g} s:\n{dt.tail(err)}")
    lines = out.read_text().splitlines()
    report = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    return {"rc": proc.returncode, **report}


def test_streams_and_sessions_move_back_and_forth(switchable, switch_topo, workdir, tls_cert, jwt_auth):
    """50 SSE streams (numbered events every 50 ms, running hash) and 50 keep-alive sessions
    looping tools/call; 10 switches to the kernel path and back. Nothing lost or doubled, every
    hash matches the backend's, every call answered, no connection broken or replaced."""
    streams, callers = 50, 50
    before = accepted(switchable)
    proc, out, err = start_clients(
        switch_topo, workdir, tls_cert, jwt_auth, "switch-clients",
        ["--streams", str(streams), "--callers", str(callers), "--events", "400", "--interval", "0.05"],
    )  # fmt: skip
    results = []
    try:
        for _ in range(10):
            for to in ("kernel", "dpdk"):
                r = post_switch(switchable, to)
                results.append(r)
                time.sleep(0.2)
    finally:
        report = finish(proc, out, err)
    for r in results:
        assert (r["moved"], r["failed"], r["taken_back"], r["stayed"]) == (streams + callers, 0, 0, 0), (
            f"a switch did not move every connection: {r}\n{dt.tail(switchable.stderr)}"
        )
    bad = [s for s in report["streams"] if not s["ok"]] + [c for c in report["callers"] if not c["ok"]]
    assert not bad, f"{len(bad)} clients failed, e.g. {bad[:3]}\n{dt.tail(err)}"
    assert report["rc"] == 0
    assert all(s["events"] == 400 for s in report["streams"]), report["streams"][:3]
    assert all(c["calls"] > 0 for c in report["callers"]), report["callers"]
    assert accepted(switchable) - before == streams + callers, "a client connected anew"
    m = metrics(switchable)
    assert metric_value(m, 'dpuproxy_switch_moved_total{to="kernel"}') >= 10 * (streams + callers)
    assert metric_value(m, "dpuproxy_switch_failed_total") == 0
    print(f"switches: {[(r['from'], r['to'], r['moved'], round(r['ms'], 1), r['pause_p99_us']) for r in results]}")


def test_a_failed_restore_costs_only_that_connection(switchable, switch_topo, workdir, tls_cert, jwt_auth):
    """The kernel path fails one restore on purpose: that connection is taken back by the DPDK
    path and goes on there; every other connection moves; no client notices anything."""
    m0 = metrics(switchable)
    taken0 = metric_value(m0, "dpuproxy_switch_taken_back_total")
    proc, out, err = start_clients(
        switch_topo, workdir, tls_cert, jwt_auth, "switch-fault",
        ["--streams", "5", "--callers", "5", "--events", "120", "--interval", "0.05"],
    )  # fmt: skip
    try:
        there = post_switch(switchable, "kernel", fail=1)
        time.sleep(0.3)
        back = post_switch(switchable, "dpdk")
    finally:
        report = finish(proc, out, err)
    assert (there["moved"], there["taken_back"], there["failed"]) == (9, 1, 0), there
    # The one taken back never left the DPDK path.
    assert (back["moved"], back["taken_back"], back["failed"]) == (9, 0, 0), back
    assert metric_value(metrics(switchable), "dpuproxy_switch_taken_back_total") == taken0 + 1
    bad = [s for s in report["streams"] if not s["ok"]] + [c for c in report["callers"] if not c["ok"]]
    assert not bad and report["rc"] == 0, f"clients failed: {bad}\n{dt.tail(err)}"
    log = switchable.stderr_text()
    assert "restore failed; its source takes it back" in log and 'path="kernel"' in log, log[-3000:]


def test_sdk_session_streams_progress_across_switches(switchable, switch_topo, workdir, tls_cert, jwt_auth):
    """The real MCP SDK client: one session's progress stream runs across a switch to the kernel
    path and back; every notification arrives once, in order, and the session keeps its backend."""
    proc, out, err = start_clients(
        switch_topo, workdir, tls_cert, jwt_auth, "switch-sdk",
        ["--sdk", "--events", "60", "--interval", "0.05"],
    )  # fmt: skip
    try:
        there = post_switch(switchable, "kernel")
        time.sleep(0.5)
        back = post_switch(switchable, "dpdk")
    finally:
        report = finish(proc, out, err, timeout=60)
    assert there["moved"] >= 1 and back["moved"] >= 1 and there["failed"] == back["failed"] == 0, (there, back)
    assert report["rc"] == 0, f"SDK session: {report}\n{dt.tail(err)}"
    assert report["progress"] == list(range(1, 61)) and report["hash_ok"], report


def test_a_connection_that_cannot_move_stays_and_keeps_working(switchable, switch_topo, workdir, tls_cert, jwt_auth):
    """Two sessions the kernel path accepted with TCP timestamps (which the userspace stack does
    not send) cannot move to DPDK: the switch leaves them on the kernel path, counted as stayed,
    and they go on answering calls there."""
    stop = workdir / "switch-stay.stop"
    stop.unlink(missing_ok=True)
    post_switch(switchable, "kernel")
    switch_topo.nsh(["sysctl", "-q", "-w", "net.ipv4.tcp_timestamps=1"])
    try:
        proc, out, err = start_clients(
            switch_topo, workdir, tls_cert, jwt_auth, "switch-stay",
            ["--streams", "0", "--callers", "2", "--pause", "0.1", "--stop-file", str(stop)],
        )  # fmt: skip
    finally:
        switch_topo.nsh(["sysctl", "-q", "-w", "net.ipv4.tcp_timestamps=0"])
    try:
        back = post_switch(switchable, "dpdk")
        time.sleep(1.0)
    finally:
        stop.write_text("stop\n")
        report = finish(proc, out, err, timeout=60)
    assert (back["moved"], back["stayed"], back["failed"], back["taken_back"]) == (0, 2, 0, 0), back
    assert report["rc"] == 0 and all(c["ok"] for c in report["callers"]), f"{report}\n{dt.tail(err)}"
    assert all(c["calls"] >= 3 for c in report["callers"]), report["callers"]
    assert metric_value(metrics(switchable), "dpuproxy_switch_stayed_total") >= 2

"""A 2-second smoke of `dpuproxy bench proxy` (figures are not asserted, only
that every available target ran, produced numbers, and the report is whole)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import proxy_binary


def _bench_links() -> set[str]:
    """Names of network devices the dpdk target creates (`dpb<pid>a`), plus its namespaces."""
    if not shutil.which("ip"):
        return set()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if ": dpb" in line}
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return names | {line.split()[0] for line in spaces.splitlines() if line.startswith("dpb")}


def _bench_proxy(out, *extra):
    """A 2-second `bench proxy` run into `out`; its stdout (it must succeed)."""
    cmd = [
        *proxy_binary(), "bench", "proxy", *extra,
        "--duration", "2", "--warmup", "0.5", "--runs", "1", "--connections", "8",
        "--out", str(out),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_bench_proxy_smoke(tmp_path):
    before = _bench_links()
    out = tmp_path / "bench-out"
    stdout = _bench_proxy(out, "--targets", "kernel,dpdk,haproxy")
    lines = stdout.strip().splitlines()
    assert re.fullmatch(
        r"ratios: kernel/haproxy=(\d+\.\d\d|n/a) dpdk/kernel=(\d+\.\d\d|n/a) dpdk_us_per_req=(\d+\.\d\d|n/a)",
        lines[-1],
    ), lines[-1]
    report = json.loads((out / "bench-proxy.json").read_text())
    by = {r["target"]: r for r in report["results"]}
    kernel = by["kernel"]
    assert kernel["status"] == "ok", kernel
    assert kernel["rps"] > 0 and kernel["errors"] == 0, kernel
    # Cost per request from the proxy core's /proc/stat time, for every target.
    assert kernel["core_us_per_req"] > 0 and kernel["rps_per_core"] > 0, kernel
    assert kernel["other_share"] is not None and kernel["other_share"] >= 0, kernel
    assert sum(kernel["backend_spread"]) > 0 and min(kernel["backend_spread"]) > 0, kernel
    assert report["misrouted"] == 0
    dpdk = by["dpdk"]
    if os.environ.get("DPUPROXY_REQUIRE_DPDK") == "1":
        # CI builds with DPDK and runs as root: the dpdk target must run.
        assert dpdk["status"] == "ok", dpdk
        assert dpdk["rps"] > 0 and dpdk["errors"] == 0, dpdk
        assert dpdk["core_us_per_req"] and dpdk["core_us_per_req"] > 0, dpdk
        assert dpdk["cost_source"] == "lcore busy cycles", dpdk
        # The default rig: a memif peer process, no kernel network path.
        assert "net_memif" in dpdk["describe"], dpdk
        assert re.search(r"dpdk_us_per_req=\d+\.\d\d", lines[-1])
        assert min(dpdk["backend_spread"]) > 0, dpdk
        assert re.search(r"dpdk/kernel=\d+\.\d\d", lines[-1])
    elif dpdk["status"] != "ok":
        # Without DPDK (or root) it must say why and get no number.
        assert dpdk["rps"] is None and dpdk["status"].startswith("not run:")
        assert "dpdk/kernel=n/a dpdk_us_per_req=n/a" in lines[-1]
    if shutil.which("haproxy"):
        assert by["haproxy"]["status"] == "ok", by["haproxy"]
        assert by["haproxy"]["rps"] > 0 and by["haproxy"]["errors"] == 0
        assert by["haproxy"]["core_us_per_req"] > 0, by["haproxy"]
        assert (out / "haproxy.cfg").read_text().count("jwt_verify") == 1
        assert re.search(r"kernel/haproxy=\d+\.\d\d", lines[-1])
    else:
        assert "kernel/haproxy=n/a" in lines[-1]
    svg = (out / "bench-proxy.svg").read_text()
    assert svg.startswith("<svg") and "requests/s per proxy core" in svg
    # The dpdk target's namespace and veth are gone again.
    assert _bench_links() <= before, f"left behind: {_bench_links() - before}"


def test_bench_proxy_dpdk_on_the_veth_rig(tmp_path):
    """The dpdk target's other rig: af_packet on a veth, kernel peers in a namespace."""
    if os.environ.get("DPUPROXY_REQUIRE_DPDK") != "1":
        pytest.skip("needs a DPDK build and root (CI sets DPUPROXY_REQUIRE_DPDK=1)")
    before = _bench_links()
    out = tmp_path / "bench-out"
    _bench_proxy(out, "--targets", "dpdk", "--dpdk-rig", "veth")
    dpdk = json.loads((out / "bench-proxy.json").read_text())["results"][0]
    assert dpdk["status"] == "ok" and dpdk["rps"] > 0 and dpdk["errors"] == 0, dpdk
    assert "net_af_packet" in dpdk["describe"], dpdk
    assert min(dpdk["backend_spread"]) > 0, dpdk
    assert _bench_links() <= before, f"left behind: {_bench_links() - before}"


def _assert_all_moved(p, n):
    """A move benchmark exited 0 with `moved=n failed=0 conns_per_s=R
    pause_p99_us=P` (R, P > 0) as its last line."""
    assert p.returncode == 0, p.stdout + p.stderr
    last = p.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"moved=(\d+) failed=(\d+) conns_per_s=(\d+) pause_p99_us=(\d+)", last)
    assert m, last
    assert (int(m[1]), int(m[2])) == (n, 0), p.stdout + p.stderr
    assert int(m[3]) > 0 and int(m[4]) > 0, last


def test_bench_repair_smoke():
    """`bench repair` moves every connection and checks each byte-exact (the
    figures are the benchmark's; here only that all moved and none failed)."""
    if os.geteuid() != 0:
        pytest.skip("TCP_REPAIR needs root")
    p = subprocess.run(
        [*proxy_binary(), "bench", "repair", "--connections", "200", "--queued", "16000"],
        capture_output=True, text=True, timeout=120,
    )
    _assert_all_moved(p, 200)
    # Every move carried bytes in the send queue too (the client's window is small).
    held = re.search(r"(\d+) captures held bytes in the send queue", p.stderr)
    assert held and int(held[1]) == 200, p.stderr


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_bench_handoff_smoke(tls):
    """`bench handoff` moves every connection from its kernel socket to the
    userspace stack and back, with an echo round on each owner, over plain
    TCP and over TLS 1.3 (the session moves too). The figures are the
    benchmark's; here only that all moved, no round failed, and the
    namespaces are gone afterwards."""
    if os.geteuid() != 0:
        pytest.skip("namespaces, taps and TCP_REPAIR need root")
    p = subprocess.run(
        [*proxy_binary(), "bench", "handoff", "--connections", "200", *(["--tls"] if tls else [])],
        capture_output=True, text=True, timeout=180,
    )
    _assert_all_moved(p, 200)
    assert "rounds (ok, bad): kernel (200, 0), userspace (200, 0), kernel again (200, 0)" in p.stdout, p.stdout
    assert "resets sent by the kernel 0, by the userspace stack 0" in p.stdout, p.stdout
    ns = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert "dbh" not in ns, ns

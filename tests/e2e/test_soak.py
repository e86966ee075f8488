"""The 60-second soak in each mode (`dpuproxy bench soak --check`): SSE streams held for a
minute through the proxy with keep-alive request churn, session create/delete churn and a
backend killed and restarted twice. It must end with no fd leaked, no event lost and no failed
request other than those a killed backend explains; rates are not asserted.

The dpdk run needs root, hugepages and a DPDK build: with DPUPROXY_REQUIRE_DPDK=1 (CI) it must
run, elsewhere it may skip with the reason."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import proxy_binary

STREAMS = 300


def _netns_and_links() -> set[str]:
    """Namespaces and veths the dpdk soak creates (`dpb<pid>…`)."""
    if not shutil.which("ip"):
        return set()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if ": dpb" in line}
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return names | {line.split()[0] for line in spaces.splitlines() if line.startswith("dpb")}


def _pairs(line: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def _dpdk_unavailable() -> str | None:
    if os.environ.get("DPUPROXY_REQUIRE_DPDK") == "1":
        return None
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("ip"):
        return "needs iproute2"
    return None


@pytest.mark.parametrize("mode", ["kernel", "dpdk"])
def test_soak_one_minute(mode, tmp_path):
    if mode == "dpdk" and (why := _dpdk_unavailable()):
        pytest.skip(f"dpdk soak: {why}")
    before = _netns_and_links()
    out = tmp_path / "soak"
    cmd = [
        *proxy_binary(), "bench", "soak", "--mode", mode, "--streams", str(STREAMS),
        "--minutes", "1", "--sample-every", "15", "--kill-every", "20", "--down-for", "5",
        "--event-every", "1", "--requesters", "4", "--churners", "2", "--check",
        "--out", str(out),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr[-4000:]
    lines = p.stdout.strip().splitlines()
    verdict = _pairs(lines[-1])
    assert re.fullmatch(
        r"streams=\d+ minutes=\S+ rss_start_mb=\S+ rss_end_mb=\S+ rss_slope_kb_per_min=\S+ "
        r"fds_leaked=\d+ events_lost=\d+ requests_failed=\d+",
        lines[-1],
    ), lines[-1]
    assert verdict["streams"] == str(STREAMS)
    assert (verdict["fds_leaked"], verdict["events_lost"], verdict["requests_failed"]) == ("0", "0", "0")
    details = _pairs(lines[-2])
    assert details["mode"] == mode
    # Every event a backend emitted arrived, each stream got more than its first and last.
    assert int(details["events"]) == int(details["backend_events"]) > 3 * STREAMS, details
    # The kills happened and were felt: streams cut, clients reconnected.
    assert int(details["requests_excused"]) > 0 and int(details["reconnects"]) > 0, details
    assert int(details["requests_ok"]) > STREAMS, details
    report = json.loads((out / f"soak-{mode}.json").read_text())
    assert len(report["samples"]) >= 4
    assert all(s["proxy_streams"] > 0 for s in report["samples"]), report["samples"]
    assert report["fds_after"] <= report["fds_idle"]
    assert "kill" in p.stderr and "restarted" in p.stderr
    if mode == "dpdk":
        assert report["samples"][0]["fds"] < 100, "a dpdk proxy holds no fd per connection"
    assert _netns_and_links() <= before, f"left behind: {_netns_and_links() - before}"

"""End-to-end tests: the real MCP Python SDK (mcp==2.3.0) through dpuproxy (--mode kernel) over TLS.

Run:  .venv/bin/python -m pytest tests/e2e -v
(see conftest.py for DPUPROXY_BIN and the other knobs).
"""

from __future__ import annotations

import threading
import time

import httpx2
import pytest
from mcp_helpers import (
    BACKEND_NAMES,
    INITIALIZE_PARAMS,
    backend_requests,
    jsonrpc,
    legacy_session,
    mcp_headers,
    metric,
    metric_family,
    modern_client,
    parse_prometheus,
    raw_client,
    result_text,
    run,
    scrape,
    sessions,
    sse_messages,
    tool_body,
    whoami,
)

pytestmark = pytest.mark.timeout(90)


def test_affinity_within_session(proxy):
    async def body():
        async with legacy_session(proxy.url, proxy.cafile) as (client, tracker):
            assert client.protocol_version == "2025-11-25"
            assert client.server_info is not None and client.server_info.name in BACKEND_NAMES
            answers = [await whoami(client) for _ in range(6)]
            echoed = result_text(await client.call_tool("echo", {"text": "affinity"}))
            return client.server_info.name, answers, echoed, tracker

    server_name, answers, echoed, tracker = run(body)
    assert set(answers) <= set(BACKEND_NAMES), answers
    assert len(set(answers)) == 1, f"one session was served by several backends: {answers}"
    assert answers[0] == server_name, f"initialize went to {server_name}, later calls to {answers[0]}"
    assert echoed == "affinity"
    # The proxy must hand the backend's session id through unchanged (one id for the whole session).
    assert len(tracker.session_ids_seen) == 1, tracker.session_ids_seen
    assert tracker.delete_statuses == [200], f"SDK's DELETE on close got {tracker.delete_statuses}"


def test_round_robin_spreads_new_sessions(proxy):
    async def body():
        landed = []
        async with legacy_session(proxy.url, proxy.cafile) as (c1, _):
            landed.append(await whoami(c1))
            async with legacy_session(proxy.url, proxy.cafile) as (c2, _):
                landed.append(await whoami(c2))
                async with legacy_session(proxy.url, proxy.cafile) as (c3, _):
                    landed.append(await whoami(c3))
        return landed

    landed = run(body)
    assert sorted(landed) == ["b1", "b2", "b3"], f"3 consecutive new sessions landed on {landed}"


def test_sse_progress_notifications_stream_through(proxy):
    steps, delay = 4, 0.3
    before = scrape(proxy.admin_url)

    async def body():
        seen: list[tuple[float, float, float | None]] = []
        async with legacy_session(proxy.url, proxy.cafile) as (client, _):
            who = await whoami(client)

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append((time.monotonic(), progress, total))

            result = await client.call_tool(
                "progress", {"steps": steps, "delay": delay}, progress_callback=on_progress
            )
            finished = time.monotonic()
        return who, seen, result_text(result), finished

    who, seen, text, finished = run(body)
    assert len(seen) == steps, f"expected {steps} progress notifications, got {len(seen)}: {seen}"
    assert [p for _, p, _ in seen] == [float(i) for i in range(1, steps + 1)]
    assert all(total == steps for _, _, total in seen)
    assert text == f"done after {steps} steps from {who}"
    # Notifications must be relayed as they are produced, not buffered until the response ends.
    spread = seen[-1][0] - seen[0][0]
    assert spread >= 0.5 * delay * (steps - 1), f"progress events arrived bunched together ({spread:.3f}s apart)"
    assert finished - seen[0][0] >= 0.5 * delay * (steps - 1), "first progress event arrived only with the result"

    after = scrape(proxy.admin_url)
    sse_before = metric(before, "dpuproxy_sse_streams_total") or 0.0
    sse_after = metric(after, "dpuproxy_sse_streams_total")
    assert sse_after is not None, "dpuproxy_sse_streams_total missing from /metrics"
    assert sse_after > sse_before, f"dpuproxy_sse_streams_total did not grow ({sse_before} -> {sse_after})"


def test_get_sse_stream_is_routed_and_ends_on_delete(proxy):
    """Raw handshake-era flow: the standalone GET stream sends headers only (no body) until
    something happens, so the proxy must forward response headers at once, and must forward
    the end of the chunked stream when the session is deleted."""
    with raw_client(proxy.cafile) as http:
        r = http.post(proxy.url, headers=mcp_headers(version=None), content=jsonrpc("initialize", INITIALIZE_PARAMS))
        assert r.status_code == 200, f"initialize -> {r.status_code} {r.text[:300]}"
        sid = r.headers.get("mcp-session-id")
        assert sid, f"initialize response without Mcp-Session-Id: {dict(r.headers)}"
        assert r.headers["content-type"].startswith("text/event-stream")
        init = sse_messages(r.text)
        assert init and init[-1]["id"] == 1 and init[-1]["result"]["serverInfo"]["name"] in BACKEND_NAMES
        backend = init[-1]["result"]["serverInfo"]["name"]

        r = http.post(proxy.url, headers=mcp_headers(sid), content=jsonrpc("notifications/initialized", id=None))
        assert r.status_code == 202, f"notifications/initialized -> {r.status_code} {r.text[:300]}"

        r = http.post(proxy.url, headers=mcp_headers(sid), content=tool_body("whoami", id=2))
        assert r.status_code == 200
        assert sse_messages(r.text)[-1]["result"]["content"][0]["text"] == backend

        ended = threading.Event()
        got: dict = {}
        with raw_client(proxy.cafile, timeout=10.0) as get_http:
            get_headers = {"accept": "text/event-stream", "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
            t0 = time.monotonic()
            with get_http.stream("GET", proxy.url, headers=get_headers) as stream:
                got["status"] = stream.status_code
                got["ctype"] = stream.headers.get("content-type", "")
                got["headers_after"] = time.monotonic() - t0
                assert stream.status_code == 200, f"GET stream -> {stream.status_code}"

                def drain() -> None:
                    try:
                        for _ in stream.iter_raw():
                            pass
                        ended.set()
                    except Exception as e:  # ReadTimeout = the proxy did not end the stream
                        got["error"] = repr(e)

                reader = threading.Thread(target=drain, daemon=True)
                reader.start()
                time.sleep(0.3)
                assert not ended.is_set(), "GET stream ended on its own before DELETE"
                d = http.delete(proxy.url, headers=mcp_headers(sid))
                assert d.status_code == 200, f"DELETE -> {d.status_code} {d.text[:300]}"
                reader.join(timeout=12)
        assert got["ctype"].startswith("text/event-stream"), got
        assert got["headers_after"] < 5, f"GET stream headers took {got['headers_after']:.1f}s"
        assert ended.is_set(), f"GET stream did not end after DELETE: {got.get('error')}"

        r = http.post(proxy.url, headers=mcp_headers(sid), content=tool_body("whoami", id=3))
        assert r.status_code == 404, f"POST on deleted session -> {r.status_code}"


def test_delete_then_404(proxy):
    async def body():
        async with legacy_session(proxy.url, proxy.cafile) as (client, tracker):
            who = await whoami(client)
            listed = sessions(proxy.admin_url)
        return who, tracker, listed

    who, tracker, listed = run(body)
    sid = tracker.session_id
    assert any(s["id_prefix"] == sid[:8] for s in listed["sessions"]), f"{sid[:8]} not in /sessions: {listed}"
    assert tracker.delete_statuses == [200], f"SDK DELETE on close got {tracker.delete_statuses}"

    with raw_client(proxy.cafile) as http:
        r = http.post(proxy.url, headers=mcp_headers(sid), content=tool_body("whoami", id=7))
    assert r.status_code == 404, f"reusing terminated session {sid[:8]} (on {who}) gave HTTP {r.status_code}"

    deadline = time.monotonic() + 5
    while True:
        listed = sessions(proxy.admin_url)
        if not any(s["id_prefix"] == sid[:8] for s in listed["sessions"]):
            break
        assert time.monotonic() < deadline, f"terminated session {sid[:8]} still in /sessions: {listed}"
        time.sleep(0.1)


def test_unknown_session_id_404_without_touching_backends(proxy):
    before = backend_requests(scrape(proxy.admin_url))
    with raw_client(proxy.cafile) as http:
        r = http.post(
            proxy.url,
            headers=mcp_headers("nosuchsession"),
            content=tool_body("whoami", id=1),
        )
    assert r.status_code == 404, f"unknown Mcp-Session-Id -> HTTP {r.status_code} {r.text[:300]}"
    after = backend_requests(scrape(proxy.admin_url))
    assert after == before, f"a request with an unknown session id reached a backend: {before} -> {after}"


def test_session_id_with_invisible_char_is_400(proxy):
    before = backend_requests(scrape(proxy.admin_url))
    with raw_client(proxy.cafile) as http:
        r = http.post(
            proxy.url,
            headers=mcp_headers("bad session"),  # a space (0x20) is outside the allowed 0x21-0x7E
            content=tool_body("whoami", id=1),
        )
    assert r.status_code == 400, f"Mcp-Session-Id with a space -> HTTP {r.status_code} {r.text[:300]}"
    after = backend_requests(scrape(proxy.admin_url))
    assert after == before, f"a malformed session id reached a backend: {before} -> {after}"


def test_stateless_2026_client(proxy):
    async def body():
        async with modern_client(proxy.url, proxy.cafile) as (client, tracker):
            assert client.protocol_version == "2026-07-28"
            who = await whoami(client)
            echoed = result_text(await client.call_tool("echo", {"text": "stateless"}))
            seen = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            done = result_text(
                await client.call_tool("progress", {"steps": 2, "delay": 0.1}, progress_callback=on_progress)
            )
        return who, echoed, seen, done, tracker

    who, echoed, seen, done, tracker = run(body)
    assert who in BACKEND_NAMES
    assert echoed == "stateless"
    assert seen == [1.0, 2.0], f"2026-07-28 progress notifications: {seen}"
    assert done.startswith("done after 2 steps from b")
    assert tracker.session_id is None, f"a stateless exchange was given Mcp-Session-Id {tracker.session_id}"
    assert not any(m in ("GET", "DELETE") for m, _, _ in tracker.statuses), tracker.statuses
    assert all(s == 200 for _, s, _ in tracker.statuses), tracker.statuses


def test_metrics_and_sessions(proxy, expect_ktls):
    async def body():
        held = []
        async with legacy_session(proxy.url, proxy.cafile) as (c1, t1):
            held.append((await whoami(c1), t1.session_id))
            async with legacy_session(proxy.url, proxy.cafile) as (c2, t2):
                held.append((await whoami(c2), t2.session_id))
                async with legacy_session(proxy.url, proxy.cafile) as (c3, t3):
                    held.append((await whoami(c3), t3.session_id))
                    listed = sessions(proxy.admin_url)
                    samples = scrape(proxy.admin_url)
        return held, listed, samples

    held, listed, samples = run(body)
    assert sorted(name for name, _ in held) == ["b1", "b2", "b3"], held

    by_prefix = {s["id_prefix"]: s for s in listed["sessions"]}
    for name, sid in held:
        entry = by_prefix.get(sid[:8])
        assert entry is not None, f"session {sid[:8]} (on {name}) missing from /sessions: {listed}"
        assert entry["backend"] == proxy.backend_by_name(name).addr, f"{entry} should be on {name}"
    assert listed["count"] >= 3

    active = metric(samples, "dpuproxy_sessions_active")
    assert active is not None and active >= 3, f"dpuproxy_sessions_active = {active}"

    per_backend = backend_requests(samples)
    for b in proxy.backends:
        assert per_backend.get(b.addr, 0) > 0, f"no requests counted for {b.name} ({b.addr}): {per_backend}"

    assert metric(samples, "dpuproxy_ktls_available") == expect_ktls
    openssl = metric(samples, "dpuproxy_tls_record_path_total", path="openssl")
    assert openssl is not None and openssl > 0, f"openssl record path count = {openssl}"
    for path in ("ktls-tx", "ktls-rx"):
        v = metric(samples, "dpuproxy_tls_record_path_total", path=path)
        assert v is not None, f'dpuproxy_tls_record_path_total{{path="{path}"}} missing'
        if not expect_ktls:
            assert v == 0, f"kTLS is unavailable here but path {path} counted {v}"
    errors = metric_family(samples, "dpuproxy_errors_total")
    assert errors, "dpuproxy_errors_total{kind=...} missing from /metrics"
    for labels, v in errors.items():
        assert "kind" in dict(labels) and v >= 0, (labels, v)


def test_metrics_endpoint_is_prometheus_text(proxy):
    r = httpx2.get(f"{proxy.admin_url}/metrics", timeout=5.0)
    assert r.status_code == 200
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers.get("content-type")
    names = {name for name, _ in parse_prometheus(r.text)}  # every sample line must parse
    for needed in (
        "dpuproxy_requests_total",
        "dpuproxy_sessions_active",
        "dpuproxy_sse_streams_total",
        "dpuproxy_tls_record_path_total",
        "dpuproxy_ktls_available",
    ):
        assert needed in names, f"{needed} missing from /metrics"


def test_demo_client_script_passes(proxy):
    """scripts/mcp_client_demo.py end to end through the proxy (exit 0, round-robin over 3 backends)."""
    import subprocess
    import sys

    from conftest import REPO

    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "mcp_client_demo.py"), "--url", proxy.url, "--cafile", proxy.cafile],
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert res.returncode == 0, f"demo failed ({res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}"
    assert "(3 distinct backends)" in res.stdout, res.stdout


"""Many proxies, no shared store: three kernel-mode proxies with one session key behind HAProxy
in TCP mode (round-robin per connection) in front of the three SDK backends; hostile and rotated
session ids; a reload that adds, drains and removes backends under load; a drain under load.

The SDK client opens a new TCP connection per request, so its requests reach all three proxies;
its session must stay on its backend anyway (the backend is sealed into the session id).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from conftest import BACKEND_SCRIPT, STARTUP_TIMEOUT, Backend, launch_proxy, wait_for_port
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_helpers import (
    INITIALIZE_PARAMS,
    READ_TIMEOUT,
    Tracker,
    backend_requests,
    jsonrpc,
    mcp_headers,
    metric,
    metric_family,
    raw_client,
    result_text,
    run,
    scrape,
    tls_context,
    tool_body,
)
from proc_helpers import free_port, stop_process, tail

pytestmark = pytest.mark.timeout(180)


def write_key(path: Path, *secrets: bytes) -> None:
    path.write_text("".join(base64.b64encode(s).decode() + "\n" for s in secrets))


KEY_1 = b"fleet key one: 32 bytes of secret"
KEY_2 = b"fleet key two: 32 bytes of secret"
KEY_3 = b"fleet key three: 32 bytes secret"
FOREIGN = b"another fleet's key, 32 bytes..."


def start_haproxy(workdir: Path, ports: list[int]) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(exe).exists():
        pytest.fail("haproxy is needed (apt-get install haproxy; scripts/setup.sh installs it)", pytrace=False)
    port = free_port()
    servers = "".join(f"  server p{i} 127.0.0.1:{p}\n" for i, p in enumerate(ports))
    cfg = workdir / "fleet-haproxy.cfg"
    cfg.write_text(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n"
        f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend proxies\n"
        f"backend proxies\n  balance roundrobin\n{servers}"
    )
    err = workdir / "fleet-haproxy.stderr"
    with open(err, "wb") as fe:
        proc = subprocess.Popen(
            [exe, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=fe, stderr=fe, start_new_session=True
        )
    wait_for_port(port, proc, "haproxy", [err], STARTUP_TIMEOUT)
    return proc, port


@pytest.fixture(scope="module")
def fleet(workdir: Path, backends: tuple[Backend, ...], tls_cert: tuple[str, str]):
    key = workdir / "fleet.key"
    write_key(key, KEY_1)
    with contextlib.ExitStack() as stack:
        proxies = [
            stack.enter_context(
                launch_proxy(workdir, backends, tls_cert, ["--session-key", str(key)], name=f"fleet-p{i}")
            )
            for i in range(3)
        ]
        hap, port = start_haproxy(workdir, [p.port for p in proxies])
        stack.callback(stop_process, hap)

        class Fleet:
            pass

        f = Fleet()
        f.proxies, f.key, f.cafile = proxies, key, tls_cert[0]
        f.url = f"https://127.0.0.1:{port}/mcp"
        yield f


def fresh_connections_http(cafile: str, tracker: Tracker) -> httpx2.AsyncClient:
    """An httpx client that opens a new TCP (and TLS) connection for every request."""
    return httpx2.AsyncClient(
        verify=tls_context(cafile),
        timeout=httpx2.Timeout(10.0, read=READ_TIMEOUT),
        limits=httpx2.Limits(max_keepalive_connections=0),
        event_hooks={"response": [tracker.on_response]},
    )


def requests_per_proxy(fleet) -> list[float]:
    return [metric(scrape(p.admin_url), "dpuproxy_client_requests_total") or 0.0 for p in fleet.proxies]


def test_every_session_stays_on_its_backend_through_all_proxies(fleet):
    before = requests_per_proxy(fleet)

    async def one_session() -> tuple[set[str], str, int, Tracker]:
        tracker = Tracker()
        async with fresh_connections_http(fleet.cafile, tracker) as http:
            async with Client(
                streamable_http_client(fleet.url, http_client=http, terminate_on_close=True),
                mode="legacy",
                read_timeout_seconds=READ_TIMEOUT,
            ) as client:
                seen = {result_text(await client.call_tool("whoami", {})) for _ in range(6)}
                progress: list[float] = []

                async def on_progress(p: float, total: float | None, msg: str | None) -> None:
                    progress.append(p)

                done = result_text(
                    await client.call_tool(
                        "progress", {"steps": 4, "delay": 0.05}, progress_callback=on_progress
                    )
                )
                return seen, done, len(progress), tracker

    async def body():
        return [await one_session() for _ in range(3)]

    for seen, done, steps, tracker in run(body, timeout=120):
        assert len(seen) == 1, f"one session's calls reached several backends: {seen}"
        assert done.startswith("done after 4 steps from "), done
        assert done.endswith(next(iter(seen))), f"the progress call ran elsewhere: {done} vs {seen}"
        assert steps == 4, f"{steps} progress notifications"
        assert tracker.session_id and tracker.session_id.startswith("s1."), tracker.session_id
        assert tracker.delete_statuses == [200], tracker.delete_statuses
    after = requests_per_proxy(fleet)
    moved = [a - b for a, b in zip(after, before)]
    assert all(m > 0 for m in moved), f"requests did not reach every proxy: {moved}"


def initialize_at(proxy_url: str, cafile: str) -> tuple[str, str]:
    """Initialize directly at one proxy; the sealed id and the backend that holds it."""
    with raw_client(cafile) as http:
        r = http.post(proxy_url, headers=mcp_headers(), content=jsonrpc("initialize", INITIALIZE_PARAMS))
        assert r.status_code == 200, r.text[:300]
        sid = r.headers["mcp-session-id"]
        r = http.post(proxy_url, headers=mcp_headers(sid), content=jsonrpc("notifications/initialized", id=None))
        assert r.status_code in (200, 202), r.status_code
        return sid, whoami_raw(http, proxy_url, sid)


def whoami_raw(http: httpx2.Client, url: str, sid: str) -> str:
    r = http.post(url, headers=mcp_headers(sid), content=tool_body("whoami", id=5))
    assert r.status_code == 200, f"whoami -> {r.status_code}: {r.text[:300]}"
    for line in r.text.splitlines():
        if line.startswith("data:"):
            return json.loads(line[5:])["result"]["content"][0]["text"]
    return json.loads(r.text)["result"]["content"][0]["text"]


def test_delete_then_404_through_another_proxy(fleet):
    p0, p1, p2 = fleet.proxies
    sid, who = initialize_at(p0.url, fleet.cafile)
    with raw_client(fleet.cafile) as http:
        assert whoami_raw(http, p1.url, sid) == who, "another proxy routed the session elsewhere"
        r = http.delete(p1.url, headers=mcp_headers(sid))
        assert r.status_code == 200, f"DELETE through p1 -> {r.status_code} {r.text[:200]}"
        r = http.post(p2.url, headers=mcp_headers(sid), content=tool_body("whoami", id=9))
        assert r.status_code == 404, f"the deleted session through p2 -> {r.status_code}"


def total_backend_requests(fleet) -> float:
    return sum(sum(backend_requests(scrape(p.admin_url)).values()) for p in fleet.proxies)


def session_metric(proxy, result: str) -> float:
    return metric(scrape(proxy.admin_url), "dpuproxy_session_ids_total", result=result) or 0.0


def test_hostile_and_rotated_out_ids_get_404_without_a_backend(fleet, workdir, backends, tls_cert):
    p0 = fleet.proxies[0]
    sid, who = initialize_at(p0.url, fleet.cafile)
    body = sid[3:]
    flipped = "A" if body[-5] != "A" else "B"
    tampered = "s1." + body[:-5] + flipped + body[-4:]
    truncated = sid[:-7]
    foreign_key = workdir / "foreign.key"
    write_key(foreign_key, FOREIGN)
    with launch_proxy(workdir, backends, tls_cert, ["--session-key", str(foreign_key)], name="foreign") as other:
        foreign, _ = initialize_at(other.url, fleet.cafile)
    before = total_backend_requests(fleet)
    refused_before = sum(session_metric(p0, r) for r in ("refused_key", "refused_malformed"))
    with raw_client(fleet.cafile) as http:
        for bad in (tampered, truncated, foreign):
            r = http.post(p0.url, headers=mcp_headers(bad), content=tool_body("whoami", id=3))
            assert r.status_code == 404, f"{bad[:20]}… -> {r.status_code}"
    assert total_backend_requests(fleet) == before, "a refused id reached a backend"
    refused_after = sum(session_metric(p0, r) for r in ("refused_key", "refused_malformed"))
    assert refused_after == refused_before + 3

    # Rotate: the new key seals, the old one still opens.
    write_key(fleet.key, KEY_2, KEY_1)
    for p in fleet.proxies:
        r = httpx2.post(f"{p.admin_url}/reload", timeout=10)
        assert r.status_code == 200, r.text
    with raw_client(fleet.cafile) as http:
        assert whoami_raw(http, fleet.proxies[2].url, sid) == who, "an id sealed under the previous key"
    assert session_metric(fleet.proxies[2], "opened_previous_key") >= 1
    new_sid, new_who = initialize_at(fleet.proxies[1].url, fleet.cafile)
    # Rotate the old key out (the file changes: SIGHUP and the file watch both re-read it).
    write_key(fleet.key, KEY_3, KEY_2)
    for p in fleet.proxies:
        os.kill(p.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    with raw_client(fleet.cafile) as http:
        while True:
            codes = [
                http.post(p.url, headers=mcp_headers(sid), content=tool_body("whoami", id=4)).status_code
                for p in fleet.proxies
            ]
            if codes == [404, 404, 404]:
                break
            assert time.monotonic() < deadline, f"the rotated-out id still opens: {codes}"
            time.sleep(0.2)
        assert whoami_raw(http, fleet.proxies[0].url, new_sid) == new_who
    for p in fleet.proxies:
        reloads = metric_family(scrape(p.admin_url), "dpuproxy_reloads_total")
        assert reloads.get(frozenset({("result", "ok")}), 0) >= 2, reloads


# ---------------------------------------------------------------------------- reload and drain


def start_backend(workdir: Path, name: str) -> tuple[subprocess.Popen, Backend]:
    port = free_port()
    err = workdir / f"{name}.stderr"
    with open(err, "wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, str(BACKEND_SCRIPT), "--host", "127.0.0.1", "--port", str(port), "--name", name],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fe, start_new_session=True,
        )  # fmt: skip
    wait_for_port(port, proc, f"backend {name}", [err], STARTUP_TIMEOUT)
    return proc, Backend(name, port)


def write_config(path: Path, entries: list[str]) -> None:
    path.write_text("backends = [" + ", ".join(entries) + "]\n")


class Looper:
    """`n` threads of sessions in a loop (initialize, whoami × 4, DELETE) until stopped. Every
    HTTP exchange is recorded: (start, end, ok, backend of its session, what went wrong).
    `fresh`: a new TCP+TLS connection per exchange."""

    def __init__(self, url: str, cafile: str, n: int, fresh: bool = False) -> None:
        self.url, self.cafile, self.fresh = url, cafile, fresh
        self.stop = threading.Event()
        self.log: list[tuple[float, float, bool, str | None, str]] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def __enter__(self) -> "Looper":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def client(self) -> httpx2.Client:
        limits = httpx2.Limits(max_keepalive_connections=0) if self.fresh else httpx2.Limits()
        return httpx2.Client(verify=tls_context(self.cafile), timeout=15, limits=limits)

    def exchange(self, http, backend, method, **kw) -> httpx2.Response | None:
        t0 = time.monotonic()
        try:
            r = http.request(method, self.url, **kw)
        except httpx2.HTTPError as e:
            self.log.append((t0, time.monotonic(), False, backend, f"{type(e).__name__}: {e}"))
            return None
        ok = r.status_code in (200, 202)
        self.log.append((t0, time.monotonic(), ok, backend, "" if ok else f"HTTP {r.status_code}"))
        return r

    def _run(self) -> None:
        with self.client() as http:
            while not self.stop.is_set():
                r = self.exchange(http, None, "POST", headers=mcp_headers(), content=jsonrpc("initialize", INITIALIZE_PARAMS))
                if r is None or r.status_code != 200:
                    time.sleep(0.05)
                    continue
                # The backend names itself in the initialize result (serverInfo).
                sid, backend = r.headers["mcp-session-id"], initialize_server(r.text)
                for i in range(5):
                    r = self.exchange(http, backend, "POST", headers=mcp_headers(sid), content=tool_body("whoami", id=i + 2))
                    if r is None or r.status_code != 200:
                        break
                    who = sse_result(r.text)
                    if who != backend:
                        self.log.append((0.0, 0.0, False, backend, f"moved to {who}"))
                else:
                    self.exchange(http, backend, "DELETE", headers=mcp_headers(sid))

    def ok_count(self) -> int:
        return sum(1 for e in self.log if e[2])


def initialize_server(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("data:"):
            return json.loads(line[5:])["result"]["serverInfo"]["name"]
    return json.loads(text)["result"]["serverInfo"]["name"]


def sse_result(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("data:"):
            return json.loads(line[5:])["result"]["content"][0]["text"]
    return json.loads(text)["result"]["content"][0]["text"]


def stream_progress(url: str, cafile: str, steps: int, delay: float, out: dict) -> None:
    """A session with one long progress stream, read raw: every event, and how the stream ended."""
    with raw_client(cafile, timeout=60) as http:
        r = http.post(url, headers=mcp_headers(), content=jsonrpc("initialize", INITIALIZE_PARAMS))
        sid = r.headers["mcp-session-id"]
        out["backend"] = whoami_raw(http, url, sid)
        body = tool_body("progress", {"steps": steps, "delay": delay}, id=11)
        body = json.loads(body)
        body["params"]["_meta"] = {"progressToken": "p"}
        raw = b""
        try:
            with http.stream("POST", url, headers=mcp_headers(sid), content=json.dumps(body).encode()) as resp:
                out["status"] = resp.status_code
                for chunk in resp.iter_bytes():
                    raw += chunk
            out["clean"] = True
        except httpx2.HTTPError as e:
            out["clean"] = False
            out["error"] = repr(e)
        text = raw.decode().replace("\r\n", "\n")
        out["events"] = [e for e in text.split("\n\n") if e.strip()]
        out["boundary"] = text.endswith("\n\n") or text == ""
        out["result"] = '"result"' in text


def test_reload_adds_drains_and_removes_backends_under_load(workdir, backends, tls_cert):
    b1, b2, b3 = backends
    b4proc, b4 = start_backend(workdir, "b4")
    cfg = workdir / "reload.toml"
    entries = [f'"{b.name}={b.addr}"' for b in (b1, b2, b3)]
    write_config(cfg, entries)
    try:
        with launch_proxy(
            workdir, backends, tls_cert, ["--config", str(cfg)], name="reload", backend_flags=False
        ) as p:
            # One long stream on each backend (new sessions go round-robin).
            streams = [dict() for _ in range(3)]
            threads = [
                threading.Thread(target=stream_progress, args=(p.url, p.cafile, 40, 0.1, s), daemon=True)
                for s in streams
            ]
            for t in threads:
                t.start()
                time.sleep(0.3)
            with Looper(p.url, p.cafile, 3) as loop:
                time.sleep(1.0)
                # b1 drains, b2 goes, b4 comes; a config that does not parse changes nothing.
                cfg.write_text("backends = [\n")
                r = httpx2.post(f"{p.admin_url}/reload", timeout=10)
                assert r.status_code == 400, r.text
                write_config(cfg, [f'{{ name = "b1", addr = "{b1.addr}", drain = true }}', entries[2], f'"b4={b4.addr}"'])
                r = httpx2.post(f"{p.admin_url}/reload", timeout=10)
                assert r.status_code == 200, r.text
                assert "added [\"b4\"]" in r.text and "removed [\"b2\"]" in r.text, r.text
                time.sleep(2.0)
                calls_at_reload = loop.ok_count()
                time.sleep(2.0)
            for t in threads:
                t.join(timeout=30)
            new_sessions = []
            with raw_client(p.cafile) as http:
                for _ in range(6):
                    r = http.post(p.url, headers=mcp_headers(), content=jsonrpc("initialize", INITIALIZE_PARAMS))
                    new_sessions.append(whoami_raw(http, p.url, r.headers["mcp-session-id"]))
            backends_json = httpx2.get(f"{p.admin_url}/backends", timeout=5).json()
            reloads = metric_family(scrape(p.admin_url), "dpuproxy_reloads_total")
    finally:
        stop_process(b4proc)
    assert loop.ok_count() > calls_at_reload > 0, "the clients kept working after the reload"
    bad = [e for e in loop.log if not e[2] and e[3] != "b2"]
    assert not bad, f"requests lost that were not to the removed backend: {bad[:5]}"
    for s in streams:
        assert s.get("clean") and s.get("result"), f"stream on {s.get('backend')} was cut: {s}"
        assert len(s["events"]) == 41, f"{len(s['events'])} events on {s.get('backend')}"
    assert set(new_sessions) == {"b3", "b4"}, f"new sessions after the reload went to {new_sessions}"
    states = {b["name"]: b["state"] for b in backends_json["backends"]}
    assert states == {"b1": "draining", "b2": "removed", "b3": "active", "b4": "active"}, states
    assert reloads[frozenset({("result", "error")})] == 1 and reloads[frozenset({("result", "ok")})] == 1


def stream_get(url: str, cafile: str, out: dict) -> None:
    """A session's GET event stream, read raw until it ends."""
    with raw_client(cafile, timeout=60) as http:
        r = http.post(url, headers=mcp_headers(), content=jsonrpc("initialize", INITIALIZE_PARAMS))
        sid = r.headers["mcp-session-id"]
        headers = mcp_headers(sid)
        headers["accept"] = "text/event-stream"
        raw = b""
        try:
            with http.stream("GET", url, headers=headers) as resp:
                out["status"] = resp.status_code
                for chunk in resp.iter_bytes():
                    raw += chunk
            out["clean"] = True
        except httpx2.HTTPError as e:
            out["clean"] = False
            out["error"] = repr(e)
        out["ended"] = time.monotonic()
        out["boundary"] = raw.decode().replace("\r\n", "\n").endswith("\n\n") or raw == b""


def test_drain_under_load_answers_requests_and_ends_streams_at_event_boundaries(workdir, backends, tls_cert):
    with launch_proxy(workdir, backends, tls_cert, ["--drain-timeout", "4s"], name="drain") as p:
        # Two answers that come as long SSE streams (20 s of progress) and a GET event stream.
        answers = [dict() for _ in range(2)]
        get = dict()
        threads = [
            threading.Thread(target=stream_progress, args=(p.url, p.cafile, 400, 0.05, s), daemon=True)
            for s in answers
        ] + [threading.Thread(target=stream_get, args=(p.url, p.cafile, get), daemon=True)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        with Looper(p.url, p.cafile, 3, fresh=True) as loop:
            time.sleep(1.0)
            t0 = time.monotonic()
            os.killpg(p.proc.pid, signal.SIGTERM)
            time.sleep(0.2)
            health = httpx2.get(f"{p.admin_url}/healthz", timeout=5)
            draining = metric(scrape(p.admin_url), "dpuproxy_draining")
            rc = p.proc.wait(timeout=15)
            elapsed = time.monotonic() - t0
        for t in threads:
            t.join(timeout=10)
    assert health.status_code == 503 and health.text == "draining\n", (health.status_code, health.text)
    assert draining == 1
    assert rc == 0, f"exit status {rc}\n{tail(p.stderr_path)}"
    assert elapsed < 6, f"drain took {elapsed:.1f}s with a 4 s timeout"
    # The GET stream ends at once, cleanly; the answers run until the drain's time is nearly
    # up, then end at an event boundary.
    assert get.get("status") == 200 and get.get("clean"), get
    assert get["ended"] - t0 < 1.0, f"the GET stream ended {get['ended'] - t0:.1f}s into the drain"
    for s in answers:
        assert s.get("status") == 200, s
        assert s.get("clean"), f"stream ended without its terminating chunk: {s.get('error')}"
        assert s["boundary"], f"stream cut mid-event: {s['events'][-1:]}"
        assert 40 < len(s["events"]) < 400 and not s["result"], f"{len(s['events'])} events"
    # Every exchange under way when the drain began was answered; later ones find the listener
    # closed (each exchange has a connection of its own).
    lost = [e for e in loop.log if e[0] < t0 - 0.01 and not e[2]]
    assert not lost, f"requests sent before the drain were not answered: {lost[:5]}"
    assert loop.ok_count() > 0
    assert "drained: every connection closed" in p.stderr_path.read_text()

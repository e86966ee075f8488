#!/usr/bin/env python3
"""MCP clients the dpdk-mode tests run INSIDE the namespace (`ip netns exec dpx<pid> ...`).

    ns_client.py sessions   --url U --cafile C --token T --count N
        N handshake-era sessions with the real SDK, one after another: initialize, whoami x2
        (affinity), echo, then close (DELETE). Prints one JSON line:
        {"landed": [...], "errors": [...], "delete_statuses": [...]}; exit 0 if all worked.

    ns_client.py sse-victim --url U --cafile C --token T --steps 50 --delay 0.2
        Raw HTTP (httpx2) so the end of the HTTP stream itself is observed: initialize,
        notifications/initialized, whoami -> prints "BACKEND <name>"; then a tools/call progress
        whose SSE stream is read event by event, printing "PROGRESS <i>" per notification.
        When the stream ends it prints "END {json}" with how it ended:
        {"how": "clean"|"error"|"timeout", "detail": ..., "progress": k, "result": bool}.
        Exit 0 once END is printed (whatever the ending), 2 on failures before streaming.

    ns_client.py spread --url U --cafile C --token T --admin A --sessions S --calls N
        For each of S sessions: initialize, notifications/initialized, then N whoami calls, EVERY
        request on a fresh TCP+TLS connection (new source port, so new flows spread over the
        proxy's lcores). After each request the proxy's admin /metrics (A, plain HTTP inside the
        namespace) is read and the lcore whose dpuproxy_lcore_accepted_total rose is recorded.
        Prints one JSON line {"sessions": [{"backend": b, "init_lcore": l,
        "calls": [{"lcore": l, "backend": b}, ...]}, ...], "errors": [...]}; exit 0 if no errors.

    ns_client.py stall --url U --cafile C --token T --admin A --events N --size S --stall SECS
        Backpressure: open a session, then on a raw TLS socket with a small receive buffer POST a
        tools/call flood (N progress notifications of S bytes) and read NOTHING for SECS seconds,
        sampling the proxy's dpuproxy_lcore_buffered_bytes and the backends' TCP Send-Q (`ss`)
        meanwhile. Then read the whole response. Prints one JSON line {"samples": [[buffered,
        sendq], ...], "events": k, "in_order": bool, "sizes_ok": bool, "result": text,
        "body_bytes": n}; exit 0 once the response was read to its end.

Every request carries Authorization: Bearer <token>. Helpers come from tests/e2e/mcp_helpers.py
and http_raw.py.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import anyio  # noqa: E402
import httpx2  # noqa: E402
from http_raw import accepted_per_lcore, dechunk, lcore_that_accepted  # noqa: E402
from mcp_helpers import (  # noqa: E402
    INITIALIZE_PARAMS,
    LEGACY_VERSION,
    jsonrpc,
    legacy_session,
    mcp_headers,
    metric_family,
    result_text,
    rpc_messages,
    scrape,
    sse_messages,
    tool_body,
    whoami,
)


def out(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------- sessions


async def sessions(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.token}"}
    landed: list[str | None] = []
    errors: list[str] = []
    deletes: list[int] = []
    for i in range(args.count):
        try:
            with anyio.fail_after(args.per_session_timeout):
                async with legacy_session(args.url, args.cafile, headers) as (client, tracker):
                    first = await whoami(client)
                    second = await whoami(client)
                    if first != second:
                        raise AssertionError(f"affinity broken within a session: {first} then {second}")
                    echoed = result_text(await client.call_tool("echo", {"text": f"s{i}"}))
                    if echoed != f"s{i}":
                        raise AssertionError(f"echo returned {echoed!r}")
                    landed.append(first)
                deletes.extend(tracker.delete_statuses)
        except BaseException as e:  # noqa: BLE001 (report everything, including groups/timeouts)
            landed.append(None)
            errors.append(f"session {i}: {describe(e)}")
    out(json.dumps({"landed": landed, "errors": errors, "delete_statuses": deletes}))
    return 0 if not errors else 1


def describe(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(s) for s in e.exceptions)
    return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------- sse-victim


def first_result(resp: httpx2.Response) -> dict:
    ctype = resp.headers.get("content-type", "")
    msgs = [m for m in rpc_messages(resp.text, ctype) if "id" in m]
    if not msgs:
        raise RuntimeError(f"no JSON-RPC response in {resp.status_code} {ctype}: {resp.text[:300]!r}")
    return msgs[0]


def sse_victim(args: argparse.Namespace) -> int:
    auth = {"Authorization": f"Bearer {args.token}"}
    ctx = ssl.create_default_context(cafile=args.cafile)
    timeout = httpx2.Timeout(10.0, read=args.read_timeout)
    with httpx2.Client(verify=ctx, timeout=timeout, headers=auth) as http:
        r = http.post(args.url, headers=mcp_headers(version=None), content=jsonrpc("initialize", INITIALIZE_PARAMS))
        if r.status_code != 200 or not r.headers.get("mcp-session-id"):
            out(f"FAIL initialize -> {r.status_code} {r.text[:300]!r}")
            return 2
        sid = r.headers["mcp-session-id"]
        first_result(r)
        h = mcp_headers(sid, LEGACY_VERSION)
        r = http.post(args.url, headers=h, content=jsonrpc("notifications/initialized", id=None))
        if r.status_code not in (200, 202):
            out(f"FAIL notifications/initialized -> {r.status_code}")
            return 2
        r = http.post(args.url, headers=h, content=tool_body("whoami", id=2))
        msg = first_result(r)
        backend = msg["result"]["content"][0]["text"]
        out(f"BACKEND {backend}")

        body = jsonrpc(
            "tools/call",
            {"name": "progress", "arguments": {"steps": args.steps, "delay": args.delay}, "_meta": {"progressToken": "p"}},
            id=3,
        )
        progress = 0
        got_result = False
        t0 = time.monotonic()
        how, detail = "clean", ""
        try:
            with http.stream("POST", args.url, headers=h, content=body) as resp:
                out(f"STATUS {resp.status_code} {resp.headers.get('content-type', '')}")
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if not data:
                        continue
                    m = json.loads(data)
                    if m.get("method") == "notifications/progress":
                        progress += 1
                        out(f"PROGRESS {progress}")
                    elif m.get("id") == 3:
                        got_result = True
                        out("RESULT")
        except httpx2.ReadTimeout as e:
            how, detail = "timeout", f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 (RemoteProtocolError, ReadError, ...: the stream broke)
            how, detail = "error", f"{type(e).__name__}: {e}"
        end = {
            "how": how,
            "detail": detail,
            "progress": progress,
            "result": got_result,
            "seconds": round(time.monotonic() - t0, 3),
        }
        out(f"END {json.dumps(end)}")
    return 0


def spread(args: argparse.Namespace) -> int:
    auth = {"Authorization": f"Bearer {args.token}"}
    ctx = ssl.create_default_context(cafile=args.cafile)
    report: list[dict] = []
    errors: list[str] = []

    def post(body: bytes, session: str | None) -> tuple[httpx2.Response, str | None]:
        before = accepted_per_lcore(args.admin)
        headers = {**mcp_headers(session), **auth, "Connection": "close"}
        # A new client per request: a new TCP connection and TLS handshake every time.
        with httpx2.Client(verify=ctx, timeout=10.0) as c:
            resp = c.post(args.url, content=body, headers=headers)
        return resp, lcore_that_accepted(before, accepted_per_lcore(args.admin))

    for s in range(args.sessions):
        try:
            resp, init_lcore = post(jsonrpc("initialize", INITIALIZE_PARAMS), None)
            sid = resp.headers.get("mcp-session-id")
            if resp.status_code != 200 or not sid:
                errors.append(f"session {s}: initialize -> {resp.status_code}, session id {sid!r}")
                continue
            backend = first_result(resp)["result"]["serverInfo"]["name"]
            resp, _ = post(jsonrpc("notifications/initialized", id=None), sid)
            if resp.status_code not in (200, 202):
                errors.append(f"session {s}: notifications/initialized -> {resp.status_code}")
                continue
            calls = []
            for i in range(args.calls):
                resp, lcore = post(tool_body("whoami", id=10 + i), sid)
                if resp.status_code != 200:
                    errors.append(f"session {s} call {i}: HTTP {resp.status_code}")
                    continue
                text = first_result(resp)["result"]["content"][0]["text"]
                calls.append({"lcore": lcore, "backend": text})
            report.append({"backend": backend, "init_lcore": init_lcore, "calls": calls})
        except Exception as e:  # noqa: BLE001
            errors.append(f"session {s}: {describe(e)}")
    out(json.dumps({"sessions": report, "errors": errors}))
    return 0 if not errors else 1


def backend_send_queue(ports: list[int]) -> int:
    """Largest Send-Q of an established socket of the backends (bytes the proxy has not taken)."""
    import subprocess

    flt = " or ".join(f"sport = :{p}" for p in ports)
    res = subprocess.run(["ss", "-tnH", "state", "established", f"( {flt} )"], capture_output=True, text=True)
    best = 0
    for line in res.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 2 and cols[1].isdigit():
            best = max(best, int(cols[1]))
    return best


def stall(args: argparse.Namespace) -> int:
    import socket
    import urllib.parse

    auth = {"Authorization": f"Bearer {args.token}"}
    ctx = ssl.create_default_context(cafile=args.cafile)
    with httpx2.Client(verify=ctx, timeout=10.0) as c:
        r = c.post(args.url, content=jsonrpc("initialize", INITIALIZE_PARAMS), headers={**mcp_headers(), **auth})
        sid = r.headers.get("mcp-session-id")
        if r.status_code != 200 or not sid:
            out(f"initialize -> {r.status_code}")
            return 2
        c.post(args.url, content=jsonrpc("notifications/initialized", id=None), headers={**mcp_headers(sid), **auth})
    u = urllib.parse.urlsplit(args.url)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    raw.settimeout(10)
    raw.connect((u.hostname, u.port))
    s = ctx.wrap_socket(raw, server_hostname=u.hostname)
    body = jsonrpc(
        "tools/call",
        {"name": "flood", "arguments": {"events": args.events, "size": args.size}, "_meta": {"progressToken": "f"}},
        id=7,
    )
    head = "".join(f"{k}: {v}\r\n" for k, v in {**mcp_headers(sid), **auth}.items())
    s.sendall(
        f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n{head}Content-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + body
    )
    samples = []
    end = time.monotonic() + args.stall
    while time.monotonic() < end:
        buffered = sum(metric_family(scrape(args.admin), "dpuproxy_lcore_buffered_bytes").values())
        samples.append([buffered, backend_send_queue(args.backend_ports)])
        time.sleep(0.25)
    s.settimeout(args.read_timeout)
    data = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head_end = data.index(b"\r\n\r\n")
    head_text = data[:head_end].decode("latin-1").lower()
    payload = bytes(data[head_end + 4 :])
    if "transfer-encoding: chunked" in head_text:
        # latin-1 keeps every byte as one character: chunk sizes count bytes; framing is checked.
        payload = dechunk(payload.decode("latin-1")).encode("latin-1")
    msgs = sse_messages(payload.decode())
    progress = [m["params"]["message"] for m in msgs if m.get("method") == "notifications/progress"]
    results = [m for m in msgs if m.get("id") == 7]
    report = {
        "samples": samples,
        "status": head_text.split("\r\n", 1)[0],
        "events": len(progress),
        "in_order": all(p.split(".", 1)[0] == str(i + 1) for i, p in enumerate(progress)),
        "sizes_ok": all(len(p) == args.size for p in progress),
        "result": results[0]["result"]["content"][0]["text"] if results else None,
        "body_bytes": len(payload),
    }
    out(json.dumps(report))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("sessions", "sse-victim", "spread", "stall"):
        s = sub.add_parser(name)
        s.add_argument("--url", required=True)
        s.add_argument("--cafile", required=True)
        s.add_argument("--token", required=True)
    sub.choices["sessions"].add_argument("--count", type=int, default=6)
    sub.choices["sessions"].add_argument("--per-session-timeout", type=float, default=30.0)
    sub.choices["sse-victim"].add_argument("--steps", type=int, default=50)
    sub.choices["sse-victim"].add_argument("--delay", type=float, default=0.2)
    sub.choices["sse-victim"].add_argument("--read-timeout", type=float, default=30.0)
    sub.choices["spread"].add_argument("--admin", required=True)
    sub.choices["spread"].add_argument("--sessions", type=int, default=3)
    sub.choices["spread"].add_argument("--calls", type=int, default=12)
    sub.choices["stall"].add_argument("--admin", required=True)
    sub.choices["stall"].add_argument("--events", type=int, default=600)
    sub.choices["stall"].add_argument("--size", type=int, default=8000)
    sub.choices["stall"].add_argument("--stall", type=float, default=3.0)
    sub.choices["stall"].add_argument("--read-timeout", type=float, default=60.0)
    sub.choices["stall"].add_argument("--backend-ports", type=int, nargs="+", default=[9001, 9002, 9003])
    args = p.parse_args()
    if args.cmd == "stall":
        return stall(args)
    if args.cmd == "sessions":
        return anyio.run(sessions, args)
    if args.cmd == "spread":
        return spread(args)
    return sse_victim(args)


if __name__ == "__main__":
    sys.exit(main())

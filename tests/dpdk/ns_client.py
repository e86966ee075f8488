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

Every request carries Authorization: Bearer <token>. Helpers come from tests/e2e/mcp_helpers.py.
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
from mcp_helpers import (  # noqa: E402
    INITIALIZE_PARAMS,
    LEGACY_VERSION,
    jsonrpc,
    legacy_session,
    mcp_headers,
    result_text,
    sse_messages,
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
    if "text/event-stream" in ctype:
        msgs = [m for m in sse_messages(resp.text) if "id" in m]
    else:
        msgs = [resp.json()]
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
        r = http.post(args.url, headers=h, content=jsonrpc("tools/call", {"name": "whoami", "arguments": {}}, id=2))
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("sessions", "sse-victim"):
        s = sub.add_parser(name)
        s.add_argument("--url", required=True)
        s.add_argument("--cafile", required=True)
        s.add_argument("--token", required=True)
    sub.choices["sessions"].add_argument("--count", type=int, default=6)
    sub.choices["sessions"].add_argument("--per-session-timeout", type=float, default=30.0)
    sub.choices["sse-victim"].add_argument("--steps", type=int, default=50)
    sub.choices["sse-victim"].add_argument("--delay", type=float, default=0.2)
    sub.choices["sse-victim"].add_argument("--read-timeout", type=float, default=30.0)
    args = p.parse_args()
    if args.cmd == "sessions":
        return anyio.run(sessions, args)
    return sse_victim(args)


if __name__ == "__main__":
    sys.exit(main())

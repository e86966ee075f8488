#!/usr/bin/env python3
"""dpuproxy demo client, built on the official MCP Python SDK (mcp==2.3.0).

    python scripts/mcp_client_demo.py --url https://127.0.0.1:8443/mcp --cafile cert.pem [--token T]

Walks through what the proxy must get right, printing one ``[demo] ...`` line per step:

 1. opens a handshake-era session (initialize -> Mcp-Session-Id), prints its id and server;
 2. lists tools; calls whoami 3 times (all answers must name the same backend: affinity);
 3. calls echo; calls progress(steps=N) printing each progress notification as it arrives;
 4. opens 2 more sessions and prints the backend each landed on (round-robin);
 5. ends the first session (the SDK sends DELETE when the client closes), then a raw POST
    with the old Mcp-Session-Id must get HTTP 404;
 6. one tools/call from a 2026-07-28 (stateless, no session) client.

Exit status 0 when every check passed, 1 with a ``[demo] FAIL ...`` line otherwise.
``--url http://...`` (no --cafile) talks to a backend directly, without TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from contextlib import AsyncExitStack
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

LEGACY_VERSION = "2025-11-25"
MODERN_MODE = "2026-07-28"


class DemoFailure(Exception):
    pass


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def make_verify(url: str, cafile: str | None) -> ssl.SSLContext | bool:
    if not url.startswith("https://"):
        return True  # unused for plain http
    if not cafile:
        raise DemoFailure("an https URL needs --cafile (the proxy's self-signed cert or its CA)")
    # Full verification (chain + hostname/IP SAN) against the given file only.
    return ssl.create_default_context(cafile=cafile)


class Tracker:
    """httpx2 response hook: remembers the Mcp-Session-Id the server handed out and DELETE statuses."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.delete_statuses: list[int] = []

    async def on_response(self, response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid and self.session_id is None:
            self.session_id = sid
        if response.request.method == "DELETE":
            self.delete_statuses.append(response.status_code)


def make_http_client(verify: ssl.SSLContext | bool, token: str | None, tracker: Tracker | None) -> httpx2.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    hooks = {"response": [tracker.on_response]} if tracker else {}
    # Same timeouts as the SDK's own default client (30 s, 300 s read for SSE).
    return httpx2.AsyncClient(
        verify=verify,
        headers=headers,
        timeout=httpx2.Timeout(30.0, read=300.0),
        event_hooks=hooks,
    )


def text_of(result: Any) -> str:
    if getattr(result, "is_error", False):
        raise DemoFailure(f"tool returned an error: {result}")
    parts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    if not parts:
        raise DemoFailure(f"tool result has no text content: {result}")
    return "".join(parts)


async def open_session(
    stack: AsyncExitStack, url: str, verify: ssl.SSLContext | bool, token: str | None, timeout: float
) -> tuple[Client, Tracker]:
    """Handshake-era (stateful) session. `stack` owns it; closing it sends DELETE."""
    tracker = Tracker()
    http = await stack.enter_async_context(make_http_client(verify, token, tracker))
    client = await stack.enter_async_context(
        Client(
            streamable_http_client(url, http_client=http, terminate_on_close=True),
            mode="legacy",
            read_timeout_seconds=timeout,
        )
    )
    if not tracker.session_id:
        raise DemoFailure("initialize succeeded but the response carried no Mcp-Session-Id header")
    return client, tracker


async def whoami(client: Client) -> str:
    return text_of(await client.call_tool("whoami", {}))


async def run(args: argparse.Namespace) -> None:
    url = args.url
    verify = make_verify(url, args.cafile)
    t = args.timeout

    # anyio cancel scopes must unwind LIFO, so session 1's stack is the outermost one and
    # sessions 2 and 3 (nested inside it) are closed before session 1 is terminated.
    async with AsyncExitStack() as first_stack:
        # -- session 1 ------------------------------------------------------------------
        c1, tr1 = await open_session(first_stack, url, verify, args.token, t)
        name = c1.server_info.name if c1.server_info else "?"
        backend1 = await whoami(c1)
        say(
            f"initialize -> session {tr1.session_id[:8]}... (full {tr1.session_id}) "
            f"server '{name}' protocol {c1.protocol_version} on backend {backend1}"
        )

        tools = await c1.list_tools()
        tool_names = sorted(tool.name for tool in tools.tools)
        say(f"tools/list -> {tool_names}")
        for needed in ("echo", "progress", "whoami"):
            if needed not in tool_names:
                raise DemoFailure(f"tool {needed!r} missing from tools/list")

        answers = [await whoami(c1) for _ in range(3)]
        for i, who in enumerate(answers, 1):
            say(f"whoami #{i} -> {who}")
        if len(set(answers + [backend1])) != 1:
            raise DemoFailure(f"session affinity broken: one session was served by {answers + [backend1]}")
        say(f"affinity OK: every call of session {tr1.session_id[:8]} went to {backend1}")

        echoed = text_of(await c1.call_tool("echo", {"text": "hello through dpuproxy"}))
        say(f"echo -> {echoed!r}")
        if echoed != "hello through dpuproxy":
            raise DemoFailure(f"echo returned {echoed!r}")

        seen: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total, message))
            say(f"  progress {progress:g}/{total:g} {message or ''}" if total else f"  progress {progress:g}")

        steps = args.steps
        say(f"progress(steps={steps}) ...")
        done = text_of(await c1.call_tool("progress", {"steps": steps, "delay": 0.2}, progress_callback=on_progress))
        say(f"progress -> {done!r} ({len(seen)} notifications)")
        if len(seen) != steps:
            raise DemoFailure(f"expected {steps} progress notifications, got {len(seen)}")
        if done != f"done after {steps} steps from {backend1}":
            raise DemoFailure(f"unexpected progress result {done!r}")

        # -- sessions 2 and 3 ---------------------------------------------------------------
        landed = [backend1]
        async with AsyncExitStack() as more:
            for _ in (2, 3):
                c, tr = await open_session(more, url, verify, args.token, t)
                who = await whoami(c)
                landed.append(who)
                say(f"initialize -> session {tr.session_id[:8]}... on backend {who}")
        say(f"sessions landed on {landed} ({len(set(landed))} distinct backends)")

        # -- terminate session 1 (SDK: DELETE on close) -----------------------------------
        old_sid = tr1.session_id
        await first_stack.aclose()
        if not tr1.delete_statuses:
            raise DemoFailure("closing the client did not send DELETE")
        say(f"DELETE session {old_sid[:8]}... -> HTTP {tr1.delete_statuses[-1]}")
        if tr1.delete_statuses[-1] not in (200, 204):
            raise DemoFailure(f"DELETE answered {tr1.delete_statuses[-1]}")

        async with make_http_client(verify, args.token, None) as raw:
            resp = await raw.post(
                url,
                headers={
                    "mcp-session-id": old_sid,
                    "mcp-protocol-version": LEGACY_VERSION,
                    "accept": "application/json, text/event-stream",
                    "content-type": "application/json",
                },
                content=json.dumps(
                    {"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
                ),
            )
        say(f"POST with terminated session {old_sid[:8]}... -> HTTP {resp.status_code}")
        if resp.status_code != 404:
            raise DemoFailure(f"reusing a terminated session id gave HTTP {resp.status_code}, expected 404")

        # -- 2026-07-28 stateless client ------------------------------------------------
        tr_m = Tracker()
        async with make_http_client(verify, args.token, tr_m) as http:
            async with Client(
                streamable_http_client(url, http_client=http), mode=MODERN_MODE, read_timeout_seconds=t
            ) as modern:
                who = await whoami(modern)
                say(f"{MODERN_MODE} stateless client: protocol {modern.protocol_version}, whoami -> {who}")
                echoed = text_of(await modern.call_tool("echo", {"text": "stateless"}))
                if echoed != "stateless":
                    raise DemoFailure(f"stateless echo returned {echoed!r}")
        if tr_m.session_id is not None:
            raise DemoFailure(f"the stateless exchange was given an Mcp-Session-Id ({tr_m.session_id})")
        say("all checks passed")


def describe(e: BaseException) -> str:
    """Flatten anyio/asyncio exception groups down to the errors that actually happened."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(sub) for sub in e.exceptions)
    if isinstance(e, DemoFailure):
        return str(e)
    return f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="https://127.0.0.1:8443/mcp")
    p.add_argument("--cafile", help="PEM cert/CA to verify the server against (required for https)")
    p.add_argument("--token", help="send Authorization: Bearer TOKEN on every request")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--timeout", type=float, default=20.0, help="per-request read timeout, seconds")
    p.add_argument("--overall-timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    try:
        asyncio.run(asyncio.wait_for(run(args), args.overall_timeout))
    except DemoFailure as e:
        say(f"FAIL {e}")
        return 1
    except BaseExceptionGroup as eg:
        say(f"FAIL {describe(eg)}")
        return 1
    except (asyncio.TimeoutError, TimeoutError):
        say(f"FAIL timed out after {args.overall_timeout:g}s")
        return 1
    except Exception as e:  # connection refused, TLS errors, MCP errors, ...
        say(f"FAIL {describe(e)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

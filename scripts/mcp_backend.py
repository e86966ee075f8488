#!/usr/bin/env python3
"""Test MCP backend for dpuproxy: the official MCP Python SDK (mcp==2.3.0), Streamable HTTP.

    python scripts/mcp_backend.py --host 127.0.0.1 --port 9001 --name b1

Serves plain HTTP (no TLS) at ``/mcp``. ONE app serves both protocol eras, no flag needed:

* handshake-era clients (``initialize`` + ``Mcp-Session-Id``, protocol 2025-11-25 and older):
  stateful; the session id is a 32-char lowercase hex uuid4 minted on ``initialize``,
  DELETE ends the session, and an unknown/terminated id answers HTTP 404.
* 2026-07-28 clients: every POST whose ``MCP-Protocol-Version`` header is NOT a handshake-era
  version is routed by the SDK's session manager to its stateless per-request handler
  (no session id is minted or required).

Tools: ``whoami()`` -> backend name; ``echo(text)`` -> text;
``progress(steps=3, delay=0.2)`` -> emits one ``notifications/progress`` per step
(the client must pass a progress callback, i.e. a ``progressToken``), then returns
``"done after N steps from <name>"``;
``flood(events=100, size=1024)`` -> ``events`` progress notifications at once (a progressToken is
needed), message i being ``str(i)`` padded with ``.`` to ``size`` bytes, for backpressure tests;
``numbered(events=100, interval=0.05)`` -> ``events`` progress notifications, one per interval,
message i being ``"<i> <hash>"`` with hash the running SHA-256 (16 hex digits) over ``"1;2;...;i;"``,
then returns ``"<events> <hash>"`` (a progressToken is needed; for the live mode switch test);
``headers()`` -> JSON object text of the HTTP request headers of the POST that carried this
tools/call, as this backend received them: lowercased names, a header sent more than once
has its values joined with ``", "`` in arrival order (so a duplicate stays visible).

Once listening it prints ``READY <name> <port>`` to stdout (flushed). ``--port 0`` picks a
free port (the READY line tells which). Logging is at WARNING level.

Options beyond the brief:
  --json-response      answer POSTs with application/json instead of text/event-stream
                       (the SDK default, used here, is SSE for every request POST).
  --legacy-stateless   the SDK's handshake-era stateless mode (no Mcp-Session-Id at all).
  --allow-any-host     turn off the SDK's DNS-rebinding Host/Origin check. By default a
                       backend bound to 127.0.0.1 only accepts Host 127.0.0.1:*, localhost:*
                       or [::1]:* (else HTTP 421) and Origin http://127.0.0.1:* etc. (else 403).
  --idle-timeout SECS  stateful session idle timeout (SDK default 1800 s).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import socket
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings


def build_server(name: str) -> MCPServer:
    mcp = MCPServer(name=name, version="1.0.0", log_level="WARNING")

    @mcp.tool(description="Return the name of the backend that served this request.")
    def whoami() -> str:
        return name

    @mcp.tool(description="Echo the given text back.")
    def echo(text: str) -> str:
        return text

    @mcp.tool(description="Report progress once per step (as SSE notifications), then finish.")
    async def progress(ctx: Context, steps: int = 3, delay: float = 0.2) -> str:
        steps = max(0, min(int(steps), 1000))
        delay = max(0.0, min(float(delay), 10.0))
        for i in range(1, steps + 1):
            await asyncio.sleep(delay)
            await ctx.report_progress(i, steps, f"step {i}/{steps} on {name}")
        return f"done after {steps} steps from {name}"

    @mcp.tool(
        description="Send `events` numbered progress notifications, one every `interval` seconds; message i is "
        "`<i> <hash>`, hash the running SHA-256 (16 hex digits) over `1;2;...;i;`. Returns `<events> <hash>`."
    )
    async def numbered(ctx: Context, events: int = 100, interval: float = 0.05) -> str:
        # For the live mode switch test: a client that lost, doubled or reordered an event computes
        # another hash than the one the backend sends and returns.
        events = max(0, min(int(events), 100_000))
        interval = max(0.0, min(float(interval), 10.0))
        h = hashlib.sha256()
        for i in range(1, events + 1):
            await asyncio.sleep(interval)
            h.update(f"{i};".encode())
            await ctx.report_progress(i, events, f"{i} {h.hexdigest()[:16]}")
        return f"{events} {h.hexdigest()[:16]}"

    @mcp.tool(description="Send `events` progress notifications of `size` bytes each at once, then finish.")
    async def flood(ctx: Context, events: int = 100, size: int = 1024) -> str:
        # For backpressure tests: as fast as the transport takes them. Message i is the decimal
        # step number padded with '.' to `size` bytes, so a client can check order and length.
        events = max(0, min(int(events), 100_000))
        size = max(8, min(int(size), 65_536))
        for i in range(1, events + 1):
            await ctx.report_progress(i, events, str(i).ljust(size, "."))
        return f"flooded {events} x {size} from {name}"

    @mcp.tool(description="Return the HTTP request headers this backend received for this call (JSON).")
    def headers(ctx: Context) -> str:
        # The streamable-HTTP transport (stateful and 2026-07-28 stateless paths alike) attaches
        # the Starlette Request of the POST carrying this message as request_context.request.
        # No request there is an error, not an empty header set (a test would read {} as "nothing
        # was forwarded").
        request = ctx.request_context.request
        if request is None:
            raise RuntimeError("no HTTP request attached to this tools/call")
        out: dict[str, str] = {}
        for k, v in request.headers.raw:
            key = k.decode("latin-1").lower()
            val = v.decode("latin-1")
            out[key] = f"{out[key]}, {val}" if key in out else val
        return json.dumps(out, sort_keys=True)

    return mcp


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--name", default="b1")
    p.add_argument("--path", default="/mcp")
    p.add_argument("--json-response", action="store_true")
    p.add_argument("--legacy-stateless", action="store_true")
    p.add_argument("--allow-any-host", action="store_true")
    p.add_argument("--idle-timeout", type=float, default=None)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    mcp = build_server(args.name)
    kwargs = {}
    if args.idle_timeout is not None:
        kwargs["session_idle_timeout"] = args.idle_timeout
    if args.allow_any_host:
        kwargs["transport_security"] = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = mcp.streamable_http_app(
        streamable_http_path=args.path,
        json_response=args.json_response,
        stateless_http=args.legacy_stateless,
        host=args.host,
        **kwargs,
    )

    # Bind ourselves so --port 0 works and READY names the real port.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    sock.setblocking(False)
    port = sock.getsockname()[1]

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.02)
        print(f"READY {args.name} {port}", flush=True)

    task = asyncio.create_task(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        task.cancel()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

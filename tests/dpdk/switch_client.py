#!/usr/bin/env python3
"""Clients for the live mode switch test, run INSIDE the namespace.

    switch_client.py --url https://IP:PORT/mcp --cafile C --token T --streams S --callers K
                     --events E --interval SECS [--ready-file F] [--stop-file F]

Every client holds ONE TLS connection for its whole life (raw asyncio + ssl + HTTP/1.1, so the
connection is ours to watch): it never reconnects, and any error, TLS alert or early close is
reported, never retried.

- S stream clients: initialize, notifications/initialized, then one tools/call `numbered`
  (E events, one every SECS) whose SSE response is read event by event. Each event's message is
  `<i> <hash>`; the client checks i == previous + 1 and recomputes the running hash itself, and
  compares its hash with the backend's final result.
- K caller clients: initialize, notifications/initialized, then tools/call `echo` with a fresh
  text in a loop on the same connection (`--pause` seconds apart) until every stream has
  ended (or the stop file appears), checking each answer.

Once every client has initialized and every stream has its first event, the ready file is
written (the test switches from then on). At the end one JSON line:
{"streams": [{"events": n, "ok": bool, "error": str, "port": p}, ...],
 "callers": [{"calls": n, "ok": bool, "error": str, "port": p}, ...]}
Exit 0 when every client is ok.

    switch_client.py --sdk --url U --cafile C --token T --events E --interval SECS --ready-file F

One session through the real MCP SDK client instead (see `sdk_session`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

VERSION = "2025-06-18"


class Conn:
    """One TLS connection speaking HTTP/1.1 keep-alive."""

    def __init__(self, host: str, port: int, path: str, token: str, ctx: ssl.SSLContext):
        self.host, self.port, self.path, self.token, self.ctx = host, port, path, token, ctx
        self.session: str | None = None

    async def open(self) -> int:
        self.r, self.w = await asyncio.open_connection(self.host, self.port, ssl=self.ctx)
        return self.w.get_extra_info("sockname")[1]

    def local_port(self) -> int:
        return self.w.get_extra_info("sockname")[1]

    async def post(self, body: dict) -> tuple[int, dict[str, str]]:
        data = json.dumps(body).encode()
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Authorization: Bearer {self.token}",
            "Accept: application/json, text/event-stream",
            "Content-Type: application/json",
            f"MCP-Protocol-Version: {VERSION}",
            f"Content-Length: {len(data)}",
        ]
        if self.session:
            head.append(f"Mcp-Session-Id: {self.session}")
        self.w.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await self.w.drain()
        status_line = (await self.r.readline()).decode()
        if not status_line:
            raise ConnectionError("the connection closed before a response")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = (await self.r.readline()).decode().rstrip("\r\n")
            if not line:
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    async def body_chunks(self, headers: dict[str, str]):
        """The response body as it arrives (chunked or Content-Length)."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.r.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await self.r.readline()
                    return
                chunk = await self.r.readexactly(size)
                await self.r.readexactly(2)
                yield chunk
        else:
            n = int(headers.get("content-length", "0"))
            if n:
                yield await self.r.readexactly(n)

    async def messages(self, headers: dict[str, str]):
        """JSON-RPC messages of a response (SSE `data:` lines or a JSON body), as they arrive."""
        sse = headers.get("content-type", "").startswith("text/event-stream")
        buf = b""
        async for chunk in self.body_chunks(headers):
            if not sse:
                buf += chunk
                continue
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.rstrip(b"\r")
                if line.startswith(b"data:") and line[5:].strip():
                    yield json.loads(line[5:])
        if not sse and buf:
            yield json.loads(buf)

    async def call(self, body: dict) -> tuple[int, dict[str, str], list[dict]]:
        status, headers = await self.post(body)
        msgs = [m async for m in self.messages(headers)]
        return status, headers, msgs

    async def start_session(self) -> None:
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "switch", "version": "0"}},
        }
        status, headers, msgs = await self.call(init)
        if status != 200 or "mcp-session-id" not in headers or not msgs or "result" not in msgs[-1]:
            raise RuntimeError(f"initialize -> {status} {headers} {msgs}")
        self.session = headers["mcp-session-id"]
        status, _, _ = await self.call({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if status not in (200, 202):
            raise RuntimeError(f"notifications/initialized -> {status}")


def text_of(msg: dict) -> str:
    return msg["result"]["content"][0]["text"]


async def stream_client(args, ctx, i: int, started: asyncio.Event, done: list) -> dict:
    u = urlparse(args.url)
    c = Conn(u.hostname, u.port, u.path, args.token, ctx)
    rep = {"events": 0, "ok": False, "error": "", "port": None}
    try:
        rep["port"] = await c.open()
        await c.start_session()
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "numbered",
                "arguments": {"events": args.events, "interval": args.interval},
                "_meta": {"progressToken": f"s{i}"},
            },
        }
        status, headers = await c.post(body)
        if status != 200:
            raise RuntimeError(f"tools/call numbered -> {status}")
        h = hashlib.sha256()
        final = None
        async for m in c.messages(headers):
            if m.get("method") == "notifications/progress":
                n_str, backend_hash = m["params"]["message"].split()
                n = int(n_str)
                if n != rep["events"] + 1:
                    raise RuntimeError(f"event {n} after {rep['events']} (lost, doubled or reordered)")
                h.update(f"{n};".encode())
                if h.hexdigest()[:16] != backend_hash:
                    raise RuntimeError(f"hash differs at event {n}")
                rep["events"] = n
                if n == 1:
                    started.set()
            elif m.get("id") == 7:
                final = text_of(m)
        if final != f"{args.events} {h.hexdigest()[:16]}":
            raise RuntimeError(f"final result {final!r}, expected {args.events} {h.hexdigest()[:16]}")
        rep["ok"] = True
    except Exception as e:  # noqa: BLE001 (reported, never retried)
        rep["error"] = f"{type(e).__name__}: {e}"
        started.set()
    finally:
        done.append(i)
    return rep


async def caller_client(args, ctx, j: int, ready: asyncio.Event, stop: asyncio.Event) -> dict:
    u = urlparse(args.url)
    c = Conn(u.hostname, u.port, u.path, args.token, ctx)
    rep = {"calls": 0, "ok": False, "error": "", "port": None}
    try:
        rep["port"] = await c.open()
        await c.start_session()
        ready.set()
        k = 0
        while not stop.is_set():
            k += 1
            text = f"caller {j} call {k}"
            body = {"jsonrpc": "2.0", "id": 100 + k, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": text}}}  # fmt: skip
            status, _, msgs = await c.call(body)
            got = [text_of(m) for m in msgs if m.get("id") == 100 + k]
            if status != 200 or got != [text]:
                raise RuntimeError(f"call {k}: {status} {msgs}")
            if c.local_port() != rep["port"]:
                raise RuntimeError("the local port changed")
            rep["calls"] = k
            if args.pause:
                try:
                    await asyncio.wait_for(stop.wait(), args.pause)
                except asyncio.TimeoutError:
                    pass
        rep["ok"] = True
    except Exception as e:  # noqa: BLE001
        rep["error"] = f"{type(e).__name__}: {e}"
        ready.set()
    return rep


async def main_async(args) -> int:
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.check_hostname = False
    started = [asyncio.Event() for _ in range(args.streams)]
    ready = [asyncio.Event() for _ in range(args.callers)]
    stop = asyncio.Event()
    done: list[int] = []
    streams = [asyncio.create_task(stream_client(args, ctx, i, started[i], done)) for i in range(args.streams)]
    callers = [asyncio.create_task(caller_client(args, ctx, j, ready[j], stop)) for j in range(args.callers)]
    for e in started + ready:
        await e.wait()
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")
    print("READY", flush=True)
    # Without streams, the callers run until the stop file appears.
    while (len(done) < args.streams or args.streams == 0) and not (
        args.stop_file and Path(args.stop_file).exists()
    ):
        await asyncio.sleep(0.05)
    stop.set()
    out = {"streams": await asyncio.gather(*streams), "callers": await asyncio.gather(*callers)}
    print(json.dumps(out), flush=True)
    ok = all(s["ok"] for s in out["streams"]) and all(c["ok"] for c in out["callers"])
    return 0 if ok else 1


async def sdk_session(args) -> int:
    """--sdk: the real MCP SDK client, one handshake-era session: whoami, then `numbered` with a
    progress callback (ready file written at the first notification), then whoami again. One
    JSON line: {"progress": [i, ...], "hash_ok": bool, "result": text, "backends": [b1, b2]}."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
    from mcp_helpers import legacy_session, result_text

    got: list[int] = []
    h = hashlib.sha256()
    hash_ok = True

    async def on_progress(p: float, total: float | None, msg: str | None) -> None:
        nonlocal hash_ok
        n, backend_hash = (msg or "").split()
        got.append(int(n))
        h.update(f"{int(n)};".encode())
        hash_ok = hash_ok and h.hexdigest()[:16] == backend_hash
        if len(got) == 1 and args.ready_file:
            Path(args.ready_file).write_text("ready\n")

    headers = {"Authorization": f"Bearer {args.token}"}
    async with legacy_session(args.url, args.cafile, headers) as (client, _tracker):
        first = result_text(await client.call_tool("whoami", {}))
        result = result_text(
            await client.call_tool(
                "numbered", {"events": args.events, "interval": args.interval}, progress_callback=on_progress
            )
        )
        last = result_text(await client.call_tool("whoami", {}))
    ok = hash_ok and got == list(range(1, args.events + 1)) and result == f"{args.events} {h.hexdigest()[:16]}"
    print(json.dumps({"progress": got, "hash_ok": hash_ok, "result": result, "backends": [first, last]}), flush=True)
    return 0 if ok and first == last else 1


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--token", default="none")
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--callers", type=int, default=50)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--pause", type=float, default=0.0, help="callers wait this long between calls")
    p.add_argument("--ready-file")
    p.add_argument("--stop-file")
    p.add_argument("--sdk", action="store_true", help="one session through the real MCP SDK client")
    args = p.parse_args()
    if args.streams == 0 and not args.stop_file and not args.sdk:
        p.error("--streams 0 needs --stop-file (the callers run until it appears)")
    t0 = time.monotonic()
    if args.sdk:
        import anyio

        rc = anyio.run(sdk_session, args)
    else:
        rc = asyncio.run(main_async(args))
    print(f"seconds {time.monotonic() - t0:.1f}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Tiny logging TCP relay: shows exactly which bytes an MCP client and backend exchange.

    python scripts/tcp_relay.py --listen 127.0.0.1:9100 --target 127.0.0.1:9001 [--log trace.txt]

Every chunk is written as ``[conn N] C->S`` / ``S->C`` followed by the raw bytes
(escaped like a Python bytes literal, one line per CRLF/LF-terminated line).
Only for plain-HTTP debugging on loopback; it is not used by the tests themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time

_ids = itertools.count(1)


def _fmt(data: bytes) -> str:
    out = []
    for line in data.splitlines(keepends=True):
        out.append("    " + repr(line)[2:-1])
    return "\n".join(out)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: str, log, t0: float) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            log(f"{tag} +{time.monotonic() - t0:.3f}s {len(data)}B\n{_fmt(data)}")
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        log(f"{tag} EOF")
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--log", default="-")
    a = p.parse_args()
    lh, lp = a.listen.rsplit(":", 1)
    th, tp = a.target.rsplit(":", 1)
    out = sys.stdout if a.log == "-" else open(a.log, "w", buffering=1)
    t0 = time.monotonic()

    def log(msg: str) -> None:
        out.write(msg + "\n")
        out.flush()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        n = next(_ids)
        log(f"[conn {n}] open +{time.monotonic() - t0:.3f}s")
        sr, sw = await asyncio.open_connection(th, int(tp))
        await asyncio.gather(
            _pipe(cr, sw, f"[conn {n}] C->S", log, t0),
            _pipe(sr, cw, f"[conn {n}] S->C", log, t0),
        )
        cw.close()
        sw.close()
        log(f"[conn {n}] closed +{time.monotonic() - t0:.3f}s")

    server = await asyncio.start_server(handle, lh, int(lp))
    print(f"READY relay {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass

#!/usr/bin/env python3
"""Reference model of dpuproxy's externally visible behaviour, in Python, for checking the e2e tests.

NOT the product: no kTLS, no workers, no performance. It accepts the same command line,

    fake_dpuproxy.py run --mode kernel --listen 127.0.0.1:P --backend 127.0.0.1:B1 ... \
        --tls-cert cert.pem --tls-key key.pem --workers 2 --admin 127.0.0.1:A

and behaves as the tests expect the real proxy to: TLS termination, round-robin of requests
without Mcp-Session-Id, session affinity learned from the backend's Mcp-Session-Id on
initialize, local 404 for unknown ids, local 400 for ids outside 0x21-0x7E, forgetting a
session on a successful DELETE (or a backend 404), streaming SSE through unbuffered, and the
admin endpoints /metrics and /sessions. Run the suite against it with

    DPUPROXY_BIN=tests/e2e/fake_dpuproxy.py .venv/bin/python -m pytest tests/e2e
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
import time
from collections import defaultdict

import anyio
import httpx2
import uvicorn

SESSION_ID_OK = re.compile(r"[\x21-\x7e]+")
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
    "content-length",
}  # fmt: skip


def ktls_available() -> int:
    ls = socket.socket()
    try:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        c = socket.create_connection(ls.getsockname())
        s, _ = ls.accept()
        try:
            c.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_ULP", 31), b"tls")
            return 1
        except OSError:
            return 0
        finally:
            c.close()
            s.close()
    finally:
        ls.close()


class State:
    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.rr = 0
        self.sessions: dict[str, tuple[str, float]] = {}  # id -> (backend, last used)
        self.requests = {b: 0 for b in backends}
        self.sse_streams = 0
        self.tls_records = 0
        self.errors: dict[str, int] = defaultdict(int)
        self.ktls = ktls_available()

    def pick(self) -> str:
        b = self.backends[self.rr % len(self.backends)]
        self.rr += 1
        return b

    def metrics(self) -> str:
        out = ["# TYPE dpuproxy_requests_total counter"]
        out += [f'dpuproxy_requests_total{{backend="{b}"}} {n}' for b, n in self.requests.items()]
        out += ["# TYPE dpuproxy_sessions_active gauge", f"dpuproxy_sessions_active {len(self.sessions)}"]
        out += ["# TYPE dpuproxy_sse_streams_total counter", f"dpuproxy_sse_streams_total {self.sse_streams}"]
        out += ["# TYPE dpuproxy_tls_record_path_total counter"]
        out += [f'dpuproxy_tls_record_path_total{{path="openssl"}} {self.tls_records}']
        out += ['dpuproxy_tls_record_path_total{path="ktls-tx"} 0', 'dpuproxy_tls_record_path_total{path="ktls-rx"} 0']
        out += ["# TYPE dpuproxy_ktls_available gauge", f"dpuproxy_ktls_available {self.ktls}"]
        out += ["# TYPE dpuproxy_errors_total counter"]
        out += [f'dpuproxy_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.errors.items())]
        return "\n".join(out) + "\n"

    def sessions_doc(self) -> dict:
        now = time.monotonic()
        items = [
            {"id_prefix": sid[:8], "backend": b, "idle_ms": int((now - used) * 1000)}
            for sid, (b, used) in self.sessions.items()
        ]
        return {"count": len(items), "sessions": items}


async def simple(send, status: int, body: bytes, ctype: str = "application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def jsonrpc_error(message: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}).encode()


def make_proxy_app(state: State, upstream: httpx2.AsyncClient):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        state.tls_records += 1
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        sid = next((v for k, v in headers if k == "mcp-session-id"), None)
        if sid is not None:
            if not SESSION_ID_OK.fullmatch(sid):
                state.errors["bad_session_id"] += 1
                return await simple(send, 400, jsonrpc_error("Bad Request: invalid Mcp-Session-Id"))
            entry = state.sessions.get(sid)
            if entry is None:
                state.errors["unknown_session"] += 1
                return await simple(send, 404, jsonrpc_error("Session not found"))
            backend = entry[0]
            state.sessions[sid] = (backend, time.monotonic())
        else:
            backend = state.pick()

        body = b""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break

        fwd = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
        url = f"http://{backend}{scope['raw_path'].decode('latin-1')}"
        state.requests[backend] += 1
        req = upstream.build_request(scope["method"], url, headers=fwd, content=body)
        try:
            resp = await upstream.send(req, stream=True)
        except httpx2.HTTPError:
            state.errors["backend_connect"] += 1
            return await simple(send, 502, jsonrpc_error("Bad Gateway"))

        new_sid = resp.headers.get("mcp-session-id")
        if sid is None and new_sid and resp.status_code == 200:
            state.sessions[new_sid] = (backend, time.monotonic())
        if sid is not None and (
            (scope["method"] == "DELETE" and resp.status_code in (200, 204)) or resp.status_code == 404
        ):
            state.sessions.pop(sid, None)
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            state.sse_streams += 1

        out_headers = [(k.encode(), v.encode()) for k, v in resp.headers.multi_items() if k.lower() not in HOP_BY_HOP]
        if "content-length" in resp.headers:
            out_headers.append((b"content-length", resp.headers["content-length"].encode()))
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                await send({"type": "http.response.start", "status": resp.status_code, "headers": out_headers})
                async for chunk in resp.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                tg.cancel_scope.cancel()
        finally:
            await resp.aclose()

    return app


def make_admin_app(state: State):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    msg = await receive()
                    if msg["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif msg["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        if scope["path"] == "/metrics":
            return await simple(send, 200, state.metrics().encode(), "text/plain; version=0.0.4")
        if scope["path"] == "/sessions":
            return await simple(send, 200, json.dumps(state.sessions_doc()).encode())
        return await simple(send, 404, b"not found\n", "text/plain")

    return app


def hostport(s: str) -> tuple[str, int]:
    h, p = s.rsplit(":", 1)
    return h, int(p)


async def amain(a: argparse.Namespace) -> None:
    state = State(a.backend)
    upstream = httpx2.AsyncClient(timeout=httpx2.Timeout(10.0, read=None), limits=httpx2.Limits(max_connections=256))
    lh, lp = hostport(a.listen)
    ah, ap = hostport(a.admin)
    quiet = dict(log_level="warning", access_log=False, timeout_graceful_shutdown=1)
    proxy = uvicorn.Server(
        uvicorn.Config(
            make_proxy_app(state, upstream), host=lh, port=lp, ssl_certfile=a.tls_cert, ssl_keyfile=a.tls_key, **quiet
        )
    )
    admin = uvicorn.Server(uvicorn.Config(make_admin_app(state), host=ah, port=ap, **quiet))
    admin.install_signal_handlers = lambda: None  # the proxy server owns SIGTERM/SIGINT
    task = asyncio.create_task(admin.serve())
    try:
        await proxy.serve()
    finally:
        admin.should_exit = True
        await task
        await upstream.aclose()


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--mode", default="kernel")
    r.add_argument("--listen", required=True)
    r.add_argument("--backend", action="append", required=True)
    r.add_argument("--tls-cert", required=True)
    r.add_argument("--tls-key", required=True)
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--admin", required=True)
    a = p.parse_args()
    asyncio.run(amain(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())

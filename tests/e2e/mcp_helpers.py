"""Client-side helpers for the dpuproxy e2e tests: SDK clients over TLS, raw HTTP, admin scraping."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

LEGACY_VERSION = "2025-11-25"  # what the SDK's handshake-era client negotiates
MODERN_VERSION = "2026-07-28"
READ_TIMEOUT = 15.0  # per MCP request
BACKEND_NAMES = ("b1", "b2", "b3")  # the demo backends every suite starts (scripts/mcp_backend.py --name)

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]], timeout: float = 45.0) -> T:
    """Run an async test body on a fresh event loop with a hard deadline."""

    async def main() -> T:
        with anyio.fail_after(timeout):
            return await fn()

    return anyio.run(main)


def tls_context(cafile: str) -> ssl.SSLContext:
    # Full verification: chain against the self-signed cert, hostname/IP against its SAN.
    return ssl.create_default_context(cafile=cafile)


class Tracker:
    """httpx2 response hook recording the Mcp-Session-Id handed out and DELETE statuses."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.session_ids_seen: set[str] = set()
        self.delete_statuses: list[int] = []
        self.statuses: list[tuple[str, int, str]] = []

    async def on_response(self, response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid:
            self.session_ids_seen.add(sid)
            if self.session_id is None:
                self.session_id = sid
        self.statuses.append((response.request.method, response.status_code, response.headers.get("content-type", "")))
        if response.request.method == "DELETE":
            self.delete_statuses.append(response.status_code)


def async_http(
    cafile: str | None, tracker: Tracker | None = None, headers: dict[str, str] | None = None
) -> httpx2.AsyncClient:
    verify: ssl.SSLContext | bool = tls_context(cafile) if cafile else True
    return httpx2.AsyncClient(
        verify=verify,
        headers=headers,
        timeout=httpx2.Timeout(10.0, read=READ_TIMEOUT),
        event_hooks={"response": [tracker.on_response]} if tracker else {},
    )


@asynccontextmanager
async def legacy_session(
    url: str, cafile: str | None, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[Client, Tracker]]:
    """A handshake-era (stateful) SDK session; leaving the block makes the SDK send DELETE.
    `headers` are sent on every request (e.g. Authorization)."""
    tracker = Tracker()
    async with async_http(cafile, tracker, headers) as http:
        async with Client(
            streamable_http_client(url, http_client=http, terminate_on_close=True),
            mode="legacy",
            read_timeout_seconds=READ_TIMEOUT,
        ) as client:
            assert tracker.session_id, "initialize through the proxy returned no Mcp-Session-Id header"
            yield client, tracker


@asynccontextmanager
async def modern_client(
    url: str, cafile: str | None, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[Client, Tracker]]:
    """A 2026-07-28 stateless SDK client (no initialize, no session)."""
    tracker = Tracker()
    async with async_http(cafile, tracker, headers) as http:
        async with Client(
            streamable_http_client(url, http_client=http), mode=MODERN_VERSION, read_timeout_seconds=READ_TIMEOUT
        ) as client:
            yield client, tracker


def result_text(result: Any) -> str:
    assert not getattr(result, "is_error", False), f"tool call failed: {result}"
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    assert texts, f"tool result without text content: {result}"
    return "".join(texts)


async def whoami(client: Client) -> str:
    return result_text(await client.call_tool("whoami", {}))


# ---------------------------------------------------------------------------- raw HTTP


def raw_client(cafile: str | None, timeout: float = 10.0) -> httpx2.Client:
    return httpx2.Client(verify=tls_context(cafile) if cafile else True, timeout=timeout)


def mcp_headers(session_id: str | None = None, version: str | None = LEGACY_VERSION) -> dict[str, str]:
    h = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    if version:
        h["mcp-protocol-version"] = version
    if session_id is not None:
        h["mcp-session-id"] = session_id
    return h


def jsonrpc(method: str, params: dict | None = None, id: int | None = 1) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if id is not None:
        msg["id"] = id
    if params is not None:
        msg["params"] = params
    return json.dumps(msg).encode()


def tool_body(tool: str, arguments: dict | None = None, id: int = 2) -> bytes:
    """A handshake-era tools/call request body."""
    return jsonrpc("tools/call", {"name": tool, "arguments": arguments or {}}, id)


INITIALIZE_PARAMS = {
    "protocolVersion": LEGACY_VERSION,
    "capabilities": {},
    "clientInfo": {"name": "dpuproxy-e2e-raw", "version": "0"},
}


def sse_messages(body: str) -> list[dict]:
    """JSON payloads of the `data:` lines of an SSE body (one-line data, as the SDK writes)."""
    out = []
    for line in body.splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data:
                out.append(json.loads(data))
    return out


def rpc_messages(text: str, ctype: str) -> list[dict]:
    """The JSON-RPC messages of a POST's response body: the SSE events' payloads for
    text/event-stream, else the body itself as one JSON document."""
    return sse_messages(text) if "text/event-stream" in ctype else [json.loads(text)]


# ---------------------------------------------------------------------------- admin

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_prometheus(text: str) -> Metrics:
    samples: Metrics = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparseable Prometheus line: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        samples[(name, frozenset(_LABEL.findall(labels)))] = float(value)
    return samples


def metric(samples: Metrics, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def metric_family(samples: Metrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {lbls: v for (n, lbls), v in samples.items() if n == name}


def scrape(admin_url: str) -> Metrics:
    r = httpx2.get(f"{admin_url}/metrics", timeout=5.0)
    assert r.status_code == 200, f"/metrics -> HTTP {r.status_code}: {r.text[:300]}"
    return parse_prometheus(r.text)


def sessions(admin_url: str) -> dict:
    r = httpx2.get(f"{admin_url}/sessions", timeout=5.0)
    assert r.status_code == 200, f"/sessions -> HTTP {r.status_code}: {r.text[:300]}"
    doc = r.json()
    assert isinstance(doc.get("count"), int) and isinstance(doc.get("sessions"), list), f"bad /sessions body: {doc}"
    assert doc["count"] == len(doc["sessions"]), f"/sessions count disagrees with its list: {doc}"
    for s in doc["sessions"]:
        assert set(s) >= {"id_prefix", "backend", "idle_ms"}, f"bad /sessions entry: {s}"
        assert isinstance(s["idle_ms"], int) and s["idle_ms"] >= 0, f"bad idle_ms: {s}"
    return doc


def backend_requests(samples: Metrics) -> dict[str, float]:
    return {dict(lbls).get("backend", "?"): v for lbls, v in metric_family(samples, "dpuproxy_requests_total").items()}

"""Raw HTTP/1.1 through the proxy from inside the namespace: curl --http1.1 as the client, and
parsers for what curl -i or openssl s_client print."""

from __future__ import annotations

import json
import re

from mcp_helpers import INITIALIZE_PARAMS, jsonrpc, sse_messages

MCP_ACCEPT = "application/json, text/event-stream"


def parse_http(raw: str) -> tuple[int, dict[str, str], str]:
    """A curl -i / raw HTTP/1.1 response: (status, lowercased headers, body). Skips 1xx heads."""
    rest = raw
    while True:
        head, sep, body = rest.partition("\r\n\r\n")
        assert sep, f"no end of response head in {raw[:500]!r}"
        status_line, *lines = head.split("\r\n")
        m = re.match(r"HTTP/1\.1 (\d{3})", status_line)
        assert m, f"not an HTTP/1.1 status line: {status_line!r} (full: {raw[:500]!r})"
        status = int(m.group(1))
        if 100 <= status < 200:
            rest = body
            continue
        headers: dict[str, str] = {}
        for line in lines:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers, body


def dechunk(body: str) -> str:
    """Decode a raw `Transfer-Encoding: chunked` body (as openssl s_client shows it); bad
    framing or a missing last chunk fails the test."""
    out, rest = [], body
    while True:
        size_line, sep, rest = rest.partition("\r\n")
        assert sep, f"chunked body ends without its last (0-size) chunk: {body[-300:]!r}"
        m = re.fullmatch(r"([0-9A-Fa-f]+)(;.*)?", size_line)
        assert m, f"bad chunk-size line {size_line!r} in {body[:300]!r}"
        size = int(m.group(1), 16)
        if size == 0:
            return "".join(out)
        assert rest[size : size + 2] == "\r\n", f"chunk of {size} bytes not followed by CRLF: {rest[:300]!r}"
        out.append(rest[:size])
        rest = rest[size + 2 :]


def curl(proxy, extra: list[str], body: bytes | None = None, token: str | None = "default", timeout: float = 20):
    """curl --http1.1 from inside the namespace; returns (status, headers, body text)."""
    args = ["curl", "--http1.1", "-sS", "-i", "--max-time", "15", "--cacert", proxy.cafile]
    tok = proxy.token if token == "default" else token
    if tok is not None:
        args += ["-H", f"Authorization: Bearer {tok}"]
    args += extra
    if body is not None:
        args += ["--data-binary", "@-"]
    args.append(proxy.url)
    res = proxy.topo.ns_run(args, timeout=timeout, input=body, text=False)
    out, err = res.stdout.decode("latin-1"), res.stderr.decode("utf-8", "replace")
    assert res.returncode == 0, f"curl exited {res.returncode}: {err.strip()}\n{out[:1000]}"
    return parse_http(out)


def initialize_via_curl(proxy, token: str | None = "default"):
    return curl(
        proxy,
        ["-H", "Content-Type: application/json", "-H", f"Accept: {MCP_ACCEPT}"],
        body=jsonrpc("initialize", INITIALIZE_PARAMS),
        token=token,
    )


def server_name(body: str, ctype: str) -> str:
    msgs = sse_messages(body) if "text/event-stream" in ctype else [json.loads(body)]
    results = [m for m in msgs if "result" in m]
    assert results, f"no JSON-RPC result in {body[:500]!r}"
    return results[0]["result"]["serverInfo"]["name"]

"""Raw HTTP/1.1 through the proxy from inside the namespace: curl --http1.1 as the client,
parsers for what curl -i or openssl s_client print, and which lcore accepted a connection."""

from __future__ import annotations

import re

from mcp_helpers import INITIALIZE_PARAMS, jsonrpc, metric_family, rpc_messages, scrape

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
    results = [m for m in rpc_messages(body, ctype) if "result" in m]
    assert results, f"no JSON-RPC result in {body[:500]!r}"
    return results[0]["result"]["serverInfo"]["name"]


def accepted_per_lcore(admin_url: str) -> dict[str, float]:
    """dpuproxy_lcore_accepted_total by lcore, from the admin endpoint."""
    fam = metric_family(scrape(admin_url), "dpuproxy_lcore_accepted_total")
    return {dict(labels)["lcore"]: v for labels, v in fam.items()}


def lcore_that_accepted(before: dict[str, float], after: dict[str, float]) -> str | None:
    """The lcore whose accept count moved by exactly one while no other moved (None otherwise)."""
    moved = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
    return next(iter(moved)) if list(moved.values()) == [1.0] else None

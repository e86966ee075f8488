"""End-to-end tests of dpuproxy's OAuth2 / JWT bearer-token validation (auth ON).

Each proxy here is started by this module (the shared `proxy` fixture stays auth-off):

* `auth_proxy`  JWKS {rsa1 (any RSA alg), rsa-rs256-only (alg RS256), ec1 (P-256), ed1 (Ed25519)}
                + --jwt-key P-384 PEM; 2 issuers, 2 audiences, --subject-header, --auth-server.
* `scope_proxy` JWKS {rsa1} + --jwt-hs256-secret-file; --jwt-require-scope
                "tools/call:echo=mcp:echo", --forward-token, --jwt-leeway 1s.
* `rotating`    (one per test) JWKS {rsa1} only, for reload tests (poll / SIGHUP / unknown kid).

Run:  .venv/bin/python -m pytest tests/e2e/test_auth.py -v
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import re
import secrets
import signal
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import httpx2
import pytest
from auth_helpers import (
    AUDIENCE,
    AUDIENCE_ALT,
    AUTH_SERVER,
    ISSUER,
    ISSUER_ALT,
    RSA_ALGS,
    SUBJECT,
    Key,
    RawResponse,
    claims,
    ec_key,
    ed25519_key,
    hmac_token,
    jwks_bytes,
    parse_www_authenticate,
    raw_request,
    rsa_key,
    sign,
    tamper_payload,
    truncate_signature,
    unsigned_token,
    write_atomic,
    write_jwks,
)
from conftest import Proxy, launch_proxy
from mcp_helpers import (
    BACKEND_NAMES,
    INITIALIZE_PARAMS,
    MODERN_VERSION,
    Metrics,
    backend_requests,
    jsonrpc,
    legacy_session,
    mcp_headers,
    metric,
    metric_family,
    modern_client,
    raw_client,
    result_text,
    rpc_messages,
    run,
    scrape,
    tool_body,
    whoami,
)

pytestmark = pytest.mark.timeout(120)

SCOPE_RULE = "tools/call:echo=mcp:echo"
RELOAD_WITHIN = 5.0  # seconds a JWKS change may take to be picked up (poll 1 s / SIGHUP)
JWKS_PAD = 16384  # rotating JWKS files are padded to this size so the size never changes


# ---------------------------------------------------------------------------- fixtures


@dataclasses.dataclass(frozen=True)
class AuthProxy:
    proxy: Proxy
    dir: Path
    jwks_path: Path
    hs_secret: bytes | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    @property
    def resource_metadata(self) -> str:
        return f"https://{self.host}/.well-known/oauth-protected-resource"

    @property
    def resource(self) -> str:
        return self.proxy.url


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {
        "rsa1": rsa_key("rsa1"),
        "rsa_rs256": rsa_key("rsa-rs256-only"),
        "ec1": ec_key("ec1", "P-256"),
        "ed1": ed25519_key("ed1"),
        "p384": ec_key(None, "P-384"),  # given to the proxy as a PEM file (--jwt-key), no kid
        "stranger": rsa_key("rsa1"),  # NOT configured, but claims kid rsa1
        "stranger_ec": ec_key("rsa1", "P-256"),  # NOT configured, claims kid rsa1
        "nokid": rsa_key("no-such-kid"),  # NOT configured, unknown kid
    }


@pytest.fixture(scope="module")
def rot_keys() -> dict[str, Key]:
    return {
        "rsa1": rsa_key("rsa1"),
        "rsa1b": rsa_key("rsa1"),  # new material under the same kid
        "rsa2": rsa_key("rsa2"),
        "rsa3": rsa_key("rsa3"),
        "rsa4": rsa_key("rsa4"),
    }


def _common_args() -> list[str]:
    return ["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE]


@pytest.fixture(scope="module")
def auth_proxy(workdir, backends, tls_cert, keys):
    d = workdir / "auth-main"
    d.mkdir(exist_ok=True)
    jwks = d / "jwks.json"
    write_jwks(
        jwks,
        [keys["rsa1"].jwk(), keys["rsa_rs256"].jwk(alg="RS256"), keys["ec1"].jwk(), keys["ed1"].jwk()],
    )
    pem = d / "p384.pem"
    pem.write_bytes(keys["p384"].public_pem())
    args = [
        "--jwt-jwks", str(jwks),
        "--jwt-key", str(pem),
        "--jwt-issuer", ISSUER, "--jwt-issuer", ISSUER_ALT,
        "--jwt-audience", AUDIENCE, "--jwt-audience", AUDIENCE_ALT,
        "--subject-header",
        "--auth-server", AUTH_SERVER,
    ]  # fmt: skip
    with launch_proxy(workdir, backends, tls_cert, args, name="dpuproxy-auth") as p:
        yield AuthProxy(p, d, jwks)


@pytest.fixture(scope="module")
def scope_proxy(workdir, backends, tls_cert, keys):
    d = workdir / "auth-scope"
    d.mkdir(exist_ok=True)
    jwks = d / "jwks.json"
    write_jwks(jwks, [keys["rsa1"].jwk()])
    secret = secrets.token_hex(32).encode()  # the file holds exactly these bytes (no newline)
    secret_file = d / "hs256.secret"
    secret_file.write_bytes(secret)
    os.chmod(secret_file, 0o600)
    args = _common_args() + [
        "--jwt-jwks", str(jwks),
        "--jwt-hs256-secret-file", str(secret_file),
        "--jwt-require-scope", SCOPE_RULE,
        "--forward-token",
        "--jwt-leeway", "1s",
        "--auth-server", AUTH_SERVER,
    ]  # fmt: skip
    with launch_proxy(workdir, backends, tls_cert, args, name="dpuproxy-scope") as p:
        yield AuthProxy(p, d, jwks, secret)


@pytest.fixture
def rotating(workdir, backends, tls_cert, rot_keys, request):
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    d = workdir / f"auth-rot-{safe}"
    d.mkdir(exist_ok=True)
    jwks = d / "jwks.json"
    write_jwks(jwks, [rot_keys["rsa1"].jwk()], pad_to=JWKS_PAD)
    args = _common_args() + ["--jwt-jwks", str(jwks)]
    with launch_proxy(workdir, backends, tls_cert, args, name=f"dpuproxy-rot-{safe}") as p:
        yield AuthProxy(p, d, jwks)


# ---------------------------------------------------------------------------- helpers


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def rs256(key: Key, **claim_overrides: Any) -> str:
    return sign(key, "RS256", claims(**claim_overrides))


def family(samples: Metrics, name: str, label: str) -> dict[str, float]:
    return {dict(lbls).get(label, "?"): v for lbls, v in metric_family(samples, name).items()}


def rejections(samples: Metrics) -> dict[str, float]:
    return family(samples, "dpuproxy_auth_rejections_total", "reason")


def verified(samples: Metrics) -> dict[str, float]:
    return family(samples, "dpuproxy_auth_verified_total", "cache")


def reloads(samples: Metrics) -> dict[str, float]:
    return family(samples, "dpuproxy_auth_key_reloads_total", "result")


def forwarded(samples: Metrics) -> float:
    return sum(backend_requests(samples).values())


def diff(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    out = {}
    for k in set(before) | set(after):
        d = after.get(k, 0.0) - before.get(k, 0.0)
        if d:
            out[k] = d
    return out


def wait_metrics(ap: AuthProxy, done: Callable[[Metrics], bool], timeout: float = 2.0) -> Metrics:
    """Scrape until `done(samples)` (counters may be bumped just after the response is written)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(ap.proxy.admin_url)
        if done(samples) or time.monotonic() >= deadline:
            return samples
        time.sleep(0.05)


def assert_one_rejection(ap: AuthProxy, before: Metrics, reasons: set[str], allow_none: bool = False) -> Metrics:
    after = wait_metrics(ap, lambda s: bool(diff(rejections(before), rejections(s))))
    d = diff(rejections(before), rejections(after))
    if allow_none and not d:
        return after
    assert len(d) == 1 and sum(d.values()) == 1, (
        f"expected exactly one dpuproxy_auth_rejections_total increment (reason in {sorted(reasons)}), got {d}"
    )
    (reason,) = d
    assert reason in reasons, f"rejection counted as reason={reason!r}, expected one of {sorted(reasons)}"
    return after


def header_of(resp: httpx2.Response | RawResponse, name: str) -> str | None:
    if isinstance(resp, RawResponse):
        return resp.header(name)
    return resp.headers.get(name)


def body_of(resp: httpx2.Response | RawResponse) -> bytes:
    return resp.body if isinstance(resp, RawResponse) else resp.content


def status_of(resp: httpx2.Response | RawResponse) -> int:
    return resp.status if isinstance(resp, RawResponse) else resp.status_code


def check_challenge(
    ap: AuthProxy,
    resp: httpx2.Response | RawResponse,
    status: int,
    error: str | None | type[Ellipsis],
    scope: str | None = None,
) -> dict[str, str]:
    """Status, WWW-Authenticate (error=None: no error attribute; ...: either) and JSON-RPC body."""
    body = body_of(resp)
    assert status_of(resp) == status, f"expected HTTP {status}, got {status_of(resp)}: {body[:300]!r}"
    www = header_of(resp, "www-authenticate")
    assert www, f"HTTP {status} without WWW-Authenticate"
    scheme, params = parse_www_authenticate(www)
    assert scheme == "bearer", www
    assert params.get("resource_metadata") == ap.resource_metadata, f"resource_metadata in {www!r}"
    if error is None:
        assert "error" not in params, f"a request without a token must get no error attribute: {www!r}"
    elif error is not Ellipsis:
        assert params.get("error") == error, f"error attribute in {www!r}"
        if error == "invalid_token":
            assert params.get("error_description"), f"invalid_token without error_description: {www!r}"
    if scope is not None:
        assert params.get("scope") == scope, f"scope attribute in {www!r}"
    doc = json.loads(body)
    assert doc.get("jsonrpc") == "2.0" and "id" in doc and doc["id"] is None, f"401/403 body: {doc}"
    err = doc.get("error")
    assert isinstance(err, dict) and isinstance(err.get("code"), int) and isinstance(err.get("message"), str), doc
    return params


def rpc_result(resp: httpx2.Response | RawResponse) -> dict:
    """The JSON-RPC response of a POST answered with application/json or an SSE stream."""
    ctype = header_of(resp, "content-type") or ""
    text = body_of(resp).decode("utf-8", "replace")
    responses = [m for m in rpc_messages(text, ctype) if "id" in m and ("result" in m or "error" in m)]
    assert responses, f"no JSON-RPC response in {text[:300]!r}"
    return responses[-1]


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "dpuproxy-e2e-auth", "version": "0"},
}


def modern_tool_body(tool: str, arguments: dict | None = None, id: int = 1) -> bytes:
    params = {"name": tool, "arguments": arguments or {}, "_meta": MODERN_META}
    return json.dumps({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}).encode()


def modern_headers(token: str | None, name: str | None, method: str = "tools/call") -> dict[str, str]:
    h = mcp_headers(version=MODERN_VERSION)
    h["mcp-method"] = method
    if name is not None:
        h["mcp-name"] = name
    if token is not None:
        h.update(bearer(token))
    return h


def modern_call(
    ap: AuthProxy,
    token: str | None,
    tool: str = "whoami",
    arguments: dict | None = None,
    *,
    name_header: str | None | type[Ellipsis] = Ellipsis,
    body: bytes | None = None,
) -> httpx2.Response:
    """One stateless 2026-07-28 tools/call (no session is created on the backend)."""
    name = tool if name_header is Ellipsis else name_header
    with raw_client(ap.proxy.cafile) as http:
        return http.post(
            ap.proxy.url, headers=modern_headers(token, name), content=body or modern_tool_body(tool, arguments)
        )


def token_accepted(ap: AuthProxy, token: str) -> int:
    r = modern_call(ap, token)
    if r.status_code == 200:
        res = rpc_result(r)
        assert "result" in res and res["result"]["content"][0]["text"] in BACKEND_NAMES, res
    return r.status_code


def poll_status(ap: AuthProxy, token: str, want: int, within: float) -> list[int]:
    """Send `token` until it gets HTTP `want` or `within` seconds pass; returns the statuses seen."""
    deadline = time.monotonic() + within
    seen = []
    while True:
        seen.append(token_accepted(ap, token))
        if seen[-1] == want or time.monotonic() >= deadline:
            return seen
        time.sleep(0.2)


def raw_initialize(ap: AuthProxy, token: str) -> httpx2.Response:
    """A raw handshake-era initialize POST; on success the session is DELETEd again."""
    with raw_client(ap.proxy.cafile) as http:
        r = http.post(ap.proxy.url, headers={**mcp_headers(version=None), **bearer(token)},
                      content=jsonrpc("initialize", INITIALIZE_PARAMS))  # fmt: skip
        if r.status_code == 200:
            res = rpc_result(r)
            assert res["result"]["serverInfo"]["name"] in BACKEND_NAMES, res
            sid = r.headers.get("mcp-session-id")
            assert sid, "initialize through the proxy returned no Mcp-Session-Id"
            d = http.delete(ap.proxy.url, headers={**mcp_headers(sid), **bearer(token)})
            assert d.status_code == 200, f"DELETE of the session -> {d.status_code} {d.text[:200]}"
        return r


def raw_legacy_session(http: httpx2.Client, ap: AuthProxy, token: str) -> str:
    r = http.post(ap.proxy.url, headers={**mcp_headers(version=None), **bearer(token)},
                  content=jsonrpc("initialize", INITIALIZE_PARAMS))  # fmt: skip
    assert r.status_code == 200, f"initialize -> {r.status_code} {r.text[:300]}"
    sid = r.headers.get("mcp-session-id")
    assert sid
    r = http.post(ap.proxy.url, headers={**mcp_headers(sid), **bearer(token)},
                  content=jsonrpc("notifications/initialized", id=None))  # fmt: skip
    assert r.status_code == 202, f"notifications/initialized -> {r.status_code} {r.text[:300]}"
    return sid


def legacy_call(
    http: httpx2.Client, ap: AuthProxy, sid: str, token: str, body: bytes, extra: dict[str, str] | None = None
) -> httpx2.Response:
    return http.post(ap.proxy.url, headers={**mcp_headers(sid), **bearer(token), **(extra or {})}, content=body)


def assert_tool_text(resp: httpx2.Response, expected: str | Collection[str]) -> None:
    """A successful tools/call whose text is `expected` (a string) or one of `expected`."""
    assert resp.status_code == 200, f"tools/call -> {resp.status_code} {resp.text[:300]}"
    res = rpc_result(resp)
    assert "result" in res and not res["result"].get("isError"), res
    text = res["result"]["content"][0]["text"]
    if isinstance(expected, str):
        assert text == expected, text
    else:
        assert text in expected, text


# ---------------------------------------------------------------------------- (a) valid token, SDK session


@pytest.mark.parametrize("mode", ["legacy", MODERN_VERSION])
def test_valid_token_sdk_session_and_forwarded_headers(auth_proxy, keys, mode):
    ap = auth_proxy
    token = rs256(keys["rsa1"], scope="mcp:echo", sub=SUBJECT)
    before = scrape(ap.proxy.admin_url)
    headers = {**bearer(token), "X-Authenticated-Subject": "mallory"}
    opener = legacy_session if mode == "legacy" else modern_client

    async def body():
        async with opener(ap.proxy.url, ap.proxy.cafile, headers) as (client, _tracker):
            who = await whoami(client)
            echoed = result_text(await client.call_tool("echo", {"text": "through auth"}))
            seen = json.loads(result_text(await client.call_tool("headers", {})))
            return client.protocol_version, who, echoed, seen

    version, who, echoed, seen = run(body)
    assert version == ("2025-11-25" if mode == "legacy" else MODERN_VERSION)
    assert who in BACKEND_NAMES
    assert echoed == "through auth"
    assert "authorization" not in seen, f"the bearer token reached the backend: {seen.get('authorization')!r}"
    assert seen.get("x-authenticated-subject") == SUBJECT, (
        f"backend saw X-Authenticated-Subject {seen.get('x-authenticated-subject')!r}, expected {SUBJECT!r} "
        "(a client-sent value must be stripped, the token's sub added)"
    )
    after = scrape(ap.proxy.admin_url)
    assert sum(diff(verified(before), verified(after)).values()) >= 3, "dpuproxy_auth_verified_total did not grow"
    assert not diff(rejections(before), rejections(after)), diff(rejections(before), rejections(after))


def test_subject_header_spoof_variants_stripped(auth_proxy, keys):
    """Differently-cased and duplicated client X-Authenticated-Subject headers never reach the backend."""
    ap = auth_proxy
    token = rs256(keys["rsa1"])
    hdrs = [
        ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"),
        ("MCP-Protocol-Version", MODERN_VERSION),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "headers"),
        ("x-authenticated-SUBJECT", "mallory"),
        ("Authorization", f"Bearer {token}"),
        ("X-Authenticated-Subject", "eve"),
    ]
    r = raw_request("127.0.0.1", ap.proxy.port, ap.proxy.cafile, "POST", "/mcp", hdrs, modern_tool_body("headers"))
    assert r.status == 200, f"{r.status} {r.text()[:300]}"
    seen = json.loads(rpc_result(r)["result"]["content"][0]["text"])
    assert seen.get("x-authenticated-subject") == SUBJECT, seen.get("x-authenticated-subject")
    assert "authorization" not in seen


# ---------------------------------------------------------------------------- (b) bad tokens -> 401


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    build: Callable[[dict[str, Key]], tuple[str | bytes | None, str | None]]  # (Authorization value, prime token)
    reasons: frozenset[str]
    error: str | None | type[Ellipsis] = "invalid_token"  # None: no error attribute, ...: either
    path: Callable[[dict[str, Key]], str] | None = None
    statuses: tuple[int, ...] = (401,)


def _now() -> int:
    return int(time.time())


def _tampered(k: dict[str, Key]) -> tuple[str, str]:
    good = rs256(k["rsa1"], scope="mcp:read")
    return "Bearer " + tamper_payload(good, sub="admin", scope="mcp:echo mcp:admin"), good


def _non_ascii(k: dict[str, Key]) -> tuple[bytes, None]:
    h, p, s = rs256(k["rsa1"]).split(".")
    return b"Bearer " + f"{h}.{p[:10]}".encode() + "\u00e9\u00df".encode() + f"{p[10:]}.{s}".encode(), None


def _sized(k: dict[str, Key], total: int) -> str:
    base = rs256(k["rsa1"], pad="")
    pad = "x" * max(0, int((total - len(base)) * 3 / 4))
    return rs256(k["rsa1"], pad=pad)


def _tok(fn: Callable[[dict[str, Key]], str]) -> Callable[[dict[str, Key]], tuple[str, None]]:
    return lambda k: ("Bearer " + fn(k), None)


R = frozenset
BAD_CASES = [
    Bad("missing", lambda k: (None, None), R({"missing"}), error=None),
    Bad("token_in_query_only", lambda k: (None, None), R({"missing"}), error=None,
        path=lambda k: f"/mcp?access_token={rs256(k['rsa1'])}"),
    Bad("basic_scheme", lambda k: ("Basic dXNlcjpwYXNz", None), R({"missing", "malformed"}), error=Ellipsis),
    Bad("empty_bearer", lambda k: (b"Bearer ", None), R({"missing", "malformed"}), error=Ellipsis),
    Bad("garbage", lambda k: ("Bearer not-a-jwt", None), R({"malformed"})),
    Bad("garbage_three_parts", lambda k: ("Bearer aaaa.bbbb.cccc", None), R({"malformed"})),
    Bad("non_ascii", _non_ascii, R({"malformed"})),
    Bad("expired", _tok(lambda k: rs256(k["rsa1"], now=_now() - 600, exp=_now() - 120)), R({"expired"})),
    Bad("nbf_in_future", _tok(lambda k: rs256(k["rsa1"], nbf=_now() + 120)), R({"not_yet_valid"})),
    Bad("iat_in_future", _tok(lambda k: rs256(k["rsa1"], iat=_now() + 120, nbf=_now())), R({"issued_in_future"})),
    Bad("wrong_issuer", _tok(lambda k: rs256(k["rsa1"], iss="https://evil.test")), R({"wrong_issuer"})),
    Bad("missing_issuer", _tok(lambda k: rs256(k["rsa1"], iss=None)), R({"wrong_issuer", "malformed"})),
    Bad("wrong_audience", _tok(lambda k: rs256(k["rsa1"], aud="someone-else")), R({"wrong_audience"})),
    Bad("wrong_audience_array", _tok(lambda k: rs256(k["rsa1"], aud=["a", "b"])), R({"wrong_audience"})),
    Bad("missing_audience", _tok(lambda k: rs256(k["rsa1"], aud=None)), R({"wrong_audience", "malformed"})),
    Bad("tampered_payload", _tampered, R({"bad_signature"})),
    Bad("truncated_signature", _tok(lambda k: truncate_signature(rs256(k["rsa1"]))), R({"bad_signature"})),
    Bad("signature_not_base64url", _tok(lambda k: rs256(k["rsa1"])[:-2] + "*/"), R({"malformed", "bad_signature"})),
    Bad("other_key_same_kid", _tok(lambda k: rs256(k["stranger"])), R({"bad_signature"})),
    Bad("alg_none", _tok(lambda k: unsigned_token(claims(), kid="rsa1")), R({"alg_not_allowed", "malformed"})),
    Bad("alg_none_no_kid", _tok(lambda k: unsigned_token(claims())), R({"alg_not_allowed", "malformed"})),
    Bad("hs256_keyed_with_rsa_public_pem",
        _tok(lambda k: hmac_token(k["rsa1"].public_pem(), claims(), "HS256", kid="rsa1")), R({"alg_not_allowed"})),
    Bad("hs256_keyed_with_rsa_public_pem_no_kid",
        _tok(lambda k: hmac_token(k["rsa1"].public_pem(), claims(), "HS256")), R({"alg_not_allowed"})),
    Bad("es256_on_rsa_kid", _tok(lambda k: sign(k["stranger_ec"], "ES256", claims())), R({"alg_not_allowed"})),
    Bad("ps256_on_rs256_only_key", _tok(lambda k: sign(k["rsa_rs256"], "PS256", claims())), R({"alg_not_allowed"})),
    Bad("unknown_kid", _tok(lambda k: rs256(k["nokid"])), R({"unknown_kid"})),
    Bad("token_over_8192_bytes", _tok(lambda k: _sized(k, 9000)), R({"too_large"})),
    Bad("token_70kb", _tok(lambda k: _sized(k, 70_000)), R({"too_large"}), statuses=(401, 431)),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.id for c in BAD_CASES])
def test_bad_token_rejected(auth_proxy, keys, case: Bad):
    ap = auth_proxy
    value, prime = case.build(keys)
    if case.id == "token_over_8192_bytes":
        assert 8192 < len(value) - len("Bearer ") < 12000, len(value)
    if case.id == "token_70kb":
        assert len(value) > 65_000, len(value)
    if prime is not None:  # a valid token first (fills a verification cache, if any)
        assert token_accepted(ap, prime) == 200
    before = scrape(ap.proxy.admin_url)
    hdrs: list[tuple[str, str | bytes]] = [
        ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"),
    ]
    if value is not None:
        hdrs.append(("Authorization", value))
    path = case.path(keys) if case.path else "/mcp"
    try:
        r = raw_request("127.0.0.1", ap.proxy.port, ap.proxy.cafile, "POST", path, hdrs,
                        jsonrpc("initialize", INITIALIZE_PARAMS))  # fmt: skip
    except (ConnectionError, OSError) as e:
        pytest.fail(f"no HTTP response (expected {case.statuses}): {e!r}")
    assert r.status in case.statuses, f"expected HTTP {case.statuses}, got {r.status}: {r.text()[:300]}"
    if r.status == 401:
        check_challenge(ap, r, 401, case.error)
        after = assert_one_rejection(ap, before, set(case.reasons))
    else:  # 431: the request head itself was refused
        after = assert_one_rejection(ap, before, set(case.reasons), allow_none=True)
    assert forwarded(after) == forwarded(before), (
        f"a rejected request reached a backend: {backend_requests(before)} -> {backend_requests(after)}"
    )
    # The proxy is still fine afterwards.
    assert token_accepted(ap, rs256(keys["rsa1"])) == 200


def test_missing_token_on_every_method(auth_proxy):
    ap = auth_proxy
    before = scrape(ap.proxy.admin_url)
    with raw_client(ap.proxy.cafile) as http:
        responses = [
            http.post(ap.proxy.url, headers=mcp_headers(version=None), content=jsonrpc("initialize", INITIALIZE_PARAMS)),
            http.get(ap.proxy.url, headers={"accept": "text/event-stream", "mcp-protocol-version": "2025-11-25"}),
            http.delete(ap.proxy.url, headers=mcp_headers("0123456789abcdef0123456789abcdef")),
        ]
    for r in responses:
        check_challenge(ap, r, 401, None)
    after = wait_metrics(ap, lambda s: diff(rejections(before), rejections(s)).get("missing", 0) >= 3)
    assert diff(rejections(before), rejections(after)) == {"missing": 3.0}
    assert forwarded(after) == forwarded(before)


def test_duplicate_authorization_headers_rejected(auth_proxy, keys):
    """Two Authorization headers (even both valid) are ambiguous: refused as an invalid request
    (RFC 6750 section 3.1: HTTP 400, error=invalid_request), and counted once."""
    ap = auth_proxy
    before = scrape(ap.proxy.admin_url)
    hdrs = [
        ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"),
        ("Authorization", f"Bearer {rs256(keys['rsa1'])}"),
        ("Authorization", f"Bearer {rs256(keys['rsa1'], sub='mallory')}"),
    ]
    r = raw_request("127.0.0.1", ap.proxy.port, ap.proxy.cafile, "POST", "/mcp", hdrs,
                    jsonrpc("initialize", INITIALIZE_PARAMS))  # fmt: skip
    check_challenge(ap, r, 400, "invalid_request")
    after = assert_one_rejection(ap, before, {"invalid_request"})
    assert forwarded(after) == forwarded(before)


ACCEPTED = [
    ("exp_within_leeway", lambda k: "Bearer " + rs256(k["rsa1"], now=_now() - 600, exp=_now() - 10)),
    ("nbf_within_leeway", lambda k: "Bearer " + rs256(k["rsa1"], nbf=_now() + 10)),
    ("iat_within_leeway", lambda k: "Bearer " + rs256(k["rsa1"], iat=_now() + 10, nbf=_now())),
    ("audience_array_second_audience", lambda k: "Bearer " + rs256(k["rsa1"], aud=["someone-else", AUDIENCE_ALT])),
    ("second_issuer", lambda k: "Bearer " + rs256(k["rsa1"], iss=ISSUER_ALT)),
    ("lowercase_scheme", lambda k: "bearer " + rs256(k["rsa1"])),
    ("minimal_claims", lambda k: "Bearer " + rs256(k["rsa1"], iat=None, nbf=None, jti=None, scope=None)),
    ("typ_at_jwt", lambda k: "Bearer " + sign(k["rsa1"], "RS256", claims(), typ="at+jwt")),
    ("rs256_on_rs256_only_key", lambda k: "Bearer " + rs256(k["rsa_rs256"])),
]


@pytest.mark.parametrize("build", [b for _, b in ACCEPTED], ids=[i for i, _ in ACCEPTED])
def test_token_accepted(auth_proxy, keys, build):
    ap = auth_proxy
    value = build(keys)
    with raw_client(ap.proxy.cafile) as http:
        r = http.post(ap.proxy.url, headers={**modern_headers(None, "whoami"), "authorization": value},
                      content=modern_tool_body("whoami"))  # fmt: skip
    assert r.status_code == 200, f"{r.status_code} {r.headers.get('www-authenticate')} {r.text[:300]}"
    assert_tool_text(r, BACKEND_NAMES)


# ---------------------------------------------------------------------------- (c) algorithms

ALGS = [(alg, "rsa1") for alg in RSA_ALGS] + [("ES256", "ec1"), ("ES384", "p384"), ("EdDSA", "ed1")]


@pytest.mark.parametrize("alg,keyname", ALGS, ids=[a for a, _ in ALGS])
def test_algorithm_accepted(auth_proxy, keys, alg, keyname):
    token = sign(keys[keyname], alg, claims())
    r = raw_initialize(auth_proxy, token)
    assert r.status_code == 200, f"{alg} -> {r.status_code} {r.headers.get('www-authenticate')} {r.text[:300]}"


# ---------------------------------------------------------------------------- (d) scopes


def test_scope_rule_per_tool(scope_proxy, keys):
    ap = scope_proxy
    no_scope = rs256(keys["rsa1"], scope="mcp:read")
    with_scope = rs256(keys["rsa1"], scope="mcp:read mcp:echo")
    with raw_client(ap.proxy.cafile) as http:
        sid = raw_legacy_session(http, ap, no_scope)  # initialize needs no scope
        assert_tool_text(legacy_call(http, ap, sid, no_scope, tool_body("whoami")), BACKEND_NAMES)

        before = scrape(ap.proxy.admin_url)
        r = legacy_call(http, ap, sid, no_scope, tool_body("echo", {"text": "x"}, 3))
        check_challenge(ap, r, 403, "insufficient_scope", scope="mcp:echo")
        after = assert_one_rejection(ap, before, {"insufficient_scope"})
        assert forwarded(after) == forwarded(before), "a call refused for scope reached a backend"

        assert_tool_text(legacy_call(http, ap, sid, with_scope, tool_body("echo", {"text": "scoped"}, 4)), "scoped")
        d = http.delete(ap.proxy.url, headers={**mcp_headers(sid), **bearer(with_scope)})
        assert d.status_code == 200, f"DELETE of the session -> {d.status_code} {d.text[:200]}"


def test_scope_sdk_session_with_scope(scope_proxy, keys):
    ap = scope_proxy
    token = rs256(keys["rsa1"], scope="mcp:echo")

    async def body():
        async with legacy_session(ap.proxy.url, ap.proxy.cafile, bearer(token)) as (client, _):
            return await whoami(client), result_text(await client.call_tool("echo", {"text": "ok"}))

    who, echoed = run(body)
    assert who in BACKEND_NAMES and echoed == "ok"


SCOPE_VARIANTS = [
    ("scope_string", {"scope": "mcp:echo"}, 200),
    ("scope_among_others", {"scope": "openid mcp:echo profile"}, 200),
    ("scp_array", {"scope": None, "scp": ["mcp:read", "mcp:echo"]}, 200),
    ("scp_string", {"scope": None, "scp": "mcp:echo"}, 200),
    ("no_scope_claim", {"scope": None}, 403),
    ("prefix_suffix_lookalikes", {"scope": "mcp:echox xmcp:echo mcp:ech"}, 403),
    ("wrong_case", {"scope": "MCP:ECHO"}, 403),
    ("scp_array_lookalike", {"scope": None, "scp": ["mcp:echo2"]}, 403),
    ("comma_separated_not_split", {"scope": "mcp:read,mcp:echo"}, 403),
]


@pytest.mark.parametrize("overrides,status", [(o, s) for _, o, s in SCOPE_VARIANTS], ids=[i for i, _, _ in SCOPE_VARIANTS])
def test_scope_claim_variants(scope_proxy, keys, overrides, status):
    ap = scope_proxy
    token = rs256(keys["rsa1"], **overrides)
    r = modern_call(ap, token, "echo", {"text": "v"})
    if status == 200:
        assert_tool_text(r, "v")
    else:
        check_challenge(ap, r, 403, "insufficient_scope", scope="mcp:echo")


def _hand_written_call(id: int, name_members: str, text: str, modern: bool) -> bytes:
    """A tools/call body whose params start with `name_members` verbatim (JSON that json.dumps
    never writes: duplicate keys, escaped names), then arguments {"text": text} and, for a
    2026-07-28 request, the _meta block."""
    meta = f',"_meta":{json.dumps(MODERN_META)}' if modern else ""
    return (
        f'{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":'
        f'{{{name_members},"arguments":{{"text":"{text}"}}{meta}}}}}'
    ).encode()


def _dup_name_body(modern: bool) -> bytes:
    return _hand_written_call(5, '"name":"whoami","name":"echo"', "dup", modern)


def _escaped_name_body(modern: bool) -> bytes:
    return _hand_written_call(6, '"name":"\\u0065cho"', "esc", modern)


LEGACY_ODD_BODIES = {
    "dup_method": b'{"jsonrpc":"2.0","id":8,"method":"tools/list","method":"tools/call",'
    b'"params":{"name":"echo","arguments":{"text":"dm"}}}',
    "dup_params": b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"whoami"},'
    b'"params":{"name":"echo","arguments":{"text":"dp"}}}',
    "nan": b'{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"echo","arguments":{"text":"nan"},'
    b'"_x":NaN}}',
}


def test_scope_cannot_be_bypassed(scope_proxy, keys):
    """A token without mcp:echo must never get echo executed, however the request is dressed up.
    403 is the expected answer; 400 (the request refused as malformed/inconsistent, by the proxy
    or by the backend) is tolerated where noted; 200 means the scope rule was bypassed."""
    ap = scope_proxy
    token = rs256(keys["rsa1"], scope="mcp:read")
    b64_echo = "=?base64?" + base64.b64encode(b"echo").decode() + "?="
    outcomes: dict[str, tuple[int, str]] = {}
    with raw_client(ap.proxy.cafile) as http:
        sid = raw_legacy_session(http, ap, token)
        legacy = {
            # handshake-era backends ignore Mcp-Method/Mcp-Name: the body is what runs
            "legacy_spoofed_name_header": (
                legacy_call(http, ap, sid, token, tool_body("echo", {"text": "s"}, 7),
                            {"mcp-method": "tools/call", "mcp-name": "whoami"}),  # fmt: skip
                (403, 400),
            ),
            # bodies Python's json accepts (last duplicate wins, NaN) but a strict parser may not:
            # a proxy that cannot read the body must refuse it, not wave it through unchecked
            "legacy_duplicate_name_key": (legacy_call(http, ap, sid, token, _dup_name_body(False)), (403, 400)),
            "legacy_duplicate_method_key": (legacy_call(http, ap, sid, token, LEGACY_ODD_BODIES["dup_method"]),
                                            (403, 400)),
            "legacy_duplicate_params_key": (legacy_call(http, ap, sid, token, LEGACY_ODD_BODIES["dup_params"]),
                                            (403, 400)),
            "legacy_nan_in_body": (legacy_call(http, ap, sid, token, LEGACY_ODD_BODIES["nan"]), (403, 400)),
            "legacy_unicode_escaped_name": (legacy_call(http, ap, sid, token, _escaped_name_body(False)), (403,)),
        }
        for k, (r, ok) in legacy.items():
            outcomes[k] = (r.status_code, r.text[:200])
    modern = {
        "modern_plain": (modern_call(ap, token, "echo", {"text": "m"}), (403,)),
        # the SDK backend accepts an RFC 2047-style base64 Mcp-Name and runs echo
        "modern_base64_name_header": (modern_call(ap, token, "echo", {"text": "m"}, name_header=b64_echo), (403, 400)),
        "modern_mismatched_name_header": (
            modern_call(ap, token, "echo", {"text": "m"}, name_header="whoami"), (403, 400)),
        "modern_no_name_header": (modern_call(ap, token, "echo", {"text": "m"}, name_header=None), (403, 400)),
        "modern_duplicate_name_key": (
            modern_call(ap, token, name_header="whoami", body=_dup_name_body(True)), (403, 400)),
        "modern_unicode_escaped_name": (modern_call(ap, token, "echo", body=_escaped_name_body(True)), (403,)),
    }  # fmt: skip
    for k, (r, ok) in modern.items():
        outcomes[k] = (r.status_code, r.text[:200])
    expected = {k: ok for k, (_, ok) in {**legacy, **modern}.items()}
    bad = {k: v for k, v in outcomes.items() if v[0] not in expected[k]}
    assert not bad, f"scope rule bypassed or wrong status (expected {expected}): {bad}"


def test_forward_token_and_no_subject_header(scope_proxy, keys):
    """--forward-token passes Authorization through; without --subject-header no
    X-Authenticated-Subject reaches the backend, not even a client-sent one."""
    ap = scope_proxy
    token = rs256(keys["rsa1"])

    async def body():
        headers = {**bearer(token), "X-Authenticated-Subject": "mallory"}
        async with legacy_session(ap.proxy.url, ap.proxy.cafile, headers) as (client, _):
            return json.loads(result_text(await client.call_tool("headers", {})))

    seen = run(body)
    assert seen.get("authorization") == f"Bearer {token}", seen.get("authorization")
    assert "x-authenticated-subject" not in seen, seen.get("x-authenticated-subject")


def test_hs256_shared_secret(scope_proxy, keys):
    ap = scope_proxy
    assert ap.hs_secret
    assert token_accepted(ap, hmac_token(ap.hs_secret, claims(), "HS256")) == 200
    cases = [
        ("wrong secret", hmac_token(b"not-the-secret", claims(), "HS256"), {"bad_signature"}),
        ("rsa pem as secret", hmac_token(keys["rsa1"].public_pem(), claims(), "HS256", kid="rsa1"),
         {"bad_signature", "alg_not_allowed"}),
        ("HS384 with the secret", hmac_token(ap.hs_secret, claims(), "HS384"), {"alg_not_allowed"}),
        ("HS512 with the secret", hmac_token(ap.hs_secret, claims(), "HS512"), {"alg_not_allowed"}),
    ]  # fmt: skip
    for what, token, reasons in cases:
        before = scrape(ap.proxy.admin_url)
        r = modern_call(ap, token)
        assert r.status_code == 401, f"{what}: {r.status_code} {r.text[:200]}"
        check_challenge(ap, r, 401, "invalid_token")
        assert_one_rejection(ap, before, reasons)


def test_verification_cache_counters(scope_proxy, keys):
    ap = scope_proxy
    token = rs256(keys["rsa1"])  # fresh jti: never seen before
    s0 = scrape(ap.proxy.admin_url)
    assert token_accepted(ap, token) == 200
    s1 = wait_metrics(ap, lambda s: bool(diff(verified(s0), verified(s))))
    assert diff(verified(s0), verified(s1)) == {"miss": 1.0}, diff(verified(s0), verified(s1))
    assert token_accepted(ap, token) == 200
    s2 = wait_metrics(ap, lambda s: bool(diff(verified(s1), verified(s))))
    assert diff(verified(s1), verified(s2)) == {"hit": 1.0}, diff(verified(s1), verified(s2))


def test_cached_token_still_expires(scope_proxy, keys):
    """scope_proxy runs with --jwt-leeway 1s: a verified (cached) token must stop working at exp + leeway."""
    ap = scope_proxy
    t = _now()
    token = rs256(keys["rsa1"], now=t, exp=t + 2)
    assert token_accepted(ap, token) == 200
    assert token_accepted(ap, token) == 200
    while time.time() < t + 2 + 1 + 1.2:
        time.sleep(0.1)
    before = scrape(ap.proxy.admin_url)
    r = modern_call(ap, token)
    check_challenge(ap, r, 401, "invalid_token")
    assert_one_rejection(ap, before, {"expired"})


# ---------------------------------------------------------------------------- (e) metadata


@pytest.mark.parametrize("suffix", ["", "/mcp"])
def test_protected_resource_metadata(auth_proxy, suffix):
    ap = auth_proxy
    before = scrape(ap.proxy.admin_url)
    with raw_client(ap.proxy.cafile) as http:
        r = http.get(f"https://{ap.host}/.well-known/oauth-protected-resource{suffix}")
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers.get("content-type")
    doc = r.json()
    assert doc.get("resource") == ap.resource, doc
    assert doc.get("authorization_servers") == [AUTH_SERVER], doc
    assert doc.get("bearer_methods_supported") == ["header"], doc
    scopes = doc.get("scopes_supported")
    assert isinstance(scopes, list) and all(isinstance(s, str) for s in scopes), doc
    after = scrape(ap.proxy.admin_url)
    assert forwarded(after) == forwarded(before), "the metadata request was forwarded to a backend"
    assert not diff(rejections(before), rejections(after))


# ---------------------------------------------------------------------------- (f) key reloads


def _keys_gauge(ap: AuthProxy) -> float | None:
    return metric(scrape(ap.proxy.admin_url), "dpuproxy_auth_keys")


def test_jwks_rotation_add_then_remove(rotating, rot_keys):
    ap, k = rotating, rot_keys
    t1, t2 = rs256(k["rsa1"]), rs256(k["rsa2"])
    assert token_accepted(ap, t1) == 200
    assert _keys_gauge(ap) == 1
    r0 = reloads(scrape(ap.proxy.admin_url))

    write_jwks(ap.jwks_path, [k["rsa1"].jwk(), k["rsa2"].jwk()])  # atomic replace; size changes
    seen = poll_status(ap, t2, 200, RELOAD_WITHIN)
    assert seen[-1] == 200, f"kid rsa2 not accepted within {RELOAD_WITHIN}s of the JWKS change: {seen}"
    assert token_accepted(ap, t1) == 200
    s = wait_metrics(ap, lambda s: metric(s, "dpuproxy_auth_keys") == 2)
    assert metric(s, "dpuproxy_auth_keys") == 2
    assert diff(r0, reloads(s)).get("ok", 0) >= 1, f"reload counters: {r0} -> {reloads(s)}"

    write_jwks(ap.jwks_path, [k["rsa2"].jwk()])
    seen = poll_status(ap, t1, 401, RELOAD_WITHIN)
    assert seen[-1] == 401, f"removed kid rsa1 still accepted {RELOAD_WITHIN}s after the JWKS change: {seen}"
    assert token_accepted(ap, t2) == 200
    s = wait_metrics(ap, lambda s: metric(s, "dpuproxy_auth_keys") == 1)
    assert metric(s, "dpuproxy_auth_keys") == 1
    assert not diff(r0, reloads(scrape(ap.proxy.admin_url))).get("error"), "a good JWKS counted as a reload error"


def test_jwks_poll_sees_new_material_under_same_kid(rotating, rot_keys):
    """Only the file watcher can pick this up: the kid stays known (no unknown-kid refresh)."""
    ap, k = rotating, rot_keys
    old, new = rs256(k["rsa1"]), rs256(k["rsa1b"])
    assert token_accepted(ap, old) == 200
    before = scrape(ap.proxy.admin_url)
    assert token_accepted(ap, new) == 401
    assert_one_rejection(ap, before, {"bad_signature"})

    data = jwks_bytes([k["rsa1b"].jwk()])
    write_atomic(ap.jwks_path, data + b" " * 64)  # new size and new mtime
    seen = poll_status(ap, new, 200, RELOAD_WITHIN)
    assert seen[-1] == 200, f"new key material not used within {RELOAD_WITHIN}s: {seen}"
    assert token_accepted(ap, old) == 401


def test_jwks_sighup_reload(rotating, rot_keys):
    """A change invisible to the mtime/size watcher (same size, old mtime) is loaded on SIGHUP."""
    ap, k = rotating, rot_keys
    t3 = rs256(k["rsa3"])
    before = scrape(ap.proxy.admin_url)
    assert token_accepted(ap, t3) == 401  # unknown kid (this may use up the unknown-kid refresh)
    assert_one_rejection(ap, before, {"unknown_kid"})

    st = os.stat(ap.jwks_path)
    write_jwks(ap.jwks_path, [k["rsa1"].jwk(), k["rsa3"].jwk()], pad_to=JWKS_PAD, mtime_ns=st.st_mtime_ns)
    st2 = os.stat(ap.jwks_path)
    assert (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns), "test bug: size/mtime changed"

    os.kill(ap.proxy.proc.pid, signal.SIGHUP)
    seen = poll_status(ap, t3, 200, RELOAD_WITHIN)
    assert ap.proxy.proc.poll() is None, f"the proxy exited on SIGHUP (status {ap.proxy.proc.poll()})"
    assert seen[-1] == 200, f"kid rsa3 not accepted within {RELOAD_WITHIN}s of SIGHUP: {seen}"
    assert token_accepted(ap, rs256(k["rsa1"])) == 200

    # A SIGHUP with an unchanged file is harmless.
    os.kill(ap.proxy.proc.pid, signal.SIGHUP)
    time.sleep(0.5)
    assert ap.proxy.proc.poll() is None
    assert token_accepted(ap, t3) == 200


def test_jwks_unknown_kid_refresh_is_debounced(rotating, rot_keys):
    """A new kid added without a visible file change (same size, old mtime, no SIGHUP) is found by
    the unknown-kid refresh, which runs at most once per 5 s however many unknown kids arrive."""
    ap, k = rotating, rot_keys
    t4 = rs256(k["rsa4"])
    st = os.stat(ap.jwks_path)
    write_jwks(ap.jwks_path, [k["rsa1"].jwk(), k["rsa4"].jwk()], pad_to=JWKS_PAD, mtime_ns=st.st_mtime_ns)
    r0 = reloads(scrape(ap.proxy.admin_url))
    t0 = time.monotonic()
    seen = poll_status(ap, t4, 200, 12.0)  # > 5 s debounce (+ startup) with margin
    elapsed = time.monotonic() - t0
    assert seen[-1] == 200, f"kid rsa4 never accepted via the unknown-kid refresh within 12 s: {seen}"

    # Hammer unknown kids for ~1 s: the debounce must hold reloads down.
    stranger = rs256(rsa_key("rsa-unknown"))
    t1 = time.monotonic()
    for _ in range(10):
        assert token_accepted(ap, stranger) == 401
    elapsed += time.monotonic() - t1
    r1 = reloads(scrape(ap.proxy.admin_url))
    n = sum(diff(r0, r1).values())
    limit = 1 + math.ceil(elapsed / 5.0)
    assert 1 <= n <= limit, f"{n} key reloads in {elapsed:.1f}s of unknown-kid traffic ({len(seen) + 10} requests)"


def test_jwks_broken_file_keeps_old_keys(rotating, rot_keys):
    ap, k = rotating, rot_keys
    t1, t2 = rs256(k["rsa1"]), rs256(k["rsa2"])
    r0 = reloads(scrape(ap.proxy.admin_url))
    write_atomic(ap.jwks_path, b'{"keys": [ {"kty": "RSA", "kid": "rsa2", "n": ')  # truncated JSON
    s = wait_metrics(ap, lambda s: diff(r0, reloads(s)).get("error", 0) >= 1, timeout=RELOAD_WITHIN)
    assert diff(r0, reloads(s)).get("error", 0) >= 1, f"no reload error counted: {r0} -> {reloads(s)}"
    assert metric(s, "dpuproxy_auth_keys") == 1, "the old key set must stay in force"
    assert token_accepted(ap, t1) == 200
    assert ap.proxy.proc.poll() is None

    write_jwks(ap.jwks_path, [k["rsa1"].jwk(), k["rsa2"].jwk()])
    seen = poll_status(ap, t2, 200, RELOAD_WITHIN)
    assert seen[-1] == 200, f"recovery after a broken JWKS: {seen}"

"""Key, JWKS and token helpers for the dpuproxy OAuth2/JWT e2e tests (tests/e2e/test_auth.py).

Keys are made with `cryptography`, well-formed tokens with PyJWT; deliberately broken tokens
(alg none, HS256 keyed with a public-key PEM, tampered payloads...) are assembled by hand,
because PyJWT refuses to produce them. Also: a tiny raw HTTP/1.1-over-TLS client for requests
no well-behaved HTTP library will send (empty or non-ASCII Authorization values, 70 KB heads),
a WWW-Authenticate parser, and JWKS file writers (atomic replace, fixed size, kept mtime).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import re
import socket
import ssl
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.test"
ISSUER_ALT = "https://issuer-alt.test"
AUDIENCE = "mcp-proxy"
AUDIENCE_ALT = "mcp-proxy-alt"
AUTH_SERVER = "https://auth.test"
SUBJECT = "alice"

RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


# ---------------------------------------------------------------------------- keys


@dataclasses.dataclass
class Key:
    """A private signing key plus what the proxy gets to see of it (PEM or JWK)."""

    kid: str | None
    kty: str  # "RSA" | "EC" | "OKP"
    private: Any

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def jwk(self, alg: str | None = None, use: str | None = "sig") -> dict[str, Any]:
        """Public JWK; `alg` set restricts the key to that algorithm (as the proxy reads JWKS)."""
        conv = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}[self.kty]
        doc = dict(conv.to_jwk(self.public, as_dict=True))
        for k in ("d", "p", "q", "dp", "dq", "qi"):  # paranoia: never publish private parts
            assert k not in doc, f"private JWK member {k} in a public JWK"
        if self.kid is not None:
            doc["kid"] = self.kid
        if alg is not None:
            doc["alg"] = alg
        if use is not None:
            doc["use"] = use
        return doc


def rsa_key(kid: str | None, bits: int = 2048) -> Key:
    return Key(kid, "RSA", rsa.generate_private_key(public_exponent=65537, key_size=bits))


def ec_key(kid: str | None, curve: str = "P-256") -> Key:
    c = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[curve]
    return Key(kid, "EC", ec.generate_private_key(c))


def ed25519_key(kid: str | None) -> Key:
    return Key(kid, "OKP", ed25519.Ed25519PrivateKey.generate())


# ---------------------------------------------------------------------------- JWKS files


def jwks_bytes(jwks: list[dict[str, Any]], pad_to: int | None = None) -> bytes:
    """Serialized {"keys": [...]}; `pad_to` appends JSON whitespace up to exactly that size,
    so successive versions of a file can keep the same size."""
    data = json.dumps({"keys": jwks}, indent=1).encode() + b"\n"
    if pad_to is not None:
        assert len(data) <= pad_to, f"JWKS is {len(data)} bytes, more than pad_to={pad_to}"
        if len(data) < pad_to:
            data += b" " * (pad_to - len(data) - 1) + b"\n"
        assert len(data) == pad_to
    return data


def write_atomic(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    """Write a temp file in the same directory, fsync, then os.replace() it over `path`.
    With `mtime_ns`, the new file gets that modification time before it is renamed in place
    (so a watcher comparing mtime and size sees no change)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_jwks(path: Path, jwks: list[dict[str, Any]], pad_to: int | None = None, mtime_ns: int | None = None) -> None:
    write_atomic(path, jwks_bytes(jwks, pad_to), mtime_ns)


# ---------------------------------------------------------------------------- tokens


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64url_json(doc: dict[str, Any]) -> str:
    """A compact JSON header/payload segment."""
    return b64url(json.dumps(doc, separators=(",", ":")).encode())


def claims(
    *,
    sub: str | None = SUBJECT,
    iss: str | None = ISSUER,
    aud: str | list[str] | None = AUDIENCE,
    scope: str | None = "mcp:echo",
    lifetime: float = 300,
    now: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Standard claims (iat/nbf = now, exp = now + lifetime, a random jti); a value of None drops
    that claim; extra keyword claims are added or override (e.g. exp=..., scp=[...])."""
    t = int(time.time() if now is None else now)
    c: dict[str, Any] = {"iat": t, "nbf": t, "exp": int(t + lifetime), "jti": uuid.uuid4().hex}
    for name, value in (("sub", sub), ("iss", iss), ("aud", aud), ("scope", scope)):
        if value is not None:
            c[name] = value
    for name, value in extra.items():
        if value is None:
            c.pop(name, None)
        else:
            c[name] = value
    return c


_KEY_KID: Any = object()


def sign(key: Key, alg: str, payload: dict[str, Any], kid: str | None = _KEY_KID, **header: Any) -> str:
    """A properly signed JWT (PyJWT). `kid` defaults to the key's kid; pass kid=None for none."""
    h = dict(header)
    k = key.kid if kid is _KEY_KID else kid
    if k is not None:
        h["kid"] = k
    return jwt.encode(payload, key.private, algorithm=alg, headers=h or None)


def assemble(header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> str:
    return f"{b64url_json(header)}.{b64url_json(payload)}.{b64url(signature)}"


def hmac_token(secret: bytes, payload: dict[str, Any], alg: str = "HS256", kid: str | None = None) -> str:
    """HS* token built by hand: PyJWT refuses PEM-looking secrets (the key-confusion attack)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}"
    sig = hmac.new(secret, signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{b64url(sig)}"


def unsigned_token(payload: dict[str, Any], kid: str | None = None, alg: str = "none") -> str:
    """`alg: none` with an empty signature part."""
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return assemble(header, payload, b"")


def tamper_payload(token: str, **changes: Any) -> str:
    """Same header and signature, payload with `changes` applied."""
    h, p, s = token.split(".")
    payload = json.loads(b64url_decode(p))
    payload.update(changes)
    return f"{h}.{b64url_json(payload)}.{s}"


def truncate_signature(token: str, nbytes: int = 3) -> str:
    """Drop the last `nbytes` bytes of the signature and re-encode it (canonical base64url,
    so the signature is well-formed, just too short)."""
    h, p, s = token.split(".")
    return f"{h}.{p}.{b64url(b64url_decode(s)[:-nbytes])}"


# ---------------------------------------------------------------------------- WWW-Authenticate

_AUTH_PARAM = re.compile(r'\s*([A-Za-z0-9_!#$%&\'*+.^`|~-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*(?:,|$)')


def parse_www_authenticate(value: str) -> tuple[str, dict[str, str]]:
    """`Bearer k="v", k2="v2"` -> ("bearer", {"k": "v", "k2": "v2"}). One challenge only;
    fails on anything it cannot parse (so a sloppy header is a test failure)."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _AUTH_PARAM.match(rest, pos)
        assert m and m.end() > pos, f"unparseable WWW-Authenticate {value!r} at {rest[pos:]!r}"
        name = m.group(1).lower()
        assert name not in params, f"duplicate auth-param {name!r} in {value!r}"
        raw = m.group(2) if m.group(2) is not None else m.group(3)
        params[name] = re.sub(r"\\(.)", r"\1", raw)
        pos = m.end()
    return scheme.lower(), params


# ---------------------------------------------------------------------------- raw HTTP over TLS


@dataclasses.dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # lowercased names, in order
    body: bytes

    def header(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k == name.lower()]
        assert len(vals) <= 1, f"header {name} sent {len(vals)} times: {vals}"
        return vals[0] if vals else None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Reader:
    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock, self.buf = sock, b""

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            chunk = b""
        if chunk:
            self.buf += chunk
        return bool(chunk)

    def until(self, sep: bytes, limit: int = 1 << 20) -> bytes:
        while sep not in self.buf:
            assert len(self.buf) < limit, "response head too large"
            if not self._fill():
                raise ConnectionError(f"connection closed before {sep!r} (got {self.buf[:200]!r})")
        out, _, self.buf = self.buf.partition(sep)
        return out

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"connection closed with {n - len(self.buf)} body bytes missing")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self) -> bytes:
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out


def raw_request(
    host: str,
    port: int,
    cafile: str,
    method: str,
    path: str,
    headers: list[tuple[str, str | bytes]],
    body: bytes = b"",
    timeout: float = 10.0,
) -> RawResponse:
    """One HTTP/1.1 request on a fresh TLS connection, header values sent as given (str is
    encoded UTF-8, bytes verbatim). Host and Content-Length are added; Connection: close."""
    lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: {host}:{port}".encode()]
    for k, v in headers:
        lines.append(k.encode("ascii") + b": " + (v if isinstance(v, bytes) else v.encode("utf-8")))
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    data = b"\r\n".join(lines) + b"\r\n\r\n" + body

    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((host, port), timeout=timeout) as tcp:
        with ctx.wrap_socket(tcp, server_hostname=host) as s:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer (431) and close before reading all of a huge head
            r = _Reader(s)
            head = r.until(b"\r\n\r\n").decode("latin-1")
            status_line, *header_lines = head.split("\r\n")
            m = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)", status_line)
            assert m, f"bad status line {status_line!r}"
            hdrs = []
            for line in header_lines:
                k, _, v = line.partition(":")
                hdrs.append((k.strip().lower(), v.strip()))
            resp = RawResponse(int(m.group(1)), m.group(2), hdrs, b"")
            te = (resp.header("transfer-encoding") or "").lower()
            cl = resp.header("content-length")
            if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
                return resp
            if "chunked" in te:
                parts = []
                while True:
                    size = int(r.until(b"\r\n").split(b";")[0].strip(), 16)
                    if size == 0:
                        while r.until(b"\r\n"):  # trailers
                            pass
                        break
                    parts.append(r.exactly(size))
                    r.exactly(2)
                resp.body = b"".join(parts)
            elif cl is not None:
                resp.body = r.exactly(int(cl))
            else:
                resp.body = r.rest()
            return resp

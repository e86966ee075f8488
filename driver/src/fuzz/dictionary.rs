//! What the simulated peers say: the clients' requests (well-formed MCP
//! requests with or without a valid bearer token) and the backends'
//! canned responses, each tagged so that the oracles can tell whose bytes
//! are whose.
//!
//! Tags:
//! - every dictionary request carries `X-Fuzz-Req: c<client>r<n>` (and the
//!   same JSON-RPC id), unique per request;
//! - every backend response body carries `owner-<client>.`, the client
//!   whose slot holds the connection it is written to;
//! - session ids are `sid-<client>-<n>` (never an `owner-` marker, so a
//!   client presenting another client's session id does not excuse a
//!   leak of that client's response bytes).

use dpuproxy_l7::auth::{AuthConfig, Authenticator, KeyEntry};

/// The HS256 secret every fuzz token is signed with.
pub const SECRET: &[u8] = b"dpuproxy-fuzz-hs256-secret-not-for-production";

/// The wall clock of the simulation, in ms since 1970 (November 2027),
/// before every valid token's `exp` and after the expired one's.
pub const WALL_MS: u64 = 1_826_000_000_000;

/// Valid tokens, one per client: HS256 over `SECRET`, claims
/// `{"sub":"client-<i>","exp":4102444800}` (2100-01-01).
pub const VALID_TOKENS: [&str; 4] = [
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjbGllbnQtMCIsImV4cCI6NDEwMjQ0NDgwMH0.C6kIIh4lk1pb78sls9q1Tmcv99ydfdWfOUXNvX4emo8",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjbGllbnQtMSIsImV4cCI6NDEwMjQ0NDgwMH0._WNrJiuhoBvE2RLiLLq_1JfWWYZJBvZgWa2LfgS2INw",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjbGllbnQtMiIsImV4cCI6NDEwMjQ0NDgwMH0.7Gzf2mr2g0vQ7RyS-F04vTsHu6DhMgZj_ITggRLE9mo",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjbGllbnQtMyIsImV4cCI6NDEwMjQ0NDgwMH0.StGs4_qEi7RHbWmXXhkOXzh44WeCmbBepB7bZm-Cnso",
];

/// Signed with `SECRET`, `{"sub":"client-0","exp":1700000000}`: expired.
pub const EXPIRED_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjbGllbnQtMCIsImV4cCI6MTcwMDAwMDAwMH0.Plk0iuHsRYlJmysgZBWKmEvMnNmX7EFzUCKrtYARjwc";

/// Client 0's claims with a signature made with another secret.
pub const FORGED_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjbGllbnQtMCIsImV4cCI6NDEwMjQ0NDgwMH0.Bykv7FlVO3x4adPjUCpOfVIXrJS1tVvEadbY6lu3Roo";

/// Most clients a script has (one valid token each).
pub const MAX_CLIENTS: usize = VALID_TOKENS.len();

/// The subject of client `c`'s valid token.
pub fn subject(c: usize) -> String {
    format!("client-{c}")
}

/// The marker in every response body written for client `c`.
pub fn owner_marker(c: usize) -> String {
    format!("owner-{c}.")
}

/// The resource server of the simulation: `SECRET` only, the subject
/// forwarded to backends (the auth oracle reads it there), a small cache.
pub fn authenticator() -> Authenticator {
    let config = AuthConfig {
        subject_header: true,
        cache_capacity: 16,
        ..AuthConfig::default()
    };
    Authenticator::new(config, vec![KeyEntry::hs256_secret(SECRET, "fuzz")])
}

/// Number of request kinds in the dictionary.
pub const REQUEST_KINDS: u8 = 16;

/// Named request kinds (the dictionary index modulo [`REQUEST_KINDS`]).
pub mod kind {
    /// `initialize`, valid token.
    pub const INIT: u8 = 0;
    /// `initialize` without a token.
    pub const INIT_NO_TOKEN: u8 = 1;
    /// `initialize` with an expired token.
    pub const INIT_EXPIRED: u8 = 2;
    /// `initialize` with a forged signature.
    pub const INIT_FORGED: u8 = 3;
    /// `tools/call` in the client's latest session, valid token.
    pub const CALL: u8 = 4;
    /// `tools/call` in the client's latest session, no token.
    pub const CALL_NO_TOKEN: u8 = 5;
    /// GET (SSE stream) in the client's latest session, valid token.
    pub const SSE: u8 = 6;
    /// DELETE of the client's latest session, valid token.
    pub const DELETE: u8 = 7;
    /// Stateless 2026-07-28 `tools/call` with `Mcp-Method`/`Mcp-Name`.
    pub const STATELESS: u8 = 8;
    /// Stateless request whose `Mcp-Method` contradicts its body.
    pub const STATELESS_MISMATCH: u8 = 9;
    /// The protected-resource metadata (no token needed).
    pub const METADATA: u8 = 10;
    /// A notification in the client's latest session (backends say 202).
    pub const NOTIFY: u8 = 11;
    /// `tools/call` in another client's session, with this client's token.
    pub const FOREIGN_SESSION: u8 = 12;
    /// Two `Authorization` fields, both valid.
    pub const DOUBLE_AUTH: u8 = 13;
    /// `initialize` with `Connection: close`, valid token.
    pub const INIT_CLOSE: u8 = 14;
    /// `tools/call` over HTTP/1.0, valid token.
    pub const CALL_HTTP10: u8 = 15;
}

/// A request of kind `k` (modulo [`REQUEST_KINDS`]) by client `c`, tagged
/// `tag`, in session `session` where it needs one, with its authorization.
/// Returns the bytes and whether it carries exactly one valid token.
pub fn request(k: u8, c: usize, tag: &str, session: &str) -> (Vec<u8>, bool) {
    let token = VALID_TOKENS[c % MAX_CLIENTS];
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    let valid = bearer(token);
    let sid = format!("Mcp-Session-Id: {session}\r\n");
    let init = jsonrpc(
        tag,
        "initialize",
        r#"{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"fuzz","version":"1"}}"#,
    );
    let call = jsonrpc(
        tag,
        "tools/call",
        r#"{"name":"echo","arguments":{"text":"hi"}}"#,
    );
    let k = k % REQUEST_KINDS;
    let (text, authorized) = match k {
        kind::INIT => (post(tag, &valid, &init), true),
        kind::INIT_NO_TOKEN => (post(tag, "", &init), false),
        kind::INIT_EXPIRED => (post(tag, &bearer(EXPIRED_TOKEN), &init), false),
        kind::INIT_FORGED => (post(tag, &bearer(FORGED_TOKEN), &init), false),
        kind::CALL | kind::FOREIGN_SESSION => (post(tag, &(valid + &sid), &call), true),
        kind::CALL_NO_TOKEN => (post(tag, &sid, &call), false),
        kind::SSE => (
            bodiless(
                "GET",
                tag,
                &(valid + &sid + "Accept: text/event-stream\r\n"),
            ),
            true,
        ),
        kind::DELETE => (bodiless("DELETE", tag, &(valid + &sid)), true),
        kind::STATELESS | kind::STATELESS_MISMATCH => {
            let method = if k == kind::STATELESS {
                "tools/call"
            } else {
                "tools/list"
            };
            let fields = format!(
                "{valid}MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: {method}\r\nMcp-Name: echo\r\n"
            );
            (post(tag, &fields, &call), true)
        }
        kind::METADATA => (
            format!(
                "GET /.well-known/oauth-protected-resource HTTP/1.1\r\nHost: proxy\r\nX-Fuzz-Req: {tag}\r\n\r\n"
            ),
            false,
        ),
        kind::NOTIFY => {
            let body = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
            (post(tag, &(valid + &sid), body), true)
        }
        kind::DOUBLE_AUTH => (post(tag, &(valid.clone() + &valid), &init), false),
        kind::INIT_CLOSE => (post(tag, &(valid + "Connection: close\r\n"), &init), true),
        _ => {
            let text = post(tag, &(valid + &sid), &call).replacen("HTTP/1.1", "HTTP/1.0", 1);
            (text, true)
        }
    };
    (text.into_bytes(), authorized)
}

fn jsonrpc(tag: &str, method: &str, params: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":"{tag}","method":"{method}","params":{params}}}"#)
}

fn post(tag: &str, fields: &str, body: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nX-Fuzz-Req: {tag}\r\n{fields}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn bodiless(method: &str, tag: &str, fields: &str) -> String {
    format!("{method} /mcp HTTP/1.1\r\nHost: proxy\r\nX-Fuzz-Req: {tag}\r\n{fields}\r\n")
}

/// Number of canned responses.
pub const RESPONSE_KINDS: u8 = 12;

/// Named responses (the index modulo [`RESPONSE_KINDS`]).
pub mod response {
    /// 200 JSON with a new `Mcp-Session-Id`.
    pub const SESSION: u8 = 0;
    /// 200 JSON.
    pub const JSON: u8 = 1;
    /// 200 SSE head and a first event.
    pub const SSE_HEAD: u8 = 2;
    /// One more SSE event (a chunk).
    pub const SSE_EVENT: u8 = 3;
    /// The last chunk of a chunked body.
    pub const SSE_END: u8 = 4;
    /// 404 (unknown session).
    pub const NOT_FOUND: u8 = 5;
    /// 202 with no body.
    pub const ACCEPTED: u8 = 6;
    /// A body cut short, then FIN.
    pub const CUT: u8 = 7;
    /// Not HTTP.
    pub const GARBAGE: u8 = 8;
    /// 200 JSON in two chunks.
    pub const CHUNKED: u8 = 9;
    /// 500.
    pub const ERROR: u8 = 10;
    /// 200 delimited by the connection's end, then FIN.
    pub const UNTIL_CLOSE: u8 = 11;
}

/// A canned response of kind `r` written for client `c`; `session` is the
/// id a [`response::SESSION`] announces. Returns the bytes and whether the
/// backend closes the connection after them.
pub fn response(r: u8, c: usize, session: &str) -> (Vec<u8>, bool) {
    let owner = owner_marker(c);
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"owner":"{owner}"}}}}"#);
    let json = |status: &str, extra: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let event = |n: &str| chunk(&format!("event: message\ndata: {owner} {n}\n\n"));
    let (text, close) = match r % RESPONSE_KINDS {
        response::SESSION => (
            json("200 OK", &format!("mcp-session-id: {session}\r\n")),
            false,
        ),
        response::JSON => (json("200 OK", ""), false),
        response::SSE_HEAD => (
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{}",
                event("first")
            ),
            false,
        ),
        response::SSE_EVENT => (event("next"), false),
        response::SSE_END => ("0\r\n\r\n".to_string(), false),
        response::NOT_FOUND => (json("404 Not Found", ""), false),
        response::ACCEPTED => (
            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_string(),
            false,
        ),
        response::CUT => (
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{body}"
            ),
            true,
        ),
        response::GARBAGE => (format!("HTTP/1.1 2x0 {owner}\r\n\0\r\n\r\n"), false),
        response::CHUNKED => {
            let (a, b) = body.split_at(body.len() / 2);
            (
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{}{}0\r\n\r\n",
                    chunk(a),
                    chunk(b)
                ),
                false,
            )
        }
        response::ERROR => (json("500 Internal Server Error", ""), false),
        _ => (
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{body}"),
            true,
        ),
    };
    (text.into_bytes(), close)
}

fn chunk(s: &str) -> String {
    format!("{:x}\r\n{s}\r\n", s.len())
}

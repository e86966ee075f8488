//! Fuzz target for the JSON-RPC sniffing and MCP route classification
//! ([`jsonrpc_calls`], [`classify_parsed`]).
//!
//! Input: byte 0 selects a set of MCP headers (low three bits, see
//! [`headers_for`]) and the request method (bit 3: GET, else POST); the
//! bytes up to the first LF are the value those headers take (an empty line:
//! the header is absent); the rest is the request body.
//!
//! Invariants (a violation is a finding):
//! - the calls [`jsonrpc_calls`] reads equal what a plain
//!   `serde_json::Value` reading of the body holds: one object, or an array
//!   of objects, whose `method` is a string or null and whose `params` is an
//!   object or null; each call's method and `params.name` (when a string)
//!   are the value's own. A body that is not such JSON reads as `None`, and
//!   such JSON without repeated keys never does;
//! - a route only names what the request holds: `initialize` only when the
//!   body's first message says so; a session id only when the header
//!   carries exactly it; a stateless method only from `Mcp-Method` or the
//!   body; a method mismatch only when header and body really differ.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::Seed;
use crate::http::{Header, Headers};
use crate::mcp::{Call, McpError, Route, classify_parsed, first_method, jsonrpc_calls};

/// What a run saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpOutcome {
    /// The body read as JSON-RPC: the number of calls.
    pub calls: Option<usize>,
    /// The route, or why the request was refused.
    pub route: Result<Route, McpError>,
}

/// The fuzz target. Panics on a finding.
pub fn mcp(data: &[u8]) -> McpOutcome {
    let (selector, rest) = data.split_first().map_or((0, &[][..]), |(s, r)| (*s, r));
    let (value, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (Some(&rest[..i]).filter(|v| !v.is_empty()), &rest[i + 1..]),
        None => (None, rest),
    };
    let headers = headers_for(selector, value);
    let post = selector & 8 == 0;
    let calls = if post { jsonrpc_calls(body) } else { None };
    if post {
        check_calls(body, calls.as_deref());
    }
    let route = classify_parsed(&headers, first_method(calls.as_deref()));
    let body_method = calls.as_ref().and_then(|_| reference_first_method(body));
    check_route(&headers, body_method.as_deref(), &route);
    McpOutcome {
        calls: calls.map(|c| c.len()),
        route,
    }
}

/// The header sets byte 0 selects; `value` is the fuzzed value (absent
/// when `None`).
pub fn headers_for(selector: u8, value: Option<&[u8]>) -> Headers {
    let mut out = Headers::new();
    match selector & 7 {
        3 | 5 | 7 => out.push("MCP-Protocol-Version", b"2026-07-28"),
        4 => out.push("MCP-Protocol-Version", b"2025-06-18"),
        6 => out.push("Mcp-Session-Id", b"s-1"),
        _ => {}
    }
    let name = match selector & 7 {
        0 => return out,
        2 => "MCP-Protocol-Version",
        3 => "Mcp-Method",
        5 => "Mcp-Name",
        _ => "Mcp-Session-Id",
    };
    if let Some(v) = value {
        out.push(name, v);
    }
    out
}

/// The calls a body holds as a `serde_json::Value` sees it, `None` when it
/// is not JSON-RPC shaped (see the module docs).
fn reference_calls(body: &[u8]) -> Option<Vec<Call<'static>>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let call = |m: &Value| -> Option<Call<'static>> {
        let m = m.as_object()?;
        let method = match m.get("method") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return None,
        };
        let name = match m.get("params") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => p.get("name").and_then(Value::as_str).map(str::to_string),
            Some(_) => return None,
        };
        Some(Call {
            method: method.map(Cow::Owned),
            name: name.map(Cow::Owned),
        })
    };
    match &value {
        Value::Array(items) => items.iter().map(call).collect(),
        one => Some(vec![call(one)?]),
    }
}

fn check_calls(body: &[u8], calls: Option<&[Call]>) {
    let reference = reference_calls(body);
    match (calls, &reference) {
        (Some(ours), Some(theirs)) => assert_eq!(ours, theirs.as_slice(), "calls differ"),
        (Some(ours), None) => panic!("read {ours:?} from a body that is not JSON-RPC shaped"),
        (None, Some(theirs)) => assert!(
            repeats_a_key(body),
            "JSON-RPC body without repeated keys not read: {theirs:?}"
        ),
        (None, None) => {}
    }
}

/// The first message's method per the reference reading (used only where
/// the production reader read the body, and the two were checked equal).
fn reference_first_method(body: &[u8]) -> Option<String> {
    reference_calls(body)?
        .into_iter()
        .next()?
        .method
        .map(Cow::into_owned)
}

/// A header's value as the classifier reads it (lossy, trimmed).
fn header_text(headers: &Headers, name: &str) -> Option<String> {
    crate::http::header(headers, name).map(|v| String::from_utf8_lossy(v).trim().to_string())
}

fn check_route(headers: &Headers, body_method: Option<&str>, route: &Result<Route, McpError>) {
    let sessions: Vec<Header<'_>> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("mcp-session-id"))
        .collect();
    let header_method = header_text(headers, "mcp-method");
    match route {
        Ok(Route::NewSession { initialize }) => {
            assert!(sessions.is_empty(), "new session despite a session id");
            assert_eq!(*initialize, body_method == Some("initialize"));
        }
        Ok(Route::Session { id }) => {
            assert_eq!(sessions.len(), 1, "session route with {sessions:?}");
            assert_eq!(id.as_bytes(), sessions[0].value);
        }
        Ok(Route::Stateless { method, name }) => {
            assert!(sessions.is_empty(), "stateless route despite a session id");
            let want = header_method.clone().or(body_method.map(str::to_string));
            assert_eq!(method, &want, "stateless method");
            assert_eq!(name, &header_text(headers, "mcp-name"));
        }
        Err(McpError::MethodMismatch { header, body }) => {
            assert_eq!(Some(header), header_method.as_ref());
            assert_eq!(Some(body.as_str()), body_method);
            assert_ne!(header, body);
        }
        Err(McpError::DuplicateSessionId) => assert!(sessions.len() > 1),
        Err(McpError::StraySessionId(_)) => assert!(!sessions.is_empty()),
        Err(McpError::BadSessionId | McpError::BadVersion(_)) => {}
    }
}

/// Whether some JSON object in `body` repeats a key (a `Value` keeps only
/// the last, which is why the production reader refuses such bodies).
fn repeats_a_key(body: &[u8]) -> bool {
    serde_json::from_slice::<Repeats>(body).is_ok_and(|r| r.0)
}

/// Walks any JSON document; true when an object repeats a key.
struct Repeats(bool);

impl<'de> Deserialize<'de> for Repeats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RepeatsVisitor)
    }
}

struct RepeatsVisitor;

impl<'de> Visitor<'de> for RepeatsVisitor {
    type Value = Repeats;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_str<E>(self, _: &str) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_unit<E>(self) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Repeats, A::Error> {
        let mut repeats = false;
        while let Some(Repeats(r)) = seq.next_element()? {
            repeats |= r;
        }
        Ok(Repeats(repeats))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Repeats, A::Error> {
        let mut keys = HashSet::new();
        let mut repeats = false;
        while let Some(key) = map.next_key::<String>()? {
            repeats |= !keys.insert(key);
            let Repeats(r) = map.next_value()?;
            repeats |= r;
        }
        Ok(Repeats(repeats))
    }
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"fuzz","version":"1"}}}"#;
const CALL: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;

/// A seed: selector, header value line, body.
fn seed(name: &str, selector: u8, value: &str, body: &str) -> Seed {
    Seed::new(
        name,
        [&[selector][..], value.as_bytes(), b"\n", body.as_bytes()].concat(),
    )
}

/// The committed seeds: initialize, tool calls, batches, notifications,
/// responses, garbage, under each header set.
pub fn seeds() -> Vec<Seed> {
    let (init, call) = (INIT, CALL);
    let batch = r#"[{"jsonrpc":"2.0","id":3,"method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#;
    let mut seeds = vec![
        seed("initialize", 0, "", init),
        seed("initialize-in-batch", 0, "", &format!("[{init}]")),
        seed("tools-call-session", 1, "3f2a9c-session", call),
        seed("session-not-ascii", 1, "caf\u{e9}", call),
        seed("version-handshake", 2, "2025-03-26", init),
        seed("version-bad", 2, "2025-6-18", init),
        seed("version-too-old", 2, "2024-01-01", init),
        seed("stateless-method-agrees", 3, "tools/call", call),
        seed("stateless-method-mismatch", 3, "tools/list", call),
        seed("stateless-method-padded", 3, " tools/call\t", call),
        seed("handshake-session-batch", 4, "abc", batch),
        seed("stateless-name", 5, "echo", call),
        seed("duplicate-session", 6, "s-2", call),
        seed("stray-session", 7, "s-1", call),
        seed("stateless-no-method-header", 7, "", call),
        seed("get-with-session", 8 | 1, "abc", ""),
        seed("get-stateless", 8 | 3, "tools/list", "ignored"),
    ];
    seeds.extend(body_seeds());
    seeds
}

/// Bodies that are not plain JSON-RPC requests, or not JSON at all.
fn body_seeds() -> Vec<Seed> {
    let notification =
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2}}"#;
    let response = r#"{"jsonrpc":"2.0","id":9,"result":{"content":[]}}"#;
    vec![
        seed("notification", 0, "", notification),
        seed("response", 0, "", response),
        seed("empty-batch", 0, "", "[]"),
        seed(
            "duplicate-method",
            0,
            "",
            r#"{"method":"x","method":"initialize"}"#,
        ),
        seed(
            "duplicate-name",
            5,
            "",
            r#"{"method":"tools/call","params":{"name":"a","name":"b"}}"#,
        ),
        seed(
            "name-not-string",
            0,
            "",
            r#"{"method":"tools/call","params":{"name":7}}"#,
        ),
        seed("method-null", 0, "", r#"{"method":null,"params":null}"#),
        seed("method-number", 0, "", r#"{"method":1}"#),
        seed(
            "params-array",
            0,
            "",
            r#"{"method":"tools/call","params":["echo"]}"#,
        ),
        seed("message-array", 0, "", r#"["initialize", null]"#),
        seed(
            "batch-of-arrays",
            3,
            "tools/call",
            r#"[["tools/call", {"name": "echo"}]]"#,
        ),
        seed("escaped-method", 0, "", r#"{"method":"initiali\u007ae"}"#),
        seed("not-json", 0, "", "initialize"),
        seed("truncated", 0, "", &INIT[..40]),
        seed("nan", 0, "", r#"{"id": NaN}"#),
        seed(
            "deep",
            0,
            "",
            &format!("{}{}", "[".repeat(130), "]".repeat(130)),
        ),
        seed("string-body", 0, "", r#""initialize""#),
    ]
}

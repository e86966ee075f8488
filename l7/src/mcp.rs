//! MCP request classification: protocol era, session ids, JSON-RPC sniffing.
//!
//! Contract: [`classify_parsed`] looks at a complete request (its head, and
//! the method of the body's first JSON-RPC message from [`jsonrpc_calls`])
//! and says how it must be routed, or why it must be refused. It never
//! guesses: a malformed version, session id or header/body disagreement is
//! an error the caller answers with 400.

use std::borrow::Cow;

use crate::http::{Headers, header, header_count};

/// The first stateless revision (no initialize, no session id).
pub const STATELESS_REVISION: &str = "2026-07-28";
/// The first handshake-era revision we recognise.
pub const OLDEST_REVISION: &str = "2024-11-05";

/// Which protocol family a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// `initialize` + `Mcp-Session-Id` (2024-11-05 to 2025-11-25, or no
    /// version header at all).
    Handshake,
    /// Stateless per request (2026-07-28 and later).
    Stateless,
}

/// How the proxy must route one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A handshake-era request without a session id: next healthy backend
    /// round-robin; a session id in the response is learned.
    NewSession {
        /// The JSON-RPC body is an `initialize` request.
        initialize: bool,
    },
    /// A handshake-era request for an existing session.
    Session {
        /// The client's `Mcp-Session-Id`.
        id: String,
    },
    /// A stateless request: least outstanding requests, no binding.
    Stateless {
        /// `Mcp-Method` header (or the body's method when the header is absent).
        method: Option<String>,
        /// `Mcp-Name` header.
        name: Option<String>,
    },
}

/// Why a request cannot be classified (all answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    /// `MCP-Protocol-Version` is not a `YYYY-MM-DD` date we can place.
    #[error("unsupported MCP-Protocol-Version {0:?}")]
    BadVersion(String),
    /// The session id has bytes outside visible ASCII 0x21-0x7E.
    #[error("Mcp-Session-Id must be visible ASCII (0x21-0x7E)")]
    BadSessionId,
    /// More than one `Mcp-Session-Id` field.
    #[error("more than one Mcp-Session-Id")]
    DuplicateSessionId,
    /// A stateless (2026-07-28) request carried a session id.
    #[error("Mcp-Session-Id is not allowed with MCP-Protocol-Version {0}")]
    StraySessionId(String),
    /// `Mcp-Method` disagrees with the JSON-RPC body.
    #[error("Mcp-Method {header:?} does not match the body method {body:?}")]
    MethodMismatch {
        /// Header value.
        header: String,
        /// Body method.
        body: String,
    },
}

/// The header that carries the session id.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// Longest session id a backend may issue (MCP ids are short; a client
/// could never send back one near the head limit, and each bound id costs
/// its length in the affinity table).
pub const MAX_SESSION_ID: usize = crate::seal::MAX_INNER;

/// Validate a session id: non-empty, visible ASCII only.
pub fn valid_session_id(id: &[u8]) -> bool {
    !id.is_empty() && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

fn is_date(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Determine the era from `MCP-Protocol-Version`.
pub fn era(headers: &Headers) -> Result<Era, McpError> {
    let Some(v) = header(headers, "mcp-protocol-version") else {
        return Ok(Era::Handshake);
    };
    let v = std::str::from_utf8(v)
        .map_err(|_| McpError::BadVersion(String::from_utf8_lossy(v).into_owned()))?
        .trim();
    if !is_date(v) || v < OLDEST_REVISION {
        return Err(McpError::BadVersion(v.to_string()));
    }
    // ISO dates compare correctly as strings.
    Ok(if v >= STATELESS_REVISION {
        Era::Stateless
    } else {
        Era::Handshake
    })
}

/// One JSON-RPC message's method and `params.name`, as routing and scope
/// rules see them; borrowed from the body unless JSON escapes had to be
/// undone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Call<'a> {
    /// `method`.
    pub method: Option<Cow<'a, str>>,
    /// `params.name` (tool or prompt name), when a string.
    pub name: Option<Cow<'a, str>>,
}

/// Every message of a JSON-RPC body (one object, or each element of a
/// batch), or `None` when the body is not JSON-RPC we can read (including
/// duplicate keys, which other parsers resolve differently, and messages or
/// `params` that are arrays, which serde would read by position). Routing
/// lets the backend report such bodies; scope checks must refuse them.
pub fn jsonrpc_calls(body: &[u8]) -> Option<Vec<Call<'_>>> {
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        name: Option<StringOrOther<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        method: Option<Text<'a>>,
        #[serde(borrow)]
        params: Option<ObjectOnly<Params<'a>>>,
    }
    fn to_call(ObjectOnly(m): ObjectOnly<Msg<'_>>) -> Call<'_> {
        Call {
            method: m.method.map(|Text(t)| t),
            name: m
                .params
                .and_then(|ObjectOnly(p)| p.name)
                .and_then(|StringOrOther(n)| n),
        }
    }
    // The first byte decides between one message and a batch, so that
    // serde reads the body once, straight into the types (an untagged
    // enum would buffer the whole body first to try each reading).
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice::<ObjectOnly<Msg>>(body)
            .ok()
            .map(|m| vec![to_call(m)]),
        Some(b'[') => serde_json::from_slice::<Vec<ObjectOnly<Msg>>>(body)
            .ok()
            .map(|v| v.into_iter().map(to_call).collect()),
        _ => None,
    }
}

/// A JSON string, borrowed unless it had escapes; any other value is an
/// error. (serde's own `Cow<str>` always copies inside an `Option`.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StringOrOther::deserialize(d)? {
            StringOrOther(Some(t)) => Ok(Text(t)),
            StringOrOther(None) => Err(serde::de::Error::custom("expected a string")),
        }
    }
}

/// Any JSON value, kept only when it is a string (borrowed unless it had
/// escapes); any other value is read past and gives `None`.
struct StringOrOther<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for StringOrOther<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AnyValue<'a>(std::marker::PhantomData<&'a str>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for AnyValue<'a> {
            type Value = StringOrOther<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StringOrOther(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringOrOther(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(StringOrOther(Some(Cow::Owned(v))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(StringOrOther(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(StringOrOther(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(StringOrOther(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(StringOrOther(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(StringOrOther(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(StringOrOther(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(StringOrOther(None))
            }
        }
        d.deserialize_any(AnyValue(std::marker::PhantomData))
    }
}

/// A `T` read from a JSON object only. Derived struct readers also take an
/// array and read its elements as the fields in order, so
/// `["initialize"]` would pass for `{"method":"initialize"}`: a reading no
/// JSON-RPC peer shares.
struct ObjectOnly<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

fn header_string(headers: &Headers, name: &str) -> Option<String> {
    header(headers, name).map(|v| String::from_utf8_lossy(v).trim().to_string())
}

/// The method of the first message of already-parsed calls.
pub fn first_method<'a>(calls: Option<&'a [Call<'_>]>) -> Option<&'a str> {
    calls?.first()?.method.as_deref()
}

/// Whether [`classify_parsed`] needs the body's first method for these
/// headers: not for a handshake-era request that names its session (it
/// goes to the session's backend whatever it calls), so such a body need
/// not be parsed unless scope rules read it.
pub fn body_decides_route(headers: &Headers) -> bool {
    !matches!(era(headers), Ok(Era::Handshake)) || header(headers, SESSION_HEADER).is_none()
}

/// Classify a complete request for routing. The caller parses the body
/// once with [`jsonrpc_calls`] (scope checks need it too): `body_method` is
/// the first message's method, `None` for non-POST or unreadable bodies.
pub fn classify_parsed(headers: &Headers, body_method: Option<&str>) -> Result<Route, McpError> {
    let era = era(headers)?;
    let sessions = header_count(headers, SESSION_HEADER);
    if sessions > 1 {
        return Err(McpError::DuplicateSessionId);
    }
    let session = header(headers, SESSION_HEADER);
    if let Some(id) = session
        && !valid_session_id(id)
    {
        return Err(McpError::BadSessionId);
    }
    match era {
        Era::Stateless => {
            if session.is_some() {
                let v = header_string(headers, "mcp-protocol-version").unwrap_or_default();
                return Err(McpError::StraySessionId(v));
            }
            let header_method = header_string(headers, "mcp-method");
            if let (Some(h), Some(b)) = (&header_method, body_method)
                && h != b
            {
                return Err(McpError::MethodMismatch {
                    header: h.clone(),
                    body: b.to_string(),
                });
            }
            Ok(Route::Stateless {
                method: header_method.or_else(|| body_method.map(str::to_string)),
                name: header_string(headers, "mcp-name"),
            })
        }
        Era::Handshake => match session {
            Some(id) => Ok(Route::Session {
                // Validated as visible ASCII above, so this is lossless.
                id: String::from_utf8_lossy(id).into_owned(),
            }),
            None => Ok(Route::NewSession {
                initialize: body_method == Some("initialize"),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    /// The request as the connection classifies it: the body is read as
    /// JSON-RPC for POST only.
    fn classify(method: &str, headers: &Headers, body: &[u8]) -> Result<Route, McpError> {
        let calls = if method == "POST" {
            jsonrpc_calls(body)
        } else {
            None
        };
        classify_parsed(headers, first_method(calls.as_deref()))
    }

    const INIT: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;

    #[test]
    fn eras() {
        assert_eq!(era(&h(&[])).unwrap(), Era::Handshake);
        for v in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
            assert_eq!(
                era(&h(&[("MCP-Protocol-Version", v)])).unwrap(),
                Era::Handshake
            );
        }
        assert_eq!(
            era(&h(&[("mcp-protocol-version", "2026-07-28")])).unwrap(),
            Era::Stateless
        );
        for bad in ["2024-01-01", "latest", "2025-6-18", ""] {
            assert!(era(&h(&[("MCP-Protocol-Version", bad)])).is_err(), "{bad}");
        }
    }

    #[test]
    fn initialize_is_new_session() {
        assert_eq!(
            classify("POST", &h(&[]), INIT).unwrap(),
            Route::NewSession { initialize: true }
        );
        assert_eq!(
            classify("POST", &h(&[]), b"not json").unwrap(),
            Route::NewSession { initialize: false }
        );
    }

    #[test]
    fn session_ids_are_visible_ascii() {
        assert_eq!(
            classify("GET", &h(&[("Mcp-Session-Id", "abc-123")]), b"").unwrap(),
            Route::Session {
                id: "abc-123".into()
            }
        );
        for bad in ["a b", "\u{e9}t\u{e9}", "a\tb"] {
            assert_eq!(
                classify("GET", &h(&[("Mcp-Session-Id", bad)]), b"").unwrap_err(),
                McpError::BadSessionId
            );
        }
        assert_eq!(
            classify(
                "GET",
                &h(&[("Mcp-Session-Id", "a"), ("mcp-session-id", "b")]),
                b""
            )
            .unwrap_err(),
            McpError::DuplicateSessionId
        );
    }

    #[test]
    fn stateless_rules() {
        let body = br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}"#;
        let ok = classify(
            "POST",
            &h(&[
                ("MCP-Protocol-Version", "2026-07-28"),
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", "echo"),
            ]),
            body,
        )
        .unwrap();
        assert_eq!(
            ok,
            Route::Stateless {
                method: Some("tools/call".into()),
                name: Some("echo".into())
            }
        );
        assert!(matches!(
            classify(
                "POST",
                &h(&[
                    ("MCP-Protocol-Version", "2026-07-28"),
                    ("Mcp-Method", "tools/list")
                ]),
                body
            ),
            Err(McpError::MethodMismatch { .. })
        ));
        assert!(matches!(
            classify(
                "POST",
                &h(&[
                    ("MCP-Protocol-Version", "2026-07-28"),
                    ("Mcp-Session-Id", "x")
                ]),
                body
            ),
            Err(McpError::StraySessionId(_))
        ));
    }

    #[test]
    fn duplicate_keys_are_unreadable() {
        assert_eq!(
            jsonrpc_calls(br#"{"method":"tools/call","params":{"name":"whoami","name":"echo"}}"#),
            None
        );
        assert_eq!(
            jsonrpc_calls(br#"{"method":"x","method":"tools/call"}"#),
            None
        );
        assert_eq!(jsonrpc_calls(b"{\"id\": NaN}"), None);
    }

    #[test]
    fn arrays_are_not_messages_or_params() {
        // Found by the mcp fuzz target: serde read an array as a message
        // (or as params) by position, so the proxy routed and scope-checked
        // a call no JSON-RPC server would see.
        assert_eq!(jsonrpc_calls(br#"["initialize", null]"#), None);
        assert_eq!(
            jsonrpc_calls(br#"[["tools/call", {"name": "echo"}]]"#),
            None
        );
        assert_eq!(
            jsonrpc_calls(br#"{"method":"tools/call","params":["echo"]}"#),
            None
        );
        let ok = jsonrpc_calls(br#"{"method":"tools/call","params":{"name":"echo"}}"#);
        assert_eq!(
            ok,
            Some(vec![Call {
                method: Some("tools/call".into()),
                name: Some("echo".into())
            }])
        );
        assert_eq!(
            first_method(jsonrpc_calls(br#"[{"method":"initialize"}]"#).as_deref()),
            Some("initialize")
        );
    }

    #[test]
    fn names_are_strings_borrowed_unless_escaped_and_other_values_are_skipped() {
        let calls = jsonrpc_calls(
            br#"[{"method":"tools/call","params":{"name":"echo"}},
                {"method":"tools\/call","params":{"name":"e\u0063ho","arguments":{"x":[1]}}},
                {"method":"tools/call","params":{"name":{"nested":["a",{"b":null}]}}},
                {"method":"tools/call","params":{"name":[1,"two"]}},
                {"method":"tools/call","params":{"name":7}},
                {"method":null,"params":{"name":null}}]"#,
        )
        .expect("a readable batch");
        let seen: Vec<(Option<&str>, Option<&str>, bool)> = calls
            .iter()
            .map(|c| {
                let borrowed = matches!(c.name, Some(Cow::Borrowed(_)));
                (c.method.as_deref(), c.name.as_deref(), borrowed)
            })
            .collect();
        assert_eq!(
            seen,
            [
                (Some("tools/call"), Some("echo"), true),
                (Some("tools/call"), Some("echo"), false),
                (Some("tools/call"), None, false),
                (Some("tools/call"), None, false),
                (Some("tools/call"), None, false),
                (None, None, false),
            ]
        );
        // Methods are borrowed too unless escaped.
        let methods: Vec<bool> = calls
            .iter()
            .map(|c| matches!(c.method, Some(Cow::Borrowed(_))))
            .collect();
        assert_eq!(methods, [true, false, true, true, true, false]);
        // A message whose method is not a string is not JSON-RPC we read.
        assert_eq!(jsonrpc_calls(br#"{"method":1}"#), None);
        assert_eq!(jsonrpc_calls(br#"{"method":{"a":"b"}}"#), None);
    }

    #[test]
    fn only_a_named_handshake_session_is_routed_without_its_body() {
        let cases = [
            (h(&[("Mcp-Session-Id", "s-1")]), false),
            (
                h(&[
                    ("MCP-Protocol-Version", "2025-06-18"),
                    ("Mcp-Session-Id", "s"),
                ]),
                false,
            ),
            (h(&[]), true),
            (h(&[("MCP-Protocol-Version", "2025-06-18")]), true),
            (h(&[("MCP-Protocol-Version", STATELESS_REVISION)]), true),
            (
                h(&[
                    ("MCP-Protocol-Version", STATELESS_REVISION),
                    ("Mcp-Session-Id", "s"),
                ]),
                true,
            ),
            (h(&[("MCP-Protocol-Version", "garbage")]), true),
        ];
        for (headers, decides) in cases {
            assert_eq!(body_decides_route(&headers), decides, "{headers:?}");
            // Where the body does not decide, no body method changes the route.
            if !decides {
                let without = classify_parsed(&headers, None);
                assert_eq!(classify_parsed(&headers, Some("initialize")), without);
                assert_eq!(classify_parsed(&headers, Some("tools/call")), without);
            }
        }
    }

    #[test]
    fn batch_method_is_first_request() {
        assert_eq!(
            first_method(
                jsonrpc_calls(br#"[{"jsonrpc":"2.0","method":"initialize","id":1}]"#).as_deref()
            ),
            Some("initialize")
        );
    }
}

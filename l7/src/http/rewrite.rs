//! How the proxy rewrites the heads it forwards: the request a backend
//! sees and the response head a client sees.
//!
//! Contract: both writers append to a caller's buffer and never allocate
//! on their own. Hop-by-hop fields (RFC 9110 §7.6.1) are dropped, framing
//! is regenerated (a backend always gets `Content-Length`, a client gets
//! `Content-Length`, `Transfer-Encoding: chunked` or a close), and the
//! fields the proxy vouches for (`X-Forwarded-*`, the authenticated
//! subject) are written by the proxy alone.

use std::io::Write as _;

use super::{Header, RequestHead, ResponseHead, header, header_has_token, is_hop_by_hop};

/// Header names compared the way CGI-style servers fold them (`_` = `-`,
/// ASCII case-insensitive). `lower_dashed` is lowercase with dashes.
pub fn folded_name_is(name: &str, lower_dashed: &str) -> bool {
    name.len() == lower_dashed.len()
        && name
            .bytes()
            .zip(lower_dashed.bytes())
            .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

/// The header that carries the token's `sub` to backends (lowercase).
pub const SUBJECT_HEADER: &str = "x-authenticated-subject";

/// What the proxy adds to, and removes from, a forwarded request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forwarding<'a> {
    /// The client's address, appended to `X-Forwarded-For`.
    pub client_addr: &'a str,
    /// Drop the client's `Authorization` (the token stays at the proxy).
    pub drop_authorization: bool,
    /// Auth is on: a client-sent subject header (any `_`/`-` spelling) is
    /// dropped, so only the proxy can set it.
    pub guard_subject: bool,
    /// The verified subject to send as `X-Authenticated-Subject`, if any
    /// (sent only when it is printable ASCII).
    pub subject: Option<&'a str>,
    /// The backend's own session id, in place of the client's
    /// `Mcp-Session-Id` (a sealed id opened by the proxy).
    pub session_id: Option<&'a [u8]>,
}

/// `Content-Length: n` and its CRLF.
fn write_length(out: &mut Vec<u8>, n: u64) {
    write_field(
        out,
        "Content-Length",
        itoa::Buffer::new().format(n).as_bytes(),
    );
}

fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Fields the proxy routes or frames on. A client cannot have them
/// dropped by naming them in `Connection` (the backend must see the request
/// the proxy routed), and their `_` spellings never reach a backend (many
/// backends read `_` as `-`, and would act on a field the proxy ignored).
const INTERPRETED: [&str; 12] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "authorization",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
];

/// Whether a field is one the proxy interprets (`Mcp-*` included).
fn interpreted(name: &str) -> bool {
    INTERPRETED.iter().any(|n| name.eq_ignore_ascii_case(n))
        || name.len() > 4 && name[..4].eq_ignore_ascii_case("mcp-")
}

/// A field spelled with `_` where the proxy reads `-` (`Transfer_Encoding`,
/// `Mcp_Session_Id`): the proxy routed as if it were absent.
fn underscore_spelling(name: &str) -> bool {
    name.contains('_') && interpreted(&name.replace('_', "-"))
}

/// Whether a client's request field stays out of the forwarded request.
///
/// `connection_named` says whether the request has a `Connection` field at
/// all (looked up once per request, not once per field).
fn dropped_from_request(
    h: Header<'_>,
    head: &RequestHead,
    fwd: &Forwarding<'_>,
    connection_named: bool,
) -> bool {
    let name = h.name;
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    is_hop_by_hop(name)
        || is("expect")
        || is("x-forwarded-for")
        || is("x-forwarded-proto")
        || underscore_spelling(name)
        || (connection_named
            && !interpreted(name)
            && header_has_token(&head.headers, "connection", name))
        || (fwd.drop_authorization && is("authorization"))
        || (fwd.guard_subject && folded_name_is(name, SUBJECT_HEADER))
}

/// Append the request as sent to the backend: same method, target and
/// end-to-end fields; hop-by-hop fields dropped; the body re-framed with
/// `Content-Length` (never chunked, so the backend sees one unambiguous
/// framing whatever the client sent).
pub fn write_upstream_request(
    head: &RequestHead,
    body: &[u8],
    fwd: &Forwarding<'_>,
    out: &mut Vec<u8>,
) {
    // Every field as received (4 bytes of ": " and CRLF each), the fields
    // the proxy adds, and the body: one allocation for a new buffer.
    out.reserve(
        head.method.len()
            + head.target.len()
            + head.headers.text_len()
            + 4 * head.headers.len()
            + fwd.client_addr.len()
            + fwd.subject.map_or(0, str::len)
            + 160
            + body.len(),
    );
    let connection_named = header(&head.headers, "connection").is_some();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in &head.headers {
        if dropped_from_request(h, head, fwd, connection_named) {
            continue;
        }
        match fwd.session_id {
            Some(id) if h.name.eq_ignore_ascii_case(crate::mcp::SESSION_HEADER) => {
                write_field(out, h.name, id)
            }
            _ => write_field(out, h.name, h.value),
        }
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(v) = header(&head.headers, "x-forwarded-for") {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(fwd.client_addr.as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: https\r\n");
    if let Some(sub) = fwd.subject
        && sub.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        write_field(out, "X-Authenticated-Subject", sub.as_bytes());
    }
    let needs_length = !body.is_empty() || matches!(head.method.as_str(), "POST" | "PUT" | "PATCH");
    if needs_length {
        write_length(out, body.len() as u64);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// How a response head is rewritten for the client: framing, connection,
/// and the session id the client is to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHead<'a> {
    /// Reason phrase.
    pub reason: &'a str,
    /// Re-chunked towards the client.
    pub chunked: bool,
    /// The length to announce (`None`: chunked or close-delimited).
    pub length: Option<u64>,
    /// `Connection: close` (the client connection ends after this response).
    pub close: bool,
    /// The body is an SSE stream (ask intermediaries not to buffer it).
    pub event_stream: bool,
    /// In place of the backend's `Mcp-Session-Id` (a sealed id).
    pub session_id: Option<&'a str>,
}

/// Append the response head as the client sees it: the backend's status,
/// reason and end-to-end fields, then framing and connection fields of the
/// proxy's own.
pub fn write_response_head(head: &ResponseHead, framing: ClientHead<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(head.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(framing.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &head.headers {
        if is_hop_by_hop(h.name) {
            continue;
        }
        match framing.session_id {
            Some(id) if h.name.eq_ignore_ascii_case(crate::mcp::SESSION_HEADER) => {
                write_field(out, h.name, id.as_bytes())
            }
            _ => write_field(out, h.name, h.value),
        }
    }
    if framing.chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    } else if let Some(n) = framing.length {
        write_length(out, n);
    }
    if framing.close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    if framing.event_stream {
        out.extend_from_slice(b"X-Accel-Buffering: no\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Append a complete response of the proxy's own: status, a JSON body, the
/// `extra` fields, and `Connection: close` unless `keep_alive`.
pub fn write_local_response(
    status: u16,
    extra: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        super::reason_phrase(status),
        body.len()
    );
    for (k, v) in extra {
        write_field(out, k, v.as_bytes());
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_request_head;

    fn head(s: &str) -> RequestHead {
        parse_request_head(s.as_bytes(), 8192, 32)
            .unwrap()
            .unwrap()
            .0
    }

    fn forwarded(req: &str, fwd: &Forwarding<'_>) -> String {
        let mut out = Vec::new();
        write_upstream_request(&head(req), b"{}", fwd, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_drops_hop_by_hop_and_proxy_owned_fields() {
        let req = "POST /mcp HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nTE: trailers\r\nExpect: 100-continue\r\nX-Forwarded-Proto: http\r\nX_Authenticated_Subject: eve\r\nAuthorization: Bearer t\r\nContent-Length: 2\r\n\r\n";
        let fwd = Forwarding {
            client_addr: "192.0.2.1",
            drop_authorization: true,
            guard_subject: true,
            subject: Some("alice"),
            session_id: None,
        };
        assert_eq!(
            forwarded(req, &fwd),
            "POST /mcp HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: https\r\nX-Authenticated-Subject: alice\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn request_appends_to_forwarded_for_and_keeps_the_token_when_asked() {
        let req = "POST /mcp HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nAuthorization: Bearer t\r\nContent-Length: 2\r\n\r\n";
        let fwd = Forwarding {
            client_addr: "192.0.2.1",
            subject: Some("bad\nsub"),
            ..Forwarding::default()
        };
        let out = forwarded(req, &fwd);
        assert!(out.contains("Authorization: Bearer t\r\n"), "{out}");
        assert!(
            out.contains("X-Forwarded-For: 10.0.0.1, 192.0.2.1\r\n"),
            "{out}"
        );
        assert!(!out.contains("X-Authenticated-Subject"), "{out}");
    }

    #[test]
    fn folded_names() {
        assert!(folded_name_is("X_Authenticated-SUBJECT", SUBJECT_HEADER));
        assert!(!folded_name_is("X-Authenticated-Subjects", SUBJECT_HEADER));
    }

    #[test]
    fn response_head_framing() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nKeep-Alive: x\r\n\r\n";
        let (h, _) = crate::http::parse_response_head(raw, "POST", 8192, 32)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let framing = ClientHead {
            reason: "OK",
            chunked: true,
            length: None,
            close: true,
            event_stream: true,
            session_id: None,
        };
        write_response_head(&h, framing, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\n"
        );
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;
    use crate::http::parse_request_head;

    fn forwarded(req: &str) -> String {
        let (h, _) = parse_request_head(req.as_bytes(), 8192, 32)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_upstream_request(&h, b"{}", &Forwarding::default(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn nominating_routed_fields_in_connection_does_not_strip_them() {
        let out = forwarded(
            "POST /mcp HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Host, Mcp-Session-Id, Content-Type, X-Drop\r\nMcp-Session-Id: s1\r\nContent-Type: application/json\r\nX-Drop: 1\r\nContent-Length: 2\r\n\r\n",
        );
        for kept in [
            "Host: a\r\n",
            "Mcp-Session-Id: s1\r\n",
            "Content-Type: application/json\r\n",
        ] {
            assert!(out.contains(kept), "{kept:?} dropped: {out}");
        }
        assert!(
            !out.contains("X-Drop"),
            "an ordinary nominated field still goes: {out}"
        );
    }

    #[test]
    fn underscore_spellings_of_interpreted_fields_are_stripped() {
        let out = forwarded(
            "POST /mcp HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nMcp_Session_Id: other\r\nContent_Length: 99\r\nX_Custom: kept\r\nContent-Length: 2\r\n\r\n",
        );
        assert!(!out.contains("Transfer_Encoding"), "{out}");
        assert!(!out.contains("Mcp_Session_Id"), "{out}");
        assert!(!out.contains("Content_Length"), "{out}");
        assert!(out.contains("X_Custom: kept\r\n"), "{out}");
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;
    use crate::http::{parse_request_head, parse_response_head};

    #[test]
    fn the_session_id_is_replaced_both_ways() {
        let req = "GET /mcp HTTP/1.1\r\nHost: a\r\nMcp-Session-Id: s1.sealed\r\n\r\n";
        let (h, _) = parse_request_head(req.as_bytes(), 8192, 32)
            .unwrap()
            .unwrap();
        let fwd = Forwarding {
            client_addr: "192.0.2.1",
            session_id: Some(b"inner"),
            ..Forwarding::default()
        };
        let mut out = Vec::new();
        write_upstream_request(&h, b"", &fwd, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("Mcp-Session-Id: inner\r\n"), "{out}");
        assert!(!out.contains("sealed"), "{out}");
        let raw = b"HTTP/1.1 200 OK\r\nmcp-session-id: inner\r\ncontent-length: 0\r\n\r\n";
        let (r, _) = parse_response_head(raw, "GET", 8192, 32).unwrap().unwrap();
        let mut out = Vec::new();
        let head = ClientHead {
            reason: "OK",
            chunked: false,
            length: Some(0),
            close: false,
            event_stream: false,
            session_id: Some("s1.sealed"),
        };
        write_response_head(&r, head, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("mcp-session-id: s1.sealed\r\n"), "{out}");
        assert!(!out.contains("inner"), "{out}");
    }
}

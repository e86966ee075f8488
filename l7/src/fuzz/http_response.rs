//! Fuzz target for the response side of a real [`Connection`]: the
//! backend's response head (interim 1xx heads skipped), its body framed by
//! Content-Length, chunked or the close, relayed to the client (re-chunked
//! for an HTTP/1.1 client, SSE tracked), and how the response ends.
//!
//! Input: byte 0 selects how the backend's bytes are cut into reads
//! ([`Cuts`]); byte 1 the client's request (low two bits: GET, POST
//! `initialize`, HEAD, POST over HTTP/1.0); the rest is what the backend
//! sends before it closes the connection cleanly.
//!
//! Invariants (a violation is a finding):
//! - whole = cut: the client sees the same status, body and completeness,
//!   and the driver gets the same actions, however the backend's bytes
//!   are cut;
//! - the client's bytes are one well-formed response (httparse parses the
//!   head; a chunked body is valid chunked coding with nothing after it; a
//!   length body never runs over its length);
//! - a relayed response is one httparse also reads from the backend's
//!   bytes, with the same status; its body, as the client decodes it, is a
//!   prefix of the backend's body as [`reference::chunked`] or the declared
//!   length decodes it, and all of it when the backend's body is whole;
//! - a cut-short body never looks whole to the client, except an SSE
//!   stream ended cleanly between two events;
//! - a response httparse cannot read, whose status is outside 100-599 or
//!   whose framing is ambiguous is answered by the proxy itself (502),
//!   never relayed, and no answer to HEAD carries content;
//! - the upstream connection is offered for reuse only after a whole,
//!   length-delimited body with nothing after it; the SSE event counter
//!   counts the events in what was relayed; nothing stays outstanding.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::reference::{self, Decoded};
use super::{Cuts, Seed};
use crate::http::BodyFraming;
use crate::{Action, Connection, CoreConfig, Shared};

/// The one backend.
const BACKEND: &str = "192.0.2.10:8080";
/// Largest response head (small, so inputs reach it).
pub const MAX_HEAD: usize = 1024;

/// The client requests byte 1 selects.
pub const REQUESTS: [&[u8]; 4] = [
    b"GET /mcp HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 46\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\"}",
    b"HEAD /mcp HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /mcp HTTP/1.0\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
];

/// What the client and the driver saw of one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// The response status the client got.
    pub status: u16,
    /// The body as the client decodes it.
    pub body: Vec<u8>,
    /// The client can tell the body is whole.
    pub complete: bool,
    /// The response is an event stream.
    pub event_stream: bool,
    /// The proxy answered itself (the backend's response was refused).
    pub local: bool,
    /// Every action the driver got, in order.
    pub actions: Vec<Action>,
    /// SSE events the proxy counted.
    pub sse_events: u64,
}

/// The fuzz target. Panics on a finding.
pub fn http_response(data: &[u8]) -> Relayed {
    let (cuts, which, upstream) = match data {
        [c, w, rest @ ..] => (Cuts(*c), usize::from(*w & 3), rest),
        _ => (Cuts(0), 0, &[][..]),
    };
    let whole = relay(REQUESTS[which], &[upstream]);
    let cut = relay(REQUESTS[which], &cuts.split(upstream));
    assert_eq!(
        comparable(&whole),
        comparable(&cut),
        "whole and cut relays differ"
    );
    check_against_reference(&whole, upstream, which == 2);
    whole
}

/// A relay with the reuse verdict blanked: bytes after a whole body that
/// arrive in a later read reach the driver's idle pool, not the core, so
/// only the whole feed is held to the reuse rule ([`check_reuse`]).
fn comparable(r: &Relayed) -> Relayed {
    let mut r = r.clone();
    for a in &mut r.actions {
        if let Action::ReleaseUpstream { reusable } = a {
            *reusable = false;
        }
    }
    r
}

fn config() -> CoreConfig {
    CoreConfig {
        max_response_header_bytes: MAX_HEAD,
        max_headers: 16,
        ..CoreConfig::default()
    }
}

/// Run one request through a fresh connection whose backend sends
/// `reads`, then closes cleanly.
pub fn relay(request: &[u8], reads: &[&[u8]]) -> Relayed {
    let shared = Arc::new(Shared::new(config(), [BACKEND.to_string()]));
    // An arbitrary epoch: no timer ever fires in this target.
    let now = Instant::now();
    let mut conn = Connection::new(shared.clone(), "192.0.2.7", now);
    let mut client = Vec::new();
    let mut actions = Vec::new();
    conn.handle_downstream_data(now, request);
    settle(&mut conn, now, &mut client, &mut actions);
    assert_eq!(
        actions,
        [Action::ConnectUpstream {
            backend: 0,
            fresh: false
        }],
        "the fixed request must go to the backend"
    );
    conn.handle_upstream_connected(now, false);
    let sent = conn.upstream_pending().len();
    conn.upstream_consumed(sent);
    for read in reads {
        conn.handle_upstream_data(now, read);
        settle(&mut conn, now, &mut client, &mut actions);
    }
    conn.handle_upstream_eof(now);
    settle(&mut conn, now, &mut client, &mut actions);
    let metrics = &shared.metrics;
    assert_eq!(
        shared.backends.get(0).outstanding(),
        0,
        "request left outstanding"
    );
    assert_eq!(
        metrics.sse_active.load(Ordering::Relaxed),
        0,
        "SSE stream left active"
    );
    let view = client_view(&client, request.starts_with(b"HEAD"), &actions);
    Relayed {
        local: metrics.local_responses.load(Ordering::Relaxed) > 0,
        sse_events: metrics.sse_events.load(Ordering::Relaxed),
        actions,
        ..view
    }
}

/// Take every action and every byte for the client.
fn settle(conn: &mut Connection, now: Instant, client: &mut Vec<u8>, actions: &mut Vec<Action>) {
    while let Some(a) = conn.poll_action() {
        actions.push(a);
    }
    let pending = conn.downstream_pending().to_vec();
    conn.downstream_consumed(now, pending.len());
    client.extend_from_slice(&pending);
}

/// What the client makes of the bytes it got (`actions` say how its
/// connection was closed).
fn client_view(client: &[u8], head_request: bool, actions: &[Action]) -> Relayed {
    let mut raw = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut raw);
    let Ok(httparse::Status::Complete(n)) = resp.parse(client) else {
        panic!(
            "the client got no whole response head: {:?}",
            String::from_utf8_lossy(client)
        );
    };
    let status = resp.code.unwrap_or_default();
    let field = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let event_stream = field("content-type").is_some_and(|v| {
        v.trim_start()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
    });
    let rest = &client[n..];
    let (body, complete) = if head_request || status == 204 || status == 304 {
        assert!(rest.is_empty(), "bytes after a bodiless response");
        (Vec::new(), true)
    } else if field("transfer-encoding").is_some() {
        match reference::chunked(rest) {
            Decoded::Complete { body, used } => {
                assert_eq!(used, rest.len(), "bytes after the last chunk");
                (body, true)
            }
            Decoded::Incomplete { body } => (body, false),
            Decoded::Invalid { .. } => panic!("the proxy wrote invalid chunked coding"),
        }
    } else if let Some(len) = field("content-length") {
        let len: usize = len
            .trim()
            .parse()
            .expect("the proxy writes numeric lengths");
        assert!(rest.len() <= len, "body runs over its Content-Length");
        (rest.to_vec(), rest.len() == len)
    } else {
        let clean = actions.contains(&Action::CloseDownstream { flush: true });
        (rest.to_vec(), clean)
    };
    Relayed {
        status,
        body,
        complete,
        event_stream,
        local: false,
        actions: Vec::new(),
        sse_events: 0,
    }
}

/// The backend's response as httparse and the reference decoders read it:
/// its status, framing and decoded body. `None` when no final head can be
/// read or its framing is ambiguous.
fn reference_response(upstream: &[u8], head_request: bool) -> Option<(u16, BodyFraming, Decoded)> {
    let mut at = 0;
    loop {
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut raw);
        let httparse::Status::Complete(n) = resp.parse(&upstream[at..]).ok()? else {
            return None;
        };
        let status = resp.code.filter(|c| (100..600).contains(c))?;
        at += n;
        if (100..200).contains(&status) {
            continue;
        }
        let rest = &upstream[at..];
        if head_request || status == 204 || status == 304 {
            let empty = Decoded::Complete {
                body: Vec::new(),
                used: 0,
            };
            return Some((status, BodyFraming::None, empty));
        }
        let framing = response_framing(resp.headers)?;
        let body = match framing {
            BodyFraming::Chunked => reference::chunked(rest),
            BodyFraming::Length(len) if rest.len() as u64 >= len => Decoded::Complete {
                body: rest[..len as usize].to_vec(),
                used: len as usize,
            },
            BodyFraming::Length(_) => Decoded::Incomplete {
                body: rest.to_vec(),
            },
            // The backend closed cleanly after all of it.
            BodyFraming::UntilClose | BodyFraming::None => Decoded::Complete {
                body: rest.to_vec(),
                used: rest.len(),
            },
        };
        return Some((status, framing, body));
    }
}

/// Response framing from httparse's fields; `None` when ambiguous.
fn response_framing(headers: &[httparse::Header<'_>]) -> Option<BodyFraming> {
    let named = |n: &str| -> Vec<&httparse::Header<'_>> {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(n))
            .collect()
    };
    let (cl, te) = (named("content-length"), named("transfer-encoding"));
    let text = |v: &[u8]| {
        String::from_utf8_lossy(v)
            .trim_matches([' ', '\t'])
            .to_string()
    };
    match (cl.as_slice(), te.as_slice()) {
        ([], []) => Some(BodyFraming::UntilClose),
        ([], [te]) => text(te.value)
            .eq_ignore_ascii_case("chunked")
            .then_some(BodyFraming::Chunked),
        ([cl], []) => {
            let v = text(cl.value);
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(BodyFraming::Length(v.parse().ok()?))
        }
        _ => None,
    }
}

fn check_against_reference(ours: &Relayed, upstream: &[u8], head_request: bool) {
    let Some((status, framing, theirs)) = reference_response(upstream, head_request) else {
        assert!(
            ours.local,
            "relayed a response httparse cannot read: {ours:?}"
        );
        return;
    };
    if ours.local {
        // Ours refuses more than httparse (bare LF, obs-fold, limits,
        // session ids); a refusal is always the proxy's own 502.
        assert_eq!(ours.status, 502, "a local answer to a backend response");
        return;
    }
    assert_eq!(ours.status, status, "status");
    assert!(
        theirs.body().starts_with(&ours.body),
        "client body is not the backend's"
    );
    match &theirs {
        Decoded::Complete { body, used } => {
            assert!(ours.complete, "whole body not complete at the client");
            assert_eq!(&ours.body, body, "body");
            check_reuse(ours, framing, *used == upstream.len() - head_end(upstream));
        }
        _ => {
            check_reuse(ours, framing, false);
            if ours.complete {
                assert!(ours.event_stream, "a cut body looks whole to the client");
                let marks = reference::sse_marks(&ours.body);
                assert!(
                    marks.boundary[ours.body.len()],
                    "SSE stream ended mid-event"
                );
            }
        }
    }
    if ours.event_stream {
        let events = reference::sse_marks(&ours.body).event_ends.len() as u64;
        assert_eq!(ours.sse_events, events, "SSE events counted");
    }
}

/// Where the final response head ends (interim heads included).
fn head_end(upstream: &[u8]) -> usize {
    let mut at = 0;
    loop {
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut raw);
        match resp.parse(&upstream[at..]) {
            Ok(httparse::Status::Complete(n)) => {
                at += n;
                if !resp.code.is_some_and(|c| (100..200).contains(&c)) {
                    return at;
                }
            }
            _ => return at,
        }
    }
}

/// A connection offered for reuse had a whole, length-delimited (or
/// bodiless) response and nothing after it (`clean_end`).
fn check_reuse(ours: &Relayed, framing: BodyFraming, clean_end: bool) {
    if ours
        .actions
        .contains(&Action::ReleaseUpstream { reusable: true })
    {
        assert!(
            clean_end,
            "reused a connection with bytes left or a body cut"
        );
        assert_ne!(
            framing,
            BodyFraming::UntilClose,
            "reused a close-delimited connection"
        );
    }
}

/// The committed seeds: every body framing, interim heads, SSE streams
/// cut between and inside events, and responses the proxy must refuse.
pub fn seeds() -> Vec<Seed> {
    const GET: u8 = 0;
    const POST: u8 = 1;
    const HEAD: u8 = 2;
    const HTTP10: u8 = 3;
    let sse = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
    let chunked_head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let json = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18"}}"#;
    let length = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: s-1\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    );
    let cases: Vec<(&str, u8, String)> = vec![
        ("length", POST, length.clone()),
        ("length-http10-client", HTTP10, length.clone()),
        ("length-then-junk", POST, format!("{length}HTTP/1.1 200 OK\r\n\r\n")),
        ("length-cut", POST, length[..length.len() - 5].to_string()),
        ("chunked", POST, format!("{chunked_head}5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n")),
        ("chunked-http10-client", HTTP10, format!("{chunked_head}3\r\nabc\r\n0\r\n\r\n")),
        ("chunked-cut", POST, format!("{chunked_head}5\r\nhel")),
        ("chunked-bad-size", POST, format!("{chunked_head}3\r\nabc\r\nzz\r\n")),
        ("chunked-huge-size", POST, format!("{chunked_head}fffffffffffffff\r\nabc")),
        ("close-delimited", GET, format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{json}")),
        ("close-delimited-http10", HTTP10, format!("HTTP/1.0 200 OK\r\n\r\n{json}")),
        ("interim-then-final", POST, format!("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n{length}")),
        ("no-content", POST, "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".to_string()),
        ("not-modified", GET, "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n".to_string()),
        ("head-with-length", HEAD, "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_string()),
        ("accepted-202", POST, "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_string()),
        ("sse-events-then-close", GET, format!("{sse}event: message\ndata: {json}\n\n: keepalive\n\n")),
        ("sse-cut-mid-event", GET, format!("{sse}data: one\n\ndata: tw")),
        ("sse-chunked-crlf", POST, "HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\nb\r\ndata: 1\r\n\r\n\r\n0\r\n\r\n".to_string()),
        ("sse-chunked-cut-between", GET, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n".to_string()),
        ("sse-length-cut", GET, format!("{}Content-Length: 100\r\n\r\ndata: x\n\n", &sse[..sse.len() - 2])),
        ("sse-cr-endings", GET, format!("{sse}data: a\r\rdata: b\r\r")),
        ("cl-and-te", POST, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string()),
        ("duplicate-cl", POST, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".to_string()),
        ("te-gzip", POST, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc".to_string()),
        ("bare-lf-head", POST, "HTTP/1.1 200 OK\nContent-Length: 0\n\n".to_string()),
        ("obs-fold", POST, "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n".to_string()),
        ("bad-session-id", POST, "HTTP/1.1 200 OK\r\nMcp-Session-Id: a b\r\nContent-Length: 0\r\n\r\n".to_string()),
        ("keep-alive-http10-backend", POST, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}".to_string()),
        ("connection-close", POST, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}".to_string()),
        ("no-reason", POST, "HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n".to_string()),
        ("garbage", POST, "SSH-2.0-OpenSSH_9.2\r\n".to_string()),
        // Regressions of findings (see the tests named in each fix).
        ("found-head-refused-locally", HEAD, "HTTP/1.1 200 OK\r\nMcp-Session-Id: a b\r\nContent-Length: 0\r\n\r\n".to_string()),
        ("found-status-020", POST, "HTTP/1.1 020 OK\r\nContent-Length: 0\r\n\r\n".to_string()),
        ("empty", GET, String::new()),
        ("head-too-large", POST, format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "v".repeat(1100))),
    ];
    let selectors = [Cuts::BYTES, Cuts::RANDOM, Cuts::LINES, Cuts::SIXTEEN, 0];
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (name, request, upstream))| {
            let cut = selectors[i % selectors.len()];
            Seed::new(name, [&[cut, request][..], upstream.as_bytes()].concat())
        })
        .collect()
}

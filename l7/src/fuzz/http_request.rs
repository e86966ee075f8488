//! Fuzz target for request heads and request body framing, read the way a
//! [`crate::Connection`] reads them: [`parse_request_head_resume`] for each
//! head, then the connection's own body reader (`take_request_body`) for
//! Content-Length and chunked bodies, request after pipelined request,
//! until a refusal or a request that closes the connection.
//!
//! Input: byte 0 selects how the client's stream is cut into reads
//! ([`Cuts`]); the rest is that stream.
//!
//! Invariants (a violation is a finding):
//! - whole = cut: the stream fed in one read and fed in the selected reads
//!   frames the same requests (heads, bodies, offsets) and ends the same
//!   way (a refusal compares by the status and counter the client sees);
//! - httparse agrees on every head we accept: it parses a complete head of
//!   the same length, with the same method, version and fields, and the
//!   same target (absolute-form comes out as origin-form, its authority as
//!   `Host`). Ours may refuse more (see [`http`](crate::http): bare LF,
//!   obs-fold, framing ambiguity, Host rules, target forms, limits), but
//!   never accepts a head httparse refuses or reads one differently;
//! - the framing we derive is what an independent reading of the
//!   httparse fields gives (one unambiguous Content-Length, or a lone
//!   `chunked`), and every body equals the [`reference::chunked`] decoding
//!   or the declared length of the bytes that follow the head; a body cut
//!   short or refused as malformed is one the reference cannot finish;
//! - the request forwarded to a backend re-parses (httparse) as exactly
//!   one request: same method and target, one `Content-Length` equal to the
//!   body, no `Transfer-Encoding`, at most one `Host` (RFC 9112 §3.2), no
//!   `_` spelling of a framing or routing field, and the body bytes right
//!   after the head.

use std::mem;

use super::reference::{self, Decoded};
use super::{Cuts, Seed};
use crate::conn::{BodyDecoder, request_body_decoder, take_request_body};
use crate::http::{
    self, BodyFraming, Forwarding, HttpError, RequestHead, parse_request_head_resume,
};
use crate::reject::Reject;

/// Largest head the fuzz framer reads (small, so inputs reach it).
pub const MAX_HEAD: usize = 512;
/// Most header fields.
pub const MAX_HEADERS: usize = 12;
/// Largest body.
pub const MAX_BODY: u64 = 256;

/// One request as the connection framed it.
#[derive(Debug, Clone)]
pub struct Framed {
    /// Stream offset of its first byte.
    pub start: usize,
    /// Length of its head.
    pub head_len: usize,
    /// The head.
    pub head: RequestHead,
    /// The body, decoded.
    pub body: Vec<u8>,
}

/// How the framer's stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Waiting for more bytes (a head or body is incomplete, or none began).
    NeedMore,
    /// A request without keep-alive: the connection closes after it.
    Closed,
    /// A framing error the connection answers and closes on.
    Refused(HttpError),
}

/// Everything a stream framed to.
#[derive(Debug, Clone)]
pub struct Framing {
    /// Whole requests, in order.
    pub requests: Vec<Framed>,
    /// The request whose body was being read when the stream ended.
    pub open: Option<Framed>,
    /// How it ended.
    pub end: End,
}

impl Framing {
    /// Requests the stream framed.
    pub fn accepted(&self) -> usize {
        self.requests.len()
    }
}

/// The fuzz target. Panics on a finding.
pub fn http_request(data: &[u8]) -> Framing {
    let Some((&selector, stream)) = data.split_first() else {
        return frame(&[]);
    };
    let whole = frame(&[stream]);
    let cut = frame(&Cuts(selector).split(stream));
    assert_same_framing(&whole, &cut);
    for req in &whole.requests {
        check_against_httparse(stream, req);
        check_body(stream, req);
        check_forwarded(req);
    }
    check_open_body(stream, &whole);
    whole
}

/// Feed `reads` in order to one framer.
pub fn frame(reads: &[&[u8]]) -> Framing {
    let mut framer = Framer::default();
    for read in reads {
        framer.feed(read);
    }
    framer.finish()
}

#[derive(Debug, Default)]
struct Framer {
    input: Vec<u8>,
    /// Stream bytes taken out of `input` so far.
    consumed: usize,
    stage: Stage,
    requests: Vec<Framed>,
    end: Option<End>,
}

#[derive(Debug, Default)]
enum Stage {
    #[default]
    Idle,
    Head {
        scanned: usize,
    },
    Body {
        req: Box<Framed>,
        decoder: BodyDecoder,
    },
}

impl Framer {
    /// One read from the client, taken as far as it goes (as
    /// `Connection::advance_client` does).
    fn feed(&mut self, read: &[u8]) {
        if self.end.is_some() {
            return;
        }
        self.input.extend_from_slice(read);
        while self.end.is_none() && self.step() {}
    }

    /// One move of the state machine; false when it needs more bytes.
    fn step(&mut self) -> bool {
        match &mut self.stage {
            Stage::Idle if self.input.is_empty() => false,
            Stage::Idle => {
                self.stage = Stage::Head { scanned: 0 };
                true
            }
            Stage::Head { scanned } => {
                match parse_request_head_resume(&self.input, scanned, MAX_HEAD, MAX_HEADERS) {
                    Ok(None) => false,
                    Ok(Some((head, len))) => self.start_body(head, len),
                    Err(e) => self.refuse(e),
                }
            }
            Stage::Body { req, decoder } => {
                let before = self.input.len();
                let r = take_request_body(decoder, &mut self.input, &mut req.body);
                self.consumed += before - self.input.len();
                match r {
                    Ok(false) => false,
                    Ok(true) => {
                        let Stage::Body { req, .. } = mem::take(&mut self.stage) else {
                            unreachable!("matched above")
                        };
                        self.complete(*req)
                    }
                    Err(e) => self.refuse(e),
                }
            }
        }
    }

    fn start_body(&mut self, head: RequestHead, head_len: usize) -> bool {
        self.input.drain(..head_len);
        let req = Framed {
            start: self.consumed,
            head_len,
            body: Vec::new(),
            head,
        };
        self.consumed += head_len;
        match request_body_decoder(req.head.framing, MAX_BODY) {
            Err(e) => self.refuse(e),
            Ok(None) => self.complete(req),
            Ok(Some(decoder)) => {
                self.stage = Stage::Body {
                    req: Box::new(req),
                    decoder,
                };
                true
            }
        }
    }

    fn complete(&mut self, req: Framed) -> bool {
        if !req.head.keep_alive {
            self.end = Some(End::Closed);
        }
        self.requests.push(req);
        self.stage = Stage::Idle;
        true
    }

    fn refuse(&mut self, e: HttpError) -> bool {
        self.end = Some(End::Refused(e));
        false
    }

    fn finish(self) -> Framing {
        Framing {
            requests: self.requests,
            open: match self.stage {
                Stage::Body { req, .. } => Some(*req),
                _ => None,
            },
            end: self.end.unwrap_or(End::NeedMore),
        }
    }
}

/// What whole = cut compares of a request.
fn request_key(r: &Framed) -> impl PartialEq + std::fmt::Debug + '_ {
    let h = &r.head;
    (
        (r.start, r.head_len, &r.body),
        (&h.method, &h.target, h.minor_version, &h.headers),
        (h.framing, h.keep_alive, h.expect_continue),
    )
}

/// What a client sees of a refusal: its status and error counter.
fn refusal_key(end: &End) -> Option<(u16, Option<crate::ErrorKind>)> {
    match end {
        End::Refused(e) => {
            let r = Reject::framing(e);
            Some((r.status, r.kind))
        }
        _ => None,
    }
}

fn assert_same_framing(whole: &Framing, cut: &Framing) {
    let whole_keys: Vec<_> = whole.requests.iter().map(request_key).collect();
    let cut_keys: Vec<_> = cut.requests.iter().map(request_key).collect();
    assert_eq!(
        whole_keys, cut_keys,
        "whole and cut frame different requests"
    );
    assert_eq!(
        refusal_key(&whole.end),
        refusal_key(&cut.end),
        "whole ends {:?}, cut ends {:?}",
        whole.end,
        cut.end
    );
    assert_eq!(
        mem::discriminant(&whole.end),
        mem::discriminant(&cut.end),
        "whole ends {:?}, cut ends {:?}",
        whole.end,
        cut.end
    );
    if !matches!(whole.end, End::Refused(_)) {
        assert_eq!(
            whole.open.as_ref().map(request_key),
            cut.open.as_ref().map(request_key),
            "whole and cut stop in different bodies"
        );
    }
}

/// The origin-form target and authority a target must come out as.
fn expected_target(path: &str) -> (String, Option<&str>) {
    let lower = path.to_ascii_lowercase();
    let Some(scheme_len) = ["http://", "https://"]
        .iter()
        .find(|s| lower.starts_with(*s))
        .map(|s| s.len())
    else {
        return (path.to_string(), None);
    };
    let rest = &path[scheme_len..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let target = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    (target, Some(authority))
}

fn check_against_httparse(stream: &[u8], req: &Framed) {
    let mut raw = [httparse::EMPTY_HEADER; 64];
    let mut theirs = httparse::Request::new(&mut raw);
    let status = theirs.parse(&stream[req.start..]);
    assert_eq!(
        status,
        Ok(httparse::Status::Complete(req.head_len)),
        "httparse on an accepted head"
    );
    let ours = &req.head;
    assert_eq!(theirs.method, Some(ours.method.as_str()), "method");
    assert_eq!(theirs.version, Some(ours.minor_version), "version");
    let (target, authority) = expected_target(theirs.path.unwrap_or_default());
    assert_eq!(ours.target, target, "target");
    let mut fields: Vec<(String, Vec<u8>)> = theirs
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    if let Some(authority) = authority {
        match fields
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            Some((_, v)) => *v = authority.as_bytes().to_vec(),
            None => fields.push(("Host".to_string(), authority.as_bytes().to_vec())),
        }
    }
    let ours_fields: Vec<(String, Vec<u8>)> = ours
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    assert_eq!(ours_fields, fields, "header fields");
    assert_eq!(
        Some(ours.framing),
        reference_framing(theirs.headers),
        "framing of an accepted head"
    );
}

/// Body framing from httparse's fields, `None` when a front proxy must
/// refuse it: one `Content-Length` of digits, or one `Transfer-Encoding`
/// that is exactly `chunked`, or neither.
fn reference_framing(headers: &[httparse::Header<'_>]) -> Option<BodyFraming> {
    let named = |n: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(n))
            .map(|h| h.value)
            .collect()
    };
    let (cl, te) = (named("content-length"), named("transfer-encoding"));
    let trim = |v: &[u8]| {
        String::from_utf8_lossy(v)
            .trim_matches([' ', '\t'])
            .to_string()
    };
    match (cl.as_slice(), te.as_slice()) {
        ([], []) => Some(BodyFraming::None),
        ([], [te]) => trim(te)
            .eq_ignore_ascii_case("chunked")
            .then_some(BodyFraming::Chunked),
        ([cl], []) => {
            let cl = trim(cl);
            if !cl.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            match cl.parse::<u64>().ok()? {
                0 => Some(BodyFraming::None),
                n => Some(BodyFraming::Length(n)),
            }
        }
        _ => None,
    }
}

fn check_body(stream: &[u8], req: &Framed) {
    let after = &stream[req.start + req.head_len..];
    match req.head.framing {
        BodyFraming::None => assert!(req.body.is_empty()),
        BodyFraming::Length(n) => assert_eq!(req.body, after[..n as usize], "length body"),
        BodyFraming::Chunked => match reference::chunked(after) {
            Decoded::Complete { body, .. } => assert_eq!(req.body, body, "chunked body"),
            other => panic!("framed a chunked body the reference reads as {other:?}"),
        },
        BodyFraming::UntilClose => panic!("a request framed until close"),
    }
}

/// A body left open: the reference cannot finish it either; one refused
/// as malformed is one the reference finds invalid.
fn check_open_body(stream: &[u8], framing: &Framing) {
    let Some(open) = &framing.open else {
        return;
    };
    let after = &stream[open.start + open.head_len..];
    match (&framing.end, open.head.framing) {
        (End::NeedMore, BodyFraming::Chunked) => assert_eq!(
            reference::chunked(after),
            Decoded::Incomplete {
                body: open.body.clone()
            },
            "chunked body waiting for more"
        ),
        (End::NeedMore, BodyFraming::Length(n)) => {
            assert!(after.len() < n as usize);
            assert_eq!(open.body, after);
        }
        (End::Refused(HttpError::Smuggling(_)), BodyFraming::Chunked) => assert!(
            matches!(reference::chunked(after), Decoded::Invalid { .. }),
            "refused a chunked body the reference accepts"
        ),
        _ => {}
    }
}

fn check_forwarded(req: &Framed) {
    let fwd = Forwarding {
        client_addr: "192.0.2.7",
        ..Forwarding::default()
    };
    let mut out = Vec::new();
    http::write_upstream_request(&req.head, &req.body, &fwd, &mut out);
    let mut raw = [httparse::EMPTY_HEADER; 64];
    let mut backend = httparse::Request::new(&mut raw);
    let Ok(httparse::Status::Complete(n)) = backend.parse(&out) else {
        panic!(
            "forwarded request does not parse: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(backend.method, Some(req.head.method.as_str()));
    assert_eq!(backend.path, Some(req.head.target.as_str()));
    let lengths: Vec<&[u8]> = backend
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value)
        .collect();
    match lengths.as_slice() {
        [] => assert!(req.body.is_empty(), "body forwarded without a length"),
        [v] => assert_eq!(*v, req.body.len().to_string().as_bytes()),
        _ => panic!("several Content-Length forwarded"),
    }
    let hosts = backend
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    assert!(hosts <= 1, "{hosts} Host fields forwarded");
    for h in backend.headers.iter() {
        let folded = h.name.replace('_', "-");
        let framing_or_routing = ["content-length", "host", "mcp-session-id"]
            .iter()
            .any(|f| folded.eq_ignore_ascii_case(f));
        assert!(
            !folded.eq_ignore_ascii_case("transfer-encoding")
                && (!h.name.contains('_') || !framing_or_routing),
            "forwarded {}",
            h.name
        );
    }
    assert_eq!(&out[n..], req.body.as_slice(), "forwarded body");
}

/// The committed seeds: valid, pipelined and chunked requests, and the
/// smuggling and syntax attempts the proxy must refuse.
pub fn seeds() -> Vec<Seed> {
    let json = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    let post = format!(
        "POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    );
    let chunked = "POST /mcp HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
    let get = "GET /mcp HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n";
    let te_head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        ("get", get.to_string()),
        ("post-content-length", post.clone()),
        ("post-chunked", chunked.to_string()),
        ("pipelined-three", format!("{get}{post}{chunked}")),
        ("pipelined-after-close", format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n{get}")),
        ("http10-keep-alive", format!("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n{get}")),
        ("http10-no-host", "GET /x HTTP/1.0\r\n\r\n".to_string()),
        ("expect-continue", "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}".to_string()),
        ("zero-length-pipelined", format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n{get}")),
        ("cl-and-te", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string()),
        ("te-and-cl", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n".to_string()),
        ("duplicate-cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}".to_string()),
        ("cl-plus-sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\n{}".to_string()),
        ("cl-trailing-space", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2 \r\n\r\n{}".to_string()),
        ("cl-too-large", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n".to_string()),
        ("body-over-limit", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 257\r\n\r\n".to_string()),
        ("te-gzip-chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_string()),
        ("te-twice", te_head.replace("\r\n\r\n", "\r\nTransfer-Encoding: chunked\r\n\r\n")),
        ("te-underscore", "POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".to_string()),
        ("underscore-names", "GET / HTTP/1.1\r\nHost: a\r\nMcp_Session_Id: x\r\nX_Custom: 1\r\n\r\n".to_string()),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n".to_string()),
        ("bare-lf", "GET / HTTP/1.1\nHost: a\n\n".to_string()),
        ("chunk-size-bad", format!("{te_head}zz\r\n")),
        ("chunk-size-16-digits", format!("{te_head}1234567890abcdef0\r\n")),
        ("chunk-size-huge", format!("{te_head}fffffffffffffff\r\nabc")),
        ("chunk-over-limit-then-junk", format!("{te_head}101\r\n{}XX", "x".repeat(257))),
        ("chunk-missing-crlf", format!("{te_head}3\r\nabcd\r\n0\r\n\r\n")),
        ("chunk-bare-lf", format!("{te_head}3\nabc\r\n0\r\n\r\n")),
        ("chunk-ext-and-space", format!("{te_head}3 ; a=\"b\"\r\nabc\r\n0\r\n\r\n")),
        ("http09", "GET /\r\n\r\n".to_string()),
        ("http09-incomplete", "GET /index.html\r\n".to_string()),
        ("absolute-form", "GET http://example.com/mcp?x=1 HTTP/1.1\r\nHost: other\r\n\r\n".to_string()),
        ("absolute-form-no-path", "GET HTTPS://example.com:8443 HTTP/1.0\r\n\r\n".to_string()),
        ("authority-form", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n".to_string()),
        ("asterisk", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".to_string()),
        ("no-host", "GET / HTTP/1.1\r\n\r\n".to_string()),
        ("two-hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_string()),
        ("bad-host", "GET / HTTP/1.1\r\nHost: a b@c\r\n\r\n".to_string()),
        ("leading-crlf", format!("\r\n{get}")),
        ("space-before-colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n".to_string()),
        ("too-many-headers", format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X: 1\r\n".repeat(12))),
        ("head-too-large", format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "v".repeat(520))),
        // Regressions of findings (see the tests named in each fix).
        ("found-http10-two-hosts", "GET http://a/ HTTP/1.0\r\nHost: b\r\nHost: c\r\n\r\n".to_string()),
        ("found-two-empty-lines-first", format!("\r\n\r\n\r{get}")),
        ("found-bad-line-then-bare-lf", "GET / HTTP/1.2\r\nHost: a\nX: 1\r\n\r\n".to_string()),
        ("found-chunked-lone-cr", format!("{te_head}\r")),
        ("lowercase-method-high-bytes", "get /caf\u{e9} HTTP/1.1\r\nHost: a\r\nX: \u{e9}\r\n\r\n".to_string()),
    ];
    let selectors = [Cuts::BYTES, Cuts::RANDOM, Cuts::LINES, Cuts::SIXTEEN, 0];
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (name, stream))| {
            let selector = selectors[i % selectors.len()];
            Seed::new(name, [&[selector][..], stream.as_bytes()].concat())
        })
        .collect()
}

//! The per-client-connection proxy state machine.
//!
//! One [`Connection`] exists per accepted client connection (after TLS, the
//! core only sees plaintext). It owns at most one upstream (backend)
//! connection at a time: requests on a client connection are answered in
//! order, and each is routed on its own.
//!
//! ## Driving it
//! Inputs are the `handle_*` methods, each taking `now`. After any of them
//! the driver polls, in this order:
//! 1. [`Connection::poll_action`] until `None` (connect, release or close
//!    an upstream, close the client);
//! 2. [`Connection::downstream_pending`] / [`Connection::downstream_consumed`]
//!    and the upstream equivalents, writing what it can;
//! 3. [`Connection::poll_timeout`], arming one timer; when it fires the
//!    driver calls [`Connection::handle_timeout`].
//!
//! Reads are gated by [`Connection::wants_downstream_read`] and
//! [`Connection::wants_upstream_read`]: when a slow client lets bytes pile
//! up, the core stops asking for backend bytes and TCP flow control pushes
//! back on the backend. A spurious `handle_*` call (data for a closed
//! side, a second EOF, an early timeout) is harmless.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::auth::{self, Rejection};
use crate::http::{
    self, BodyFraming, CHUNKED_END, ChunkedDecoder, HttpError, RequestHead, ResponseHead,
    encode_chunk, header, header_count, header_has_token, is_hop_by_hop, reason_phrase,
};
use crate::mcp::{self, McpError, Route};
use crate::metrics::ErrorKind;
use crate::sse::{KEEPALIVE, SseTracker};
use crate::{CoreConfig, Shared};

/// Header that carries the token's `sub` to backends (lowercase).
const SUBJECT_HEADER: &str = "x-authenticated-subject";

/// Something only the driver can do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Open (or take from the idle pool, unless `fresh`) a connection to
    /// backend `backend`, then call `handle_upstream_connected` or
    /// `handle_upstream_connect_failed`.
    ConnectUpstream {
        /// Backend index.
        backend: usize,
        /// Do not reuse a pooled connection (the last one died unused).
        fresh: bool,
    },
    /// The response is complete: the upstream connection may go back to the
    /// idle pool when `reusable`, else it must be closed.
    ReleaseUpstream {
        /// Safe to reuse for another request.
        reusable: bool,
    },
    /// Close the upstream connection now, discarding unsent bytes.
    AbortUpstream,
    /// Close the client connection: after writing the pending downstream
    /// bytes when `flush` (the driver bounds how long it waits for a client
    /// that stops reading), else at once (a response was cut short and the
    /// client must see a broken connection rather than a truncated body).
    CloseDownstream {
        /// Write what is pending first.
        flush: bool,
    },
}

#[derive(Debug)]
struct InFlight {
    method: String,
    route: Route,
    client_keep_alive: bool,
    client_minor: u8,
    request_bytes: Vec<u8>,
    backend: usize,
    tried: Vec<usize>,
    reused: bool,
    retried_fresh: bool,
}

impl InFlight {
    /// Whether a backend close before any response byte may be answered by
    /// sending the request again on a fresh connection: only after a pooled
    /// connection, only once, and only for idempotent methods (RFC 9110
    /// §9.2.2: a POST may have been read and run).
    fn may_retry_fresh(&self) -> bool {
        self.reused && !self.retried_fresh && is_idempotent(&self.method)
    }
}

#[derive(Debug)]
enum BodyDecoder {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

#[derive(Debug)]
struct Relay {
    decoder: BodyDecoder,
    chunked_down: bool,
    close_client_after: bool,
    reusable: bool,
    sse: Option<SseTracker>,
    last_upstream: Instant,
    last_downstream: Instant,
}

impl Relay {
    /// When the backend has been silent for too long.
    fn idle_deadline(&self, cfg: &CoreConfig) -> Instant {
        let idle = if self.sse.is_some() {
            cfg.sse_idle_timeout
        } else {
            cfg.response_timeout
        };
        self.last_upstream + idle
    }

    /// When the next SSE keepalive is due, if one may be sent at all:
    /// keepalives are on, the stream is re-chunked towards the client, and
    /// it is between events (mid-event the stream is not idle, and the next
    /// backend bytes move the deadline).
    fn keepalive_due(&self, cfg: &CoreConfig) -> Option<Instant> {
        let ka = cfg.sse_keepalive_interval;
        (!ka.is_zero() && self.chunked_down && self.sse.as_ref().is_some_and(|s| s.at_boundary()))
            .then(|| self.last_downstream + ka)
    }
}

#[derive(Debug)]
enum State {
    /// Between requests on a keep-alive connection.
    Idle { since: Instant },
    /// Part of a head has arrived; the first `scanned` bytes of it hold
    /// no terminator and no bare LF.
    ReadingHead { since: Instant, scanned: usize },
    /// The head is in; reading the body.
    ReadingBody {
        since: Instant,
        head: RequestHead,
        decoder: BodyDecoder,
        body: Vec<u8>,
    },
    /// Waiting for the driver to connect to a backend.
    Connecting { since: Instant, req: InFlight },
    /// Request sent (or being sent); waiting for the response head.
    AwaitingResponse { since: Instant, req: InFlight },
    /// Relaying the response body.
    Relaying { req: InFlight, relay: Relay },
    /// Done; the client connection is closing or closed.
    Closed,
}

/// One client connection's proxy logic. See the module docs for the
/// polling order.
#[derive(Debug)]
pub struct Connection {
    shared: Arc<Shared>,
    peer: String,
    state: State,
    client_in: Vec<u8>,
    upstream_in: Vec<u8>,
    to_client: Vec<u8>,
    to_upstream: Vec<u8>,
    /// Reused output buffer of the chunked decoder.
    decode_scratch: Vec<u8>,
    actions: VecDeque<Action>,
}

/// Methods whose requests may be sent again (RFC 9110 §9.2.2).
fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS" | "PUT")
}

/// Methods the proxy forwards. Methods are case-sensitive (RFC 9110 §9.1);
/// anything else gets 501 rather than a guess about how a backend reads it.
fn is_supported_method(method: &str) -> bool {
    matches!(
        method,
        "GET" | "POST" | "DELETE" | "HEAD" | "OPTIONS" | "PUT" | "PATCH"
    )
}

/// Header names compared the way CGI-style servers fold them (`_` = `-`).
fn folded_name_is(name: &str, lower_dashed: &str) -> bool {
    name.len() == lower_dashed.len()
        && name
            .bytes()
            .zip(lower_dashed.bytes())
            .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

/// Whether a `Content-Type` value is `text/event-stream` (ASCII case
/// insensitive, after leading whitespace as [`str::trim_start`] sees it).
fn is_event_stream(content_type: &[u8]) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    // The type is ASCII, so it can only sit in the leading valid UTF-8.
    let valid = content_type.utf8_chunks().next().map_or("", |c| c.valid());
    let v = valid.trim_start().as_bytes();
    v.get(..SSE.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SSE))
}

fn jsonrpc_error_body(status: u16, message: &str) -> Vec<u8> {
    let code = match status {
        404 => -32001,
        400 | 413 | 431 => -32600,
        _ => -32603,
    };
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message},
    })
    .to_string()
    .into_bytes()
}

impl Connection {
    /// A new client connection from `peer` (an IP address string, used for
    /// `X-Forwarded-For`).
    pub fn new(shared: Arc<Shared>, peer: impl Into<String>, now: Instant) -> Self {
        shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
        Self {
            shared,
            peer: peer.into(),
            state: State::Idle { since: now },
            client_in: Vec::new(),
            upstream_in: Vec::new(),
            to_client: Vec::new(),
            to_upstream: Vec::new(),
            decode_scratch: Vec::new(),
            actions: VecDeque::new(),
        }
    }

    // ---------------------------------------------------------------- inputs

    /// Plaintext bytes from the client.
    pub fn handle_downstream_data(&mut self, now: Instant, data: &[u8]) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.client_in.extend_from_slice(data);
        self.advance_client(now);
    }

    /// The client closed its side (or the connection broke).
    pub fn handle_downstream_eof(&mut self, _now: Instant) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Closed => return,
            State::Idle { .. } | State::ReadingHead { .. } | State::ReadingBody { .. } => {}
            State::Connecting { req, .. } => {
                self.actions.push_back(Action::AbortUpstream);
                drop(req);
            }
            State::AwaitingResponse { req, .. } => {
                self.shared.metrics.error(ErrorKind::ClientGone);
                self.shared.backends.request_finished(req.backend);
                self.actions.push_back(Action::AbortUpstream);
            }
            State::Relaying { req, relay } => {
                self.shared.metrics.error(ErrorKind::ClientGone);
                self.shared.backends.request_finished(req.backend);
                if relay.sse.is_some() {
                    self.shared.metrics.sse_ended();
                }
                self.actions.push_back(Action::AbortUpstream);
            }
        }
        self.to_upstream.clear();
        self.to_client.clear();
        self.actions
            .push_back(Action::CloseDownstream { flush: false });
    }

    /// The upstream connection asked for by [`Action::ConnectUpstream`] is
    /// ready; `reused` says it came from the idle pool.
    pub fn handle_upstream_connected(&mut self, now: Instant, reused: bool) {
        if !matches!(self.state, State::Connecting { .. }) {
            // Spurious: nothing is waiting for a connection.
            return;
        }
        let State::Connecting { mut req, .. } = std::mem::replace(&mut self.state, State::Closed)
        else {
            unreachable!("checked above")
        };
        if !reused {
            self.shared.backends.mark_up(req.backend);
        }
        req.reused = reused;
        self.shared.backends.request_started(req.backend);
        // The request is kept only while a fresh-connection retry is
        // still possible (see `upstream_ended`).
        self.to_upstream = if req.may_retry_fresh() {
            req.request_bytes.clone()
        } else {
            std::mem::take(&mut req.request_bytes)
        };
        self.upstream_in.clear();
        self.state = State::AwaitingResponse { since: now, req };
    }

    /// Connecting to the backend failed (refused, unreachable, timed out).
    pub fn handle_upstream_connect_failed(&mut self, now: Instant) {
        if !matches!(self.state, State::Connecting { .. }) {
            return;
        }
        let State::Connecting { req, .. } = std::mem::replace(&mut self.state, State::Closed)
        else {
            unreachable!("checked above")
        };
        self.connect_failed(now, req);
        self.resume_client(now);
    }

    fn connect_failed(&mut self, now: Instant, mut req: InFlight) {
        let shared = self.shared.clone();
        shared.metrics.error(ErrorKind::UpstreamConnect);
        shared.backends.mark_down(req.backend);
        req.tried.push(req.backend);
        let retry = match &req.route {
            Route::Session { id } => {
                // The backend that holds this session is gone, and so is the
                // session: answer 404 at once so the client re-initializes.
                shared.affinity.remove_dropped(id);
                shared.metrics.error(ErrorKind::UnknownSession);
                self.local_response(
                    now,
                    404,
                    "session backend unreachable; re-initialize",
                    req.client_keep_alive,
                    &[],
                );
                return;
            }
            Route::NewSession { .. } => shared.backends.pick_round_robin(&req.tried),
            Route::Stateless { .. } => shared.backends.pick_least_outstanding(&req.tried),
        };
        match retry {
            Some(b) => {
                req.backend = b;
                self.actions.push_back(Action::ConnectUpstream {
                    backend: b,
                    fresh: false,
                });
                self.state = State::Connecting { since: now, req };
            }
            None => self.no_backend(now, req.client_keep_alive),
        }
    }

    /// Bytes from the upstream connection.
    pub fn handle_upstream_data(&mut self, now: Instant, data: &[u8]) {
        match &self.state {
            State::AwaitingResponse { .. } | State::Relaying { .. } => {}
            _ => return,
        }
        self.upstream_in.extend_from_slice(data);
        self.advance_upstream(now);
        self.resume_client(now);
    }

    /// The upstream connection closed cleanly (FIN).
    pub fn handle_upstream_eof(&mut self, now: Instant) {
        self.upstream_ended(now, false);
        self.resume_client(now);
    }

    /// The upstream connection failed (reset, write error). Unlike a clean
    /// EOF this never completes a close-delimited body.
    pub fn handle_upstream_error(&mut self, now: Instant) {
        self.upstream_ended(now, true);
        self.resume_client(now);
    }

    fn upstream_ended(&mut self, now: Instant, error: bool) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::AwaitingResponse { mut req, .. } => {
                self.shared.backends.request_finished(req.backend);
                if self.upstream_in.is_empty() && req.may_retry_fresh() {
                    // A pooled connection the backend had already closed.
                    req.retried_fresh = true;
                    self.to_upstream.clear();
                    self.actions.push_back(Action::AbortUpstream);
                    self.actions.push_back(Action::ConnectUpstream {
                        backend: req.backend,
                        fresh: true,
                    });
                    self.state = State::Connecting { since: now, req };
                    return;
                }
                self.shared.metrics.error(ErrorKind::UpstreamReset);
                self.actions.push_back(Action::AbortUpstream);
                self.local_response(
                    now,
                    502,
                    "backend closed the connection before responding",
                    req.client_keep_alive,
                    &[],
                );
            }
            State::Relaying { req, mut relay } => {
                if !error && matches!(relay.decoder, BodyDecoder::UntilClose) {
                    self.finish_response(now, req, relay, false);
                    return;
                }
                self.shared.backends.request_finished(req.backend);
                self.shared.metrics.error(ErrorKind::UpstreamReset);
                self.actions.push_back(Action::AbortUpstream);
                self.end_broken_stream(&mut relay);
            }
            other => self.state = other,
        }
    }

    /// A backend died mid-body. An SSE stream cut between events ends
    /// cleanly (terminating chunk, then close) so the client can reconnect;
    /// anything else is cut hard so the client cannot mistake a truncated
    /// body for a whole one.
    fn end_broken_stream(&mut self, relay: &mut Relay) {
        let clean = relay.chunked_down && relay.sse.as_ref().is_some_and(|s| s.at_boundary());
        if relay.sse.is_some() {
            self.shared.metrics.sse_ended();
        }
        self.state = State::Closed;
        if clean {
            self.to_client.extend_from_slice(CHUNKED_END);
            self.actions
                .push_back(Action::CloseDownstream { flush: true });
        } else {
            self.actions
                .push_back(Action::CloseDownstream { flush: false });
        }
    }

    /// The timer from [`Connection::poll_timeout`] fired (early calls are
    /// ignored).
    pub fn handle_timeout(&mut self, now: Instant) {
        let cfg = &self.shared.config;
        match &mut self.state {
            State::Idle { since } => {
                if now >= *since + cfg.client_idle_timeout {
                    self.state = State::Closed;
                    self.actions
                        .push_back(Action::CloseDownstream { flush: true });
                }
            }
            State::ReadingHead { since, .. } | State::ReadingBody { since, .. } => {
                if now >= *since + cfg.request_timeout {
                    self.shared.metrics.error(ErrorKind::ClientTimeout);
                    self.local_response(now, 408, "request not received in time", false, &[]);
                }
            }
            State::Connecting { since, .. } => {
                if now >= *since + cfg.connect_timeout {
                    let State::Connecting { req, .. } =
                        std::mem::replace(&mut self.state, State::Closed)
                    else {
                        unreachable!("matched above")
                    };
                    self.actions.push_back(Action::AbortUpstream);
                    self.connect_failed(now, req);
                }
            }
            State::AwaitingResponse { since, .. } => {
                if now >= *since + cfg.response_timeout {
                    let State::AwaitingResponse { req, .. } =
                        std::mem::replace(&mut self.state, State::Closed)
                    else {
                        unreachable!("matched above")
                    };
                    self.shared.backends.request_finished(req.backend);
                    self.shared.metrics.error(ErrorKind::UpstreamTimeout);
                    self.to_upstream.clear();
                    self.actions.push_back(Action::AbortUpstream);
                    self.local_response(
                        now,
                        504,
                        "backend did not respond in time",
                        req.client_keep_alive,
                        &[],
                    );
                }
            }
            State::Relaying { relay, req } => {
                if now >= relay.idle_deadline(cfg) {
                    self.shared.backends.request_finished(req.backend);
                    self.shared.metrics.error(ErrorKind::UpstreamTimeout);
                    self.to_upstream.clear();
                    self.actions.push_back(Action::AbortUpstream);
                    let State::Relaying { mut relay, .. } =
                        std::mem::replace(&mut self.state, State::Closed)
                    else {
                        unreachable!("matched above")
                    };
                    self.end_broken_stream(&mut relay);
                    return;
                }
                if relay.keepalive_due(cfg).is_some_and(|t| now >= t) {
                    encode_chunk(KEEPALIVE, &mut self.to_client);
                    relay.last_downstream = now;
                    self.shared
                        .metrics
                        .sse_keepalives
                        .fetch_add(1, Ordering::Relaxed);
                    if let Route::Session { id } = &req.route {
                        self.shared.affinity.touch(id, now);
                    }
                }
            }
            State::Closed => {}
        }
        self.resume_client(now);
    }

    // --------------------------------------------------------------- outputs

    /// The next thing the driver must do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Bytes waiting to be written to the client.
    pub fn downstream_pending(&self) -> &[u8] {
        &self.to_client
    }

    /// The driver wrote the first `n` pending downstream bytes.
    pub fn downstream_consumed(&mut self, now: Instant, n: usize) {
        let n = n.min(self.to_client.len());
        self.to_client.drain(..n);
        self.resume_client(now);
    }

    /// Bytes waiting to be written to the current upstream connection.
    pub fn upstream_pending(&self) -> &[u8] {
        &self.to_upstream
    }

    /// The driver wrote the first `n` pending upstream bytes.
    pub fn upstream_consumed(&mut self, n: usize) {
        let n = n.min(self.to_upstream.len());
        self.to_upstream.drain(..n);
    }

    /// Whether the driver should read more from the client now.
    pub fn wants_downstream_read(&self) -> bool {
        let cfg = &self.shared.config;
        // Body bytes move out of `client_in` as they arrive, so this bounds
        // unparsed input to one head or a window of pipelined requests.
        let input_limit = cfg.max_pipelined_bytes.max(cfg.max_header_bytes);
        !matches!(self.state, State::Closed)
            && self.client_in.len() < input_limit
            && self.to_client.len() < cfg.max_downstream_buffer
    }

    /// Whether the driver should read more from the backend now (false
    /// while the client is slow: backpressure).
    pub fn wants_upstream_read(&self) -> bool {
        matches!(
            self.state,
            State::AwaitingResponse { .. } | State::Relaying { .. }
        ) && self.to_client.len() < self.shared.config.max_downstream_buffer
    }

    /// The earliest time at which [`Connection::handle_timeout`] must be
    /// called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let cfg = &self.shared.config;
        match &self.state {
            State::Idle { since } => Some(*since + cfg.client_idle_timeout),
            State::ReadingHead { since, .. } | State::ReadingBody { since, .. } => {
                Some(*since + cfg.request_timeout)
            }
            State::Connecting { since, .. } => Some(*since + cfg.connect_timeout),
            State::AwaitingResponse { since, .. } => Some(*since + cfg.response_timeout),
            State::Relaying { relay, .. } => {
                let idle = relay.idle_deadline(cfg);
                Some(relay.keepalive_due(cfg).map_or(idle, |ka| idle.min(ka)))
            }
            State::Closed => None,
        }
    }

    /// Whether an SSE response is being relayed right now.
    pub fn is_streaming_sse(&self) -> bool {
        matches!(&self.state, State::Relaying { relay, .. } if relay.sse.is_some())
    }

    // -------------------------------------------------------- client parsing

    fn advance_client(&mut self, now: Instant) {
        loop {
            match &mut self.state {
                State::Idle { .. } => {
                    // Do not start another request while the client has not
                    // read the answers to the previous ones.
                    if self.client_in.is_empty()
                        || self.to_client.len() >= self.shared.config.max_downstream_buffer
                    {
                        return;
                    }
                    self.state = State::ReadingHead {
                        since: now,
                        scanned: 0,
                    };
                }
                State::ReadingHead { since, scanned } => {
                    let since = *since;
                    let cfg = &self.shared.config;
                    match http::parse_request_head_resume(
                        &self.client_in,
                        scanned,
                        cfg.max_header_bytes,
                        cfg.max_headers,
                    ) {
                        Ok(None) => return,
                        Ok(Some((head, len))) => {
                            self.client_in.drain(..len);
                            if let Err(e) = self.start_body(now, since, head) {
                                return self.reject(now, &e);
                            }
                        }
                        Err(e) => return self.reject(now, &e),
                    }
                }
                State::ReadingBody { decoder, body, .. } => {
                    let max = self.shared.config.max_body_bytes;
                    let done = match decoder {
                        BodyDecoder::Length(remaining) => {
                            let take = (*remaining).min(self.client_in.len() as u64) as usize;
                            body.extend_from_slice(&self.client_in[..take]);
                            self.client_in.drain(..take);
                            *remaining -= take as u64;
                            *remaining == 0
                        }
                        BodyDecoder::Chunked(d) => match d.decode(&self.client_in, body) {
                            Ok(used) => {
                                self.client_in.drain(..used);
                                if body.len() as u64 > max {
                                    return self.reject(now, &HttpError::BodyTooLarge(max));
                                }
                                d.is_done()
                            }
                            Err(e) => return self.reject(now, &e),
                        },
                        BodyDecoder::UntilClose => unreachable!("requests never read to close"),
                    };
                    if !done {
                        return;
                    }
                    let State::ReadingBody { head, body, .. } =
                        std::mem::replace(&mut self.state, State::Closed)
                    else {
                        unreachable!("matched above")
                    };
                    self.dispatch(now, head, body);
                }
                // A request is in flight; pipelined bytes wait in client_in.
                _ => return,
            }
        }
    }

    fn start_body(
        &mut self,
        now: Instant,
        since: Instant,
        head: RequestHead,
    ) -> Result<(), HttpError> {
        let max = self.shared.config.max_body_bytes;
        let decoder = match head.framing {
            BodyFraming::None => None,
            BodyFraming::Length(n) if n > max => return Err(HttpError::BodyTooLarge(max)),
            BodyFraming::Length(n) => Some(BodyDecoder::Length(n)),
            BodyFraming::Chunked => Some(BodyDecoder::Chunked(ChunkedDecoder::new())),
            BodyFraming::UntilClose => unreachable!("request framing is never until-close"),
        };
        match decoder {
            None => {
                self.state = State::Closed;
                self.dispatch(now, head, Vec::new());
            }
            Some(decoder) => {
                if head.expect_continue {
                    self.to_client
                        .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                self.state = State::ReadingBody {
                    since,
                    head,
                    decoder,
                    body: Vec::new(),
                };
            }
        }
        Ok(())
    }

    /// Answer a framing error and close: after one, the byte stream can no
    /// longer be trusted.
    fn reject(&mut self, now: Instant, e: &HttpError) {
        let (status, kind) = match e {
            HttpError::HeadTooLarge(_) | HttpError::TooManyHeaders(_) => {
                (431, ErrorKind::HeaderTooLarge)
            }
            HttpError::BodyTooLarge(_) => (413, ErrorKind::BodyTooLarge),
            HttpError::Smuggling(_) => (400, ErrorKind::Smuggling),
            HttpError::UnsupportedCoding => (501, ErrorKind::UnsupportedCoding),
            HttpError::Malformed(_) => (400, ErrorKind::BadRequest),
        };
        self.shared.metrics.error(kind);
        self.client_in.clear();
        self.local_response(now, status, &e.to_string(), false, &[]);
    }

    /// A whole request is in: authorize it, then route it.
    fn dispatch(&mut self, now: Instant, head: RequestHead, body: Vec<u8>) {
        let shared = self.shared.clone();
        shared.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let keep_alive = head.keep_alive;
        if !is_supported_method(&head.method) {
            shared.metrics.error(ErrorKind::BadRequest);
            return self.local_response(
                now,
                501,
                "method not supported by the proxy",
                keep_alive,
                &[],
            );
        }
        // Only needed for metadata and challenges, so built on demand.
        let host = || {
            auth::sanitized_host(header(&head.headers, "host"))
                .unwrap_or_else(|| "localhost".to_string())
        };
        let mut principal = None;
        if let Some(auth) = &shared.auth {
            let path = head.target.split('?').next().unwrap_or("");
            if head.method == "GET"
                && path
                    .strip_prefix(auth::WELL_KNOWN)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            {
                return self.metadata_response(now, auth, &host(), keep_alive);
            }
            let Some(unix) = shared.wall.unix_secs(now) else {
                return self.local_response(now, 503, "proxy clock not set", keep_alive, &[]);
            };
            let verdict = if header_count(&head.headers, "authorization") > 1 {
                auth.stats.reject(Rejection::InvalidRequest);
                Err(Rejection::InvalidRequest)
            } else {
                auth.authorize(header(&head.headers, "authorization"), unix)
            };
            match verdict {
                Ok(p) => principal = Some(p),
                Err(r) => return self.auth_reject(now, r, &host(), &[], keep_alive),
            }
        }
        // The body is parsed once: for routing (initialize? method?) and for
        // scope checks.
        let parsed = if head.method == "POST" {
            mcp::jsonrpc_calls(&body)
        } else {
            None
        };
        let route = match mcp::classify_parsed(&head.headers, mcp::first_method(parsed.as_deref()))
        {
            Ok(r) => r,
            Err(e) => {
                shared.metrics.error(ErrorKind::BadMcpHeaders);
                let keep = keep_alive && !matches!(e, McpError::DuplicateSessionId);
                return self.local_response(now, 400, &e.to_string(), keep, &[]);
            }
        };
        if let (Some(auth), Some(p)) = (&shared.auth, &principal) {
            let mut calls = if head.method == "POST" {
                match parsed {
                    Some(c) => c,
                    // A body we cannot read is a body whose scopes we cannot
                    // check; a lenient backend might still run it.
                    None if !auth.config.scope_rules.is_empty() => {
                        shared.metrics.error(ErrorKind::BadRequest);
                        return self.local_response(
                            now,
                            400,
                            "request body is not readable JSON-RPC (scope rules apply)",
                            keep_alive,
                            &[],
                        );
                    }
                    None => Vec::new(),
                }
            } else {
                Vec::new()
            };
            if let Route::Stateless { method, name } = &route {
                calls.push(mcp::Call {
                    method: method.clone(),
                    name: name.clone(),
                });
            }
            if calls.is_empty() {
                calls.push(mcp::Call::default());
            }
            let missing = auth.missing_scopes(p, &calls);
            if !missing.is_empty() {
                auth.stats.reject(Rejection::InsufficientScope);
                return self.auth_reject(
                    now,
                    Rejection::InsufficientScope,
                    &host(),
                    &missing,
                    keep_alive,
                );
            }
        }
        let backend = match &route {
            Route::Session { id } => match shared.affinity.lookup(id, now) {
                Some(b) => Some(b),
                None => {
                    shared.metrics.error(ErrorKind::UnknownSession);
                    return self.local_response(
                        now,
                        404,
                        "unknown or expired session; re-initialize",
                        keep_alive,
                        &[],
                    );
                }
            },
            Route::NewSession { .. } => shared.backends.pick_round_robin(&[]),
            Route::Stateless { .. } => {
                shared
                    .metrics
                    .stateless_requests
                    .fetch_add(1, Ordering::Relaxed);
                shared.backends.pick_least_outstanding(&[])
            }
        };
        let Some(backend) = backend else {
            return self.no_backend(now, keep_alive);
        };
        let request_bytes = self.upstream_request(&head, &body, principal.as_deref());
        self.actions.push_back(Action::ConnectUpstream {
            backend,
            fresh: false,
        });
        self.state = State::Connecting {
            since: now,
            req: InFlight {
                method: head.method,
                route,
                client_keep_alive: keep_alive,
                client_minor: head.minor_version,
                request_bytes,
                backend,
                tried: Vec::new(),
                reused: false,
                retried_fresh: false,
            },
        };
    }

    /// The request as sent to the backend: same method, target and end-to-end
    /// fields; hop-by-hop fields dropped; the body re-framed with
    /// Content-Length (never chunked, so the backend sees one unambiguous
    /// framing whatever the client sent).
    fn upstream_request(
        &self,
        head: &RequestHead,
        body: &[u8],
        principal: Option<&auth::Principal>,
    ) -> Vec<u8> {
        let auth = self.shared.auth.as_ref();
        let strip_token = auth.is_some_and(|a| !a.config.forward_token);
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(head.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(head.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for h in &head.headers {
            let name = h.name.as_str();
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            if is_hop_by_hop(name)
                || is("expect")
                || is("x-forwarded-for")
                || is("x-forwarded-proto")
                || header_has_token(&head.headers, "connection", name)
                || (strip_token && is("authorization"))
                || (auth.is_some() && folded_name_is(name, SUBJECT_HEADER))
            {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&h.value);
            out.extend_from_slice(b"\r\n");
        }
        let forwarded = header(&head.headers, "x-forwarded-for")
            .map(|v| format!("{}, {}", String::from_utf8_lossy(v), self.peer))
            .unwrap_or_else(|| self.peer.clone());
        out.extend_from_slice(format!("X-Forwarded-For: {forwarded}\r\n").as_bytes());
        out.extend_from_slice(b"X-Forwarded-Proto: https\r\n");
        if auth.is_some_and(|a| a.config.subject_header)
            && let Some(sub) = principal.and_then(|p| p.subject.as_deref())
            && sub.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            out.extend_from_slice(format!("X-Authenticated-Subject: {sub}\r\n").as_bytes());
        }
        let needs_length =
            !body.is_empty() || matches!(head.method.as_str(), "POST" | "PUT" | "PATCH");
        if needs_length {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }

    /// 401/403 with the RFC 6750 challenge. Nothing reaches a backend.
    fn auth_reject(
        &mut self,
        now: Instant,
        r: Rejection,
        host: &str,
        missing: &[String],
        keep_alive: bool,
    ) {
        let challenge = auth::challenge(r, host, missing);
        self.local_response(
            now,
            r.status(),
            r.description(),
            keep_alive,
            &[("WWW-Authenticate", &challenge)],
        );
    }

    /// RFC 9728 protected-resource metadata, served without a token.
    fn metadata_response(
        &mut self,
        now: Instant,
        auth: &auth::Authenticator,
        host: &str,
        keep_alive: bool,
    ) {
        let resource = auth
            .config
            .resource
            .clone()
            .unwrap_or_else(|| format!("https://{host}/mcp"));
        let body = serde_json::json!({
            "resource": resource,
            "authorization_servers": auth.config.authorization_servers,
            "bearer_methods_supported": ["header"],
            "scopes_supported": auth.scopes_supported(),
        })
        .to_string();
        self.send_local(
            now,
            200,
            &[("Cache-Control", "max-age=300")],
            body.as_bytes(),
            keep_alive,
        );
    }

    /// 503: no backend may take the request right now.
    fn no_backend(&mut self, now: Instant, keep_alive: bool) {
        self.shared.metrics.error(ErrorKind::NoBackend);
        self.local_response(
            now,
            503,
            "no healthy backend",
            keep_alive,
            &[("Retry-After", "1")],
        );
    }

    /// A response generated by the proxy. `keep_alive == false` closes the
    /// client connection once it is written.
    fn local_response(
        &mut self,
        now: Instant,
        status: u16,
        message: &str,
        keep_alive: bool,
        extra: &[(&str, &str)],
    ) {
        let body = jsonrpc_error_body(status, message);
        self.send_local(now, status, extra, &body, keep_alive);
    }

    /// Queue a complete JSON response of the proxy's own, then either wait
    /// for the next request or close once it is written.
    fn send_local(
        &mut self,
        now: Instant,
        status: u16,
        extra: &[(&str, &str)],
        body: &[u8],
        keep_alive: bool,
    ) {
        self.shared
            .metrics
            .local_responses
            .fetch_add(1, Ordering::Relaxed);
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            reason_phrase(status),
            body.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        self.to_client.extend_from_slice(head.as_bytes());
        self.to_client.extend_from_slice(body);
        if keep_alive {
            // The next pipelined request is picked up by the caller's
            // `advance_client` loop (or by `resume_client`), never by
            // recursion: a client can pipeline thousands of requests that
            // the proxy answers itself.
            self.state = State::Idle { since: now };
        } else {
            self.state = State::Closed;
            self.actions
                .push_back(Action::CloseDownstream { flush: true });
        }
    }

    /// Continue with buffered pipelined requests after a response ended
    /// outside the client-parsing loop.
    fn resume_client(&mut self, now: Instant) {
        if matches!(self.state, State::Idle { .. }) && !self.client_in.is_empty() {
            self.advance_client(now);
        }
    }

    // ------------------------------------------------------ upstream parsing

    fn advance_upstream(&mut self, now: Instant) {
        if let State::AwaitingResponse { .. } = self.state {
            loop {
                let State::AwaitingResponse { req, .. } = &self.state else {
                    return;
                };
                let cfg = &self.shared.config;
                match http::parse_response_head(
                    &self.upstream_in,
                    &req.method,
                    cfg.max_response_header_bytes,
                    cfg.max_headers * 2,
                ) {
                    Ok(None) => return,
                    Ok(Some((head, len))) => {
                        self.upstream_in.drain(..len);
                        if (100..200).contains(&head.status) {
                            // Interim responses are not relayed: the proxy
                            // already answered Expect itself.
                            continue;
                        }
                        let State::AwaitingResponse { req, .. } =
                            std::mem::replace(&mut self.state, State::Closed)
                        else {
                            unreachable!("matched above")
                        };
                        self.start_response(now, req, head);
                        break;
                    }
                    Err(_) => {
                        let State::AwaitingResponse { req, .. } =
                            std::mem::replace(&mut self.state, State::Closed)
                        else {
                            unreachable!("matched above")
                        };
                        self.shared.backends.request_finished(req.backend);
                        self.shared.metrics.error(ErrorKind::UpstreamProtocol);
                        self.actions.push_back(Action::AbortUpstream);
                        return self.local_response(
                            now,
                            502,
                            "backend sent an invalid response",
                            req.client_keep_alive,
                            &[],
                        );
                    }
                }
            }
        }
        self.relay_body(now);
    }

    fn start_response(&mut self, now: Instant, req: InFlight, head: ResponseHead) {
        let shared = self.shared.clone();
        let status = head.status;
        match &req.route {
            Route::NewSession { .. } => {
                if let Some(id) = header(&head.headers, mcp::SESSION_HEADER)
                    && mcp::valid_session_id(id)
                    && (200..300).contains(&status)
                {
                    shared
                        .affinity
                        .bind(&String::from_utf8_lossy(id), req.backend, now);
                }
            }
            Route::Session { id } => {
                if status == 404 {
                    shared.affinity.remove_dropped(id);
                } else if req.method == "DELETE" && (200..300).contains(&status) {
                    // Only a successful DELETE ends the session (405: the
                    // server keeps sessions; 401/429/5xx: nothing happened).
                    shared.affinity.remove_deleted(id);
                }
            }
            Route::Stateless { .. } => {}
        }
        let is_sse = header(&head.headers, "content-type").is_some_and(is_event_stream);
        let client_keep_alive = req.client_keep_alive && req.client_minor == 1;
        let (decoder, chunked_down, down_len) = match head.framing {
            BodyFraming::None => (BodyDecoder::Length(0), false, Some(0)),
            BodyFraming::Length(n) => (BodyDecoder::Length(n), false, Some(n)),
            BodyFraming::Chunked => (
                BodyDecoder::Chunked(ChunkedDecoder::new()),
                req.client_minor == 1,
                None,
            ),
            BodyFraming::UntilClose => (BodyDecoder::UntilClose, req.client_minor == 1, None),
        };
        // Without a length or chunking towards the client, only a close can
        // end the body.
        let close_client_after = !client_keep_alive || (down_len.is_none() && !chunked_down);
        let mut out = format!(
            "HTTP/1.1 {status} {}\r\n",
            if head.reason.is_empty() {
                reason_phrase(status)
            } else {
                &head.reason
            }
        )
        .into_bytes();
        for h in &head.headers {
            if is_hop_by_hop(&h.name) {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&h.value);
            out.extend_from_slice(b"\r\n");
        }
        let bodyless_status = status == 204 || status == 304;
        if chunked_down {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else if let Some(n) = down_len
            && !bodyless_status
        {
            let n = if req.method.eq_ignore_ascii_case("HEAD") {
                header(&head.headers, "content-length")
                    .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
                    .unwrap_or(n)
            } else {
                n
            };
            out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
        }
        if close_client_after {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        if is_sse {
            // Ask buffering intermediaries (nginx and friends) not to hold events.
            out.extend_from_slice(b"X-Accel-Buffering: no\r\n");
            shared.metrics.sse_started();
        }
        out.extend_from_slice(b"\r\n");
        self.to_client.extend_from_slice(&out);
        self.state = State::Relaying {
            req,
            relay: Relay {
                decoder,
                chunked_down,
                close_client_after,
                reusable: head.keep_alive,
                sse: is_sse.then(SseTracker::new),
                last_upstream: now,
                last_downstream: now,
            },
        };
    }

    fn relay_body(&mut self, now: Instant) {
        if !matches!(self.state, State::Relaying { .. }) {
            return;
        }
        let State::Relaying { req, mut relay } = std::mem::replace(&mut self.state, State::Closed)
        else {
            unreachable!("checked above")
        };
        if !self.upstream_in.is_empty() {
            relay.last_upstream = now;
        }
        // Body bytes go from `input` to the client buffer in one copy;
        // only chunked bodies pass through the (reused) decode buffer.
        let mut input = std::mem::take(&mut self.upstream_in);
        let done = match &mut relay.decoder {
            BodyDecoder::Length(remaining) => {
                let take = (*remaining).min(input.len() as u64) as usize;
                self.emit_body(&input[..take], &mut relay, now, &req);
                input.drain(..take);
                let BodyDecoder::Length(remaining) = &mut relay.decoder else {
                    unreachable!("matched above")
                };
                *remaining -= take as u64;
                *remaining == 0
            }
            BodyDecoder::Chunked(d) => {
                let mut decoded = std::mem::take(&mut self.decode_scratch);
                decoded.clear();
                let r = d.decode(&input, &mut decoded);
                self.emit_body(&decoded, &mut relay, now, &req);
                self.decode_scratch = decoded;
                match r {
                    Ok(used) => {
                        input.drain(..used);
                        matches!(&relay.decoder, BodyDecoder::Chunked(d) if d.is_done())
                    }
                    Err(_) => {
                        // What decoded cleanly before the error was forwarded.
                        self.upstream_in = input;
                        self.shared.metrics.error(ErrorKind::UpstreamProtocol);
                        self.shared.backends.request_finished(req.backend);
                        self.actions.push_back(Action::AbortUpstream);
                        return self.end_broken_stream(&mut relay);
                    }
                }
            }
            BodyDecoder::UntilClose => {
                self.emit_body(&input, &mut relay, now, &req);
                input.clear();
                false
            }
        };
        self.upstream_in = input;
        if done {
            let leftover = !self.upstream_in.is_empty();
            self.finish_response(now, req, relay, leftover);
        } else {
            self.state = State::Relaying { req, relay };
        }
    }

    fn emit_body(&mut self, data: &[u8], relay: &mut Relay, now: Instant, req: &InFlight) {
        if data.is_empty() {
            return;
        }
        if relay.chunked_down {
            encode_chunk(data, &mut self.to_client);
        } else {
            self.to_client.extend_from_slice(data);
        }
        relay.last_downstream = now;
        if let Some(sse) = &mut relay.sse {
            let events = sse.feed(data);
            if events > 0 {
                self.shared
                    .metrics
                    .sse_events
                    .fetch_add(events, Ordering::Relaxed);
                if let Route::Session { id } = &req.route {
                    self.shared.affinity.touch(id, now);
                }
            }
        }
    }

    fn finish_response(&mut self, now: Instant, req: InFlight, relay: Relay, leftover: bool) {
        self.shared.backends.request_finished(req.backend);
        if relay.chunked_down {
            self.to_client.extend_from_slice(CHUNKED_END);
        }
        if relay.sse.is_some() {
            self.shared.metrics.sse_ended();
        }
        let reusable = relay.reusable && !leftover && self.to_upstream.is_empty();
        if leftover {
            self.shared.metrics.error(ErrorKind::UpstreamProtocol);
        }
        self.upstream_in.clear();
        self.to_upstream.clear();
        self.actions.push_back(Action::ReleaseUpstream { reusable });
        if relay.close_client_after {
            self.state = State::Closed;
            self.actions
                .push_back(Action::CloseDownstream { flush: true });
        } else {
            // The caller's `resume_client` picks up pipelined requests.
            self.state = State::Idle { since: now };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_event_stream;

    #[test]
    fn event_stream_content_types() {
        for yes in [
            &b"text/event-stream"[..],
            b"Text/Event-Stream; charset=utf-8",
            b" \ttext/event-stream",
            "\u{a0}text/event-stream".as_bytes(),
            b"text/event-stream\xff",
        ] {
            assert!(is_event_stream(yes), "{yes:?}");
        }
        for no in [
            &b""[..],
            b"text/event-strea",
            b"application/json",
            b"\xfftext/event-stream",
            b"x text/event-stream",
        ] {
            assert!(!is_event_stream(no), "{no:?}");
        }
        // Same verdicts as reading the value lossily and lowercasing it.
        let old = |v: &[u8]| {
            String::from_utf8_lossy(v)
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        };
        for v in [
            &b"TEXT/EVENT-STREAM"[..],
            "\u{2003}text/event-stream".as_bytes(),
            b" \xc3text/event-stream",
            b"text/\xc3\xa9vent-stream",
        ] {
            assert_eq!(is_event_stream(v), old(v), "{v:?}");
        }
    }
}

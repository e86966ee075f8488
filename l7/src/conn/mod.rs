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
//!
//! ## A request's way through
//! A complete request goes through phases, each of which may refuse it
//! with a [`Reject`] (`request.rs`): method allow-list → protected-resource
//! metadata (answered here) → authorize (JWT) → classify (MCP era, session
//! id, headers against body) → scopes → pick a backend (the session's own,
//! round-robin, or least outstanding) → build the upstream request
//! ([`crate::http::rewrite`]). A refusal becomes one response and one count
//! (`respond`). The response side (`response.rs`) learns or
//! forgets the session, rewrites the head, relays the body (re-chunked,
//! SSE tracked) and ends it cleanly or hard.

mod request;
mod response;

pub(crate) use request::{request_body_decoder, take_request_body};

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::http::{ChunkedDecoder, RequestHead, encode_chunk};
use crate::mcp::Route;
use crate::metrics::ErrorKind;
use crate::reject::Reject;
use crate::sse::{KEEPALIVE, SseTracker};
use crate::{CoreConfig, Shared};

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
    /// Whose quota a new session counts against (the token's subject, else
    /// the client's address); empty for any other route.
    owner: String,
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

/// How the rest of a message body is read off the buffered input.
#[derive(Debug)]
pub(crate) enum BodyDecoder {
    /// This many bytes are still to come.
    Length(u64),
    /// A chunked body.
    Chunked(ChunkedDecoder),
    /// Everything until the peer closes (responses only).
    UntilClose,
}

#[derive(Debug)]
struct Relay {
    decoder: BodyDecoder,
    chunked_down: bool,
    close_client_after: bool,
    reusable: bool,
    sse: Option<SseTracker>,
    /// When the backend last sent bytes.
    last_upstream: Instant,
    /// When bytes were last queued for the client (body or keepalive).
    last_downstream: Instant,
    /// When the client last took bytes while the proxy held back backend
    /// reads for it (the backend could not move then; the client did).
    last_drained: Instant,
    /// Draining: end this SSE stream at the boundary just reached.
    end_at_boundary: bool,
}

impl Relay {
    /// When the response has stood still for too long. Idle means neither
    /// side moved: while the proxy holds back backend reads for a slow
    /// client, every byte the client takes counts as movement.
    fn idle_deadline(&self, cfg: &CoreConfig) -> Instant {
        let idle = if self.sse.is_some() {
            cfg.sse_idle_timeout
        } else {
            cfg.response_timeout
        };
        self.last_upstream.max(self.last_drained) + idle
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
    /// An empty buffer the next forwarded request is written into (kept
    /// from an earlier request when it was at most [`SPARE_REQUEST_MAX`]),
    /// so that a keep-alive connection's requests cost no allocation.
    spare_request: Vec<u8>,
    actions: VecDeque<Action>,
    /// The proxy is draining: no new request after the current one.
    draining: bool,
    /// The request being answered is a HEAD: the proxy's own answers to
    /// it carry no content (RFC 9110 §9.3.2).
    answering_head: bool,
    /// End every SSE stream at its next event boundary (the drain's time
    /// is nearly up), answers to POSTs included.
    end_streams: bool,
    /// The last `Authorization` value this connection had verified.
    auth_memo: crate::auth::AuthMemo,
}

/// The largest request buffer kept for reuse (a larger one, from a large
/// body, is freed).
const SPARE_REQUEST_MAX: usize = 16 * 1024;

/// Methods whose requests may be sent again (RFC 9110 §9.2.2).
fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS" | "PUT")
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
            spare_request: Vec::new(),
            actions: VecDeque::new(),
            draining: false,
            answering_head: false,
            end_streams: false,
            auth_memo: Default::default(),
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
        self.to_upstream.clear();
        if req.may_retry_fresh() {
            self.to_upstream.extend_from_slice(&req.request_bytes);
        } else {
            // The emptied send buffer goes back with the request, to be
            // reused for a later one.
            std::mem::swap(&mut self.to_upstream, &mut req.request_bytes);
        }
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

    /// The timer from [`Connection::poll_timeout`] fired (early calls are
    /// ignored).
    pub fn handle_timeout(&mut self, now: Instant) {
        let cfg = &self.shared.config;
        let due = match &self.state {
            State::Idle { since } => now >= *since + cfg.client_idle_timeout,
            State::ReadingHead { since, .. } | State::ReadingBody { since, .. } => {
                now >= *since + cfg.request_timeout
            }
            State::Connecting { since, .. } => now >= *since + cfg.connect_timeout,
            State::AwaitingResponse { since, .. } => now >= *since + cfg.response_timeout,
            State::Relaying { relay, .. } => now >= relay.idle_deadline(cfg),
            State::Closed => false,
        };
        if due {
            self.time_out(now);
        } else {
            self.keepalive_if_due(now);
        }
        self.resume_client(now);
    }

    /// The current state ran out of time.
    fn time_out(&mut self, now: Instant) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Idle { .. } => self
                .actions
                .push_back(Action::CloseDownstream { flush: true }),
            State::ReadingHead { .. } | State::ReadingBody { .. } => {
                let r = Reject::new(
                    408,
                    ErrorKind::ClientTimeout,
                    crate::Fault::Client,
                    "request not received in time",
                );
                self.respond(now, r.keep_alive_if(false));
            }
            State::Connecting { req, .. } => {
                self.actions.push_back(Action::AbortUpstream);
                self.connect_failed(now, req);
            }
            State::AwaitingResponse { req, .. } => {
                self.abandon_upstream(&req, ErrorKind::UpstreamTimeout);
                let r = Reject::backend(
                    504,
                    ErrorKind::UpstreamTimeout,
                    "backend did not respond in time",
                );
                self.respond(now, r.keep_alive_if(req.client_keep_alive));
            }
            State::Relaying { req, mut relay } => {
                // A client that stopped reading while the proxy held back
                // the backend for it is the one that stood still.
                let kind = if self.backpressured() {
                    ErrorKind::ClientTimeout
                } else {
                    ErrorKind::UpstreamTimeout
                };
                self.abandon_upstream(&req, kind);
                self.end_broken_stream(&mut relay);
            }
            State::Closed => {}
        }
    }

    /// Give up on a response that stood still (`kind` says whose fault).
    fn abandon_upstream(&mut self, req: &InFlight, kind: ErrorKind) {
        self.shared.backends.request_finished(req.backend);
        self.shared.metrics.error(kind);
        self.to_upstream.clear();
        self.actions.push_back(Action::AbortUpstream);
    }

    /// An SSE comment line to a stream that has been quiet towards the
    /// client, between events.
    fn keepalive_if_due(&mut self, now: Instant) {
        let cfg = &self.shared.config;
        let State::Relaying { req, relay } = &mut self.state else {
            return;
        };
        if relay.keepalive_due(cfg).is_none_or(|t| now < t) {
            return;
        }
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
        let held_back = self.backpressured();
        self.to_client.drain(..n);
        if n > 0 {
            // A client still taking a response is not idle.
            match &mut self.state {
                State::Relaying { relay, .. } if held_back => relay.last_drained = now,
                State::Idle { since } => *since = now,
                _ => {}
            }
        }
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
        ) && !self.backpressured()
    }

    /// The client has not taken enough of what is queued for it: backend
    /// reads (and new requests) wait.
    fn backpressured(&self) -> bool {
        self.to_client.len() >= self.shared.config.max_downstream_buffer
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

    /// The proxy is draining: answer the request in flight (with
    /// `Connection: close`; an answer that comes as SSE, to a POST, runs to
    /// its end), end a GET event stream at its next event boundary (at once
    /// if it is between events), close an idle connection now. A spurious
    /// second call is harmless.
    pub fn drain(&mut self, now: Instant) {
        self.draining = true;
        self.end_stream_if_between_events();
        self.resume_client(now);
    }

    /// The drain's time is nearly up: end every SSE stream at its next
    /// event boundary, answers to POSTs included, so that no client sees
    /// a stream cut mid-event.
    pub fn drain_streams(&mut self, now: Instant) {
        self.draining = true;
        self.end_streams = true;
        self.end_stream_if_between_events();
        self.resume_client(now);
    }

    /// Whether a draining proxy ends this stream at its next boundary.
    fn stream_must_end(&self, req: &InFlight) -> bool {
        self.end_streams || (self.draining && req.method == "GET")
    }

    fn end_stream_if_between_events(&mut self) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Idle { .. } => self
                .actions
                .push_back(Action::CloseDownstream { flush: true }),
            State::Relaying { req, relay }
                if self.stream_must_end(&req)
                    && relay.sse.as_ref().is_some_and(|s| s.at_boundary()) =>
            {
                self.end_stream_for_drain(req, relay);
            }
            other => self.state = other,
        }
    }

    /// Whether an SSE response is being relayed right now.
    pub fn is_streaming_sse(&self) -> bool {
        matches!(&self.state, State::Relaying { relay, .. } if relay.sse.is_some())
    }
}

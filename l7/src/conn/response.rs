//! The backend side of a connection: connect failures and fail-over,
//! the response head, the body relay (SSE included), and how a response
//! ends (whole, cut short, or the backend gone).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Action, BodyDecoder, Connection, InFlight, Relay, SPARE_REQUEST_MAX, State};
use crate::http::{
    self, BodyFraming, CHUNKED_END, ChunkedDecoder, ClientHead, ResponseHead, encode_chunk, header,
    reason_phrase,
};
use crate::mcp::{self, Route};
use crate::metrics::ErrorKind;
use crate::reject::Reject;
use crate::sse::SseTracker;

/// Whether a `Content-Type` value is `text/event-stream` (ASCII case
/// insensitive, after leading whitespace as [`str::trim_start`] sees it).
pub(super) fn is_event_stream(content_type: &[u8]) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    // The usual value starts with the type itself: compare the bytes
    // without a UTF-8 pass.
    if let Some(p) = content_type.get(..SSE.len())
        && p.eq_ignore_ascii_case(SSE)
    {
        return true;
    }
    // The type is ASCII, so it can only sit in the leading valid UTF-8.
    let valid = content_type.utf8_chunks().next().map_or("", |c| c.valid());
    let v = valid.trim_start().as_bytes();
    v.get(..SSE.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SSE))
}

impl Connection {
    // ------------------------------------------------------- connecting

    pub(super) fn connect_failed(&mut self, now: Instant, mut req: InFlight) {
        let shared = self.shared.clone();
        shared.metrics.error(ErrorKind::UpstreamConnect);
        shared.backends.mark_down(req.backend);
        req.tried.push(req.backend);
        let retry = match &req.route {
            Route::Session { id } => {
                // The backend that holds this session is gone, and so is the
                // session: answer 404 at once so the client re-initializes.
                shared.affinity.remove_dropped(id);
                let r = Reject::unknown_session("session backend unreachable; re-initialize");
                return self.respond(now, r.keep_alive_if(req.client_keep_alive));
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
            None => self.respond(
                now,
                Reject::no_backend().keep_alive_if(req.client_keep_alive),
            ),
        }
    }

    pub(super) fn upstream_ended(&mut self, now: Instant, error: bool) {
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
                self.actions.push_back(Action::AbortUpstream);
                let r = Reject::backend(
                    502,
                    ErrorKind::UpstreamReset,
                    "backend closed the connection before responding",
                );
                self.respond(now, r.keep_alive_if(req.client_keep_alive));
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

    /// A backend died mid-body (or went idle). An SSE stream cut between
    /// events ends cleanly (terminating chunk, then close) so the client
    /// can reconnect; anything else is cut hard so the client cannot
    /// mistake a truncated body for a whole one.
    pub(super) fn end_broken_stream(&mut self, relay: &mut Relay) {
        let clean = relay.chunked_down && relay.sse.as_ref().is_some_and(|s| s.at_boundary());
        if relay.sse.is_some() {
            self.shared.metrics.sse_ended();
        }
        self.state = State::Closed;
        if clean {
            self.to_client.extend_from_slice(CHUNKED_END);
        }
        self.actions
            .push_back(Action::CloseDownstream { flush: clean });
    }

    // ------------------------------------------------------ response head

    pub(super) fn advance_upstream(&mut self, now: Instant) {
        while let State::AwaitingResponse { req, .. } = &self.state {
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
                }
                Err(_) => {
                    let State::AwaitingResponse { req, .. } =
                        std::mem::replace(&mut self.state, State::Closed)
                    else {
                        unreachable!("matched above")
                    };
                    self.shared.backends.request_finished(req.backend);
                    self.actions.push_back(Action::AbortUpstream);
                    let r = Reject::backend(
                        502,
                        ErrorKind::UpstreamProtocol,
                        "backend sent an invalid response",
                    );
                    return self.respond(now, r.keep_alive_if(req.client_keep_alive));
                }
            }
        }
        self.relay_body(now);
    }

    /// A backend's `Mcp-Session-Id` must be one a client can send back:
    /// visible ASCII, at most [`mcp::MAX_SESSION_ID`] bytes. Anything else
    /// is the backend's error (502), whatever the route.
    fn check_session_id(&self, head: &ResponseHead) -> Result<(), &'static str> {
        match header(&head.headers, mcp::SESSION_HEADER) {
            Some(id) if id.len() > mcp::MAX_SESSION_ID => Err("backend session id too long"),
            Some(id) if !mcp::valid_session_id(id) => {
                Err("backend session id is not visible ASCII")
            }
            _ => Ok(()),
        }
    }

    /// The `Mcp-Session-Id` the client is to see in place of the backend's,
    /// when ids are sealed: a new session's id sealed with its backend, or
    /// the client's own sealed id echoed. `Err` when a new id cannot be
    /// sealed (longer than the format allows).
    fn client_session_id(
        &self,
        req: &InFlight,
        head: &ResponseHead,
    ) -> Result<Option<String>, &'static str> {
        let (Some(sealer), Some(id)) = (
            &self.shared.sealer,
            header(&head.headers, mcp::SESSION_HEADER),
        ) else {
            return Ok(None);
        };
        match &req.route {
            Route::Session { id: client } => Ok(Some(client.clone())),
            Route::NewSession { .. } if mcp::valid_session_id(id) => {
                let name = &self.shared.backends.get(req.backend).name;
                sealer
                    .seal(name, id)
                    .map(Some)
                    .ok_or("backend session id too long to seal")
            }
            Route::NewSession { .. } | Route::Stateless { .. } => Ok(None),
        }
    }

    /// Learn or forget the session the response speaks for. `client_id` is
    /// the id the client will hold, when it differs from the backend's.
    fn track_session(
        &self,
        now: Instant,
        req: &InFlight,
        head: &ResponseHead,
        client_id: Option<&str>,
    ) {
        let status = head.status;
        match &req.route {
            Route::NewSession { .. } => {
                if let Some(id) = header(&head.headers, mcp::SESSION_HEADER)
                    && mcp::valid_session_id(id)
                    && (200..300).contains(&status)
                {
                    let id = String::from_utf8_lossy(id);
                    let bound = client_id.unwrap_or(&id);
                    self.shared
                        .affinity
                        .bind_owned(bound, req.backend, Some(&req.owner), now);
                }
            }
            Route::Session { id } => {
                if status == 404 {
                    self.shared.affinity.remove_dropped(id);
                } else if req.method == "DELETE" && (200..300).contains(&status) {
                    // Only a successful DELETE ends the session (405: the
                    // server keeps sessions; 401/429/5xx: nothing happened).
                    self.shared.affinity.remove_deleted(id);
                }
            }
            Route::Stateless { .. } => {}
        }
    }

    fn start_response(&mut self, now: Instant, req: InFlight, head: ResponseHead) {
        let client_id = match self.check_session_id(&head) {
            Ok(()) => self.client_session_id(&req, &head),
            Err(e) => Err(e),
        };
        let client_id = match client_id {
            Ok(id) => id,
            Err(why) => {
                self.shared.backends.request_finished(req.backend);
                self.actions.push_back(Action::AbortUpstream);
                let r = Reject::backend(502, ErrorKind::UpstreamProtocol, why);
                return self.respond(now, r.keep_alive_if(req.client_keep_alive));
            }
        };
        self.track_session(now, &req, &head, client_id.as_deref());
        let status = head.status;
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
        // end the body. A draining proxy closes after every response.
        let close_client_after =
            !client_keep_alive || (down_len.is_none() && !chunked_down) || self.draining;
        let bodyless_status = status == 204 || status == 304;
        let length = down_len
            .filter(|_| !chunked_down && !bodyless_status)
            .map(|n| {
                if req.method.eq_ignore_ascii_case("HEAD") {
                    header(&head.headers, "content-length")
                        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
                        .unwrap_or(n)
                } else {
                    n
                }
            });
        let framing = ClientHead {
            reason: if head.reason.is_empty() {
                reason_phrase(status)
            } else {
                &head.reason
            },
            chunked: chunked_down,
            length,
            close: close_client_after,
            event_stream: is_sse,
            session_id: client_id.as_deref(),
        };
        http::write_response_head(&head, framing, &mut self.to_client);
        if is_sse {
            self.shared.metrics.sse_started();
        }
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
                last_drained: now,
                end_at_boundary: false,
            },
        };
    }

    // --------------------------------------------------------------- body

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
                *remaining -= take as u64;
                let whole = *remaining == 0;
                self.emit_body(&input[..take], &mut relay, now, &req);
                input.drain(..take);
                whole
            }
            BodyDecoder::Chunked(d) => {
                let mut decoded = std::mem::take(&mut self.decode_scratch);
                decoded.clear();
                let r = d.decode(&input, &mut decoded);
                let whole = d.is_done();
                self.emit_body(&decoded, &mut relay, now, &req);
                self.decode_scratch = decoded;
                match r {
                    Ok(used) => {
                        input.drain(..used);
                        whole
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
        } else if relay.end_at_boundary {
            self.end_stream_for_drain(req, relay);
        } else {
            self.state = State::Relaying { req, relay };
        }
    }

    /// A draining proxy ends an SSE stream at an event boundary: the
    /// client gets the terminating chunk (it reconnects elsewhere), the
    /// backend connection is closed.
    pub(super) fn end_stream_for_drain(&mut self, req: InFlight, mut relay: Relay) {
        self.shared.backends.request_finished(req.backend);
        self.upstream_in.clear();
        self.to_upstream.clear();
        self.actions.push_back(Action::AbortUpstream);
        self.end_broken_stream(&mut relay);
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
            if sse.at_boundary() && self.stream_must_end(req) {
                relay.end_at_boundary = true;
            }
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

    pub(super) fn finish_response(
        &mut self,
        now: Instant,
        req: InFlight,
        relay: Relay,
        leftover: bool,
    ) {
        self.shared.backends.request_finished(req.backend);
        let mut spare = req.request_bytes;
        if spare.capacity() <= SPARE_REQUEST_MAX {
            spare.clear();
            self.spare_request = spare;
        }
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

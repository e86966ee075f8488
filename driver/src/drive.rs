//! Driving one client connection: bounded rounds of handshake, client
//! input, core actions, backend I/O, client output and closing, until
//! nothing moves.

use std::time::Instant;

use dpuproxy_l7::{Action, ErrorKind};

use crate::driver::Driver;
use crate::metrics::PathMetrics;
use crate::slot::{Ending, Phase, Upstream};
use crate::transport::{Close, ConnectStatus, Failure, HandshakeStep, Io, Linger, Transport};

/// What one round did.
enum Round {
    /// Something moved: go again.
    Progress,
    /// Nothing can move until an event or a timer.
    Stalled,
    /// The slot was closed and freed.
    Closed,
}

/// What one step of a round did.
#[derive(PartialEq, Eq)]
enum Step {
    Moved,
    Still,
    Closed,
}

impl Step {
    fn from(moved: bool) -> Self {
        if moved { Step::Moved } else { Step::Still }
    }
}

/// One step of a round over slot `index`.
type StepFn<T> = fn(&mut Driver<T>, &mut T, usize, Instant) -> Step;

impl<T: Transport> Driver<T> {
    /// Move slot `index` as far as it can go without blocking. A slot still
    /// moving after `max_rounds` is driven again next turn (edge-triggered
    /// readiness will not report the bytes it already has).
    pub(crate) fn drive(&mut self, t: &mut T, index: usize, now: Instant) {
        for _ in 0..self.settings.max_rounds {
            match self.round(t, index, now) {
                Round::Progress => {}
                Round::Stalled => return self.rearm(index),
                Round::Closed => return,
            }
        }
        self.carried.push(index);
        self.rearm(index);
    }

    fn round(&mut self, t: &mut T, index: usize, now: Instant) -> Round {
        let mut moved = false;
        match self.slots[index].phase {
            // Nothing else happens while lingering or handshaking.
            Phase::Lingering { .. } => {
                return match self.linger(t, index, now) {
                    Step::Moved => Round::Progress,
                    Step::Still => Round::Stalled,
                    Step::Closed => Round::Closed,
                };
            }
            Phase::Handshaking { .. } => match self.handshake(t, index, now) {
                Step::Moved => moved = true,
                Step::Still => return Round::Stalled,
                Step::Closed => return Round::Closed,
            },
            _ => {}
        }
        let steps: [StepFn<T>; 5] = [
            Self::read_client,
            Self::apply_actions,
            Self::pump_upstream,
            Self::write_client,
            Self::settle_close,
        ];
        for step in steps {
            match step(self, t, index, now) {
                Step::Moved => moved = true,
                Step::Still => {}
                Step::Closed => return Round::Closed,
            }
        }
        if moved {
            Round::Progress
        } else {
            Round::Stalled
        }
    }

    /// After our FIN: discard what the client still sends until its end,
    /// so that our last response is not reset away.
    fn linger(&mut self, t: &mut T, index: usize, now: Instant) -> Step {
        let s = &mut self.slots[index];
        let Phase::Lingering { until } = s.phase else {
            return Step::Still;
        };
        if s.read_blocked {
            return Step::Still;
        }
        match t.read(&mut s.client, &mut |_| {}) {
            Io::Done(n) if n > 0 => Step::Moved,
            Io::Done(_) | Io::WouldBlock if now < until => {
                s.read_blocked = true;
                Step::Still
            }
            _ => {
                self.close(t, index, Close::Graceful, now);
                Step::Closed
            }
        }
    }

    fn handshake(&mut self, t: &mut T, index: usize, now: Instant) -> Step {
        let s = &mut self.slots[index];
        if !matches!(s.phase, Phase::Handshaking { .. }) {
            return Step::Still;
        }
        match t.handshake(&mut s.client) {
            HandshakeStep::Done => {
                s.phase = Phase::Open;
                PathMetrics::inc(&self.metrics.handshakes);
                if self.draining {
                    s.core.drain(now);
                }
                Step::Moved
            }
            HandshakeStep::Pending => {
                s.read_blocked = true;
                Step::Still
            }
            HandshakeStep::Failed => {
                PathMetrics::inc(&self.metrics.handshake_failures);
                self.shared.metrics.error(ErrorKind::TlsHandshake);
                // The alert (if any) is flushed, then the connection closes.
                s.eof = true;
                s.phase = Phase::Flushing {
                    since: now,
                    ending: Ending::AfterTlsError,
                };
                Step::Moved
            }
        }
    }

    /// Client plaintext → core.
    fn read_client(&mut self, t: &mut T, index: usize, now: Instant) -> Step {
        let s = &mut self.slots[index];
        let open = matches!(s.phase, Phase::Open | Phase::Flushing { .. });
        if !open || s.read_blocked || s.eof || !s.core.wants_downstream_read() {
            return Step::Still;
        }
        let core = &mut s.core;
        match t.read(&mut s.client, &mut |data| {
            core.handle_downstream_data(now, data)
        }) {
            Io::Done(n) if n > 0 => Step::Moved,
            Io::Done(_) | Io::WouldBlock => {
                s.read_blocked = true;
                Step::Still
            }
            Io::Eof => {
                s.eof = true;
                s.core.handle_downstream_eof(now);
                Step::Moved
            }
            Io::Failed(f) => self.client_failed(t, index, f, now),
        }
    }

    /// The client connection failed: a broken one closes at once; after a
    /// TLS error the alert is flushed first.
    fn client_failed(&mut self, t: &mut T, index: usize, f: Failure, now: Instant) -> Step {
        let s = &mut self.slots[index];
        s.eof = true;
        s.core.handle_downstream_eof(now);
        match f {
            Failure::Broken => {
                self.close(t, index, Close::Abort, now);
                Step::Closed
            }
            Failure::Tls => {
                PathMetrics::inc(&self.metrics.tls_errors);
                self.shared.metrics.error(ErrorKind::TlsIo);
                self.begin_close(index, Ending::AfterTlsError, now);
                Step::Moved
            }
        }
    }

    /// Start closing gracefully (a TLS-error ending takes precedence: the
    /// session cannot send close_notify any more).
    fn begin_close(&mut self, index: usize, ending: Ending, now: Instant) {
        let s = &mut self.slots[index];
        s.phase = match s.phase {
            Phase::Handshaking { .. } | Phase::Open => Phase::Flushing { since: now, ending },
            Phase::Flushing { since, ending: old } if old != ending => Phase::Flushing {
                since,
                ending: Ending::AfterTlsError,
            },
            other => other,
        };
    }

    /// Core actions: backend connects, releases, aborts, client closes.
    fn apply_actions(&mut self, t: &mut T, index: usize, now: Instant) -> Step {
        let mut moved = false;
        while let Some(action) = self.slots[index].core.poll_action() {
            moved = true;
            match action {
                Action::ConnectUpstream { backend, fresh } => {
                    self.connect(t, index, backend, fresh, now)
                }
                Action::ReleaseUpstream { reusable } => {
                    if let Some(u) = self.slots[index].upstream.take() {
                        if reusable {
                            let max = self.settings.pool_max_per_backend;
                            self.pool.put(t, u.backend, u.conn, now, max);
                        } else {
                            t.close_backend(u.conn, Close::Graceful);
                        }
                    }
                }
                Action::AbortUpstream => {
                    if let Some(u) = self.slots[index].upstream.take() {
                        t.close_backend(u.conn, Close::Abort);
                    }
                }
                Action::CloseDownstream { flush: true } => {
                    self.begin_close(index, Ending::Graceful, now)
                }
                Action::CloseDownstream { flush: false } => {
                    // A TLS error's alert is still flushed; otherwise the
                    // client must see a broken connection at once.
                    let s = &self.slots[index];
                    let alert_pending = matches!(
                        s.phase,
                        Phase::Flushing {
                            ending: Ending::AfterTlsError,
                            ..
                        }
                    );
                    if !alert_pending {
                        self.close(t, index, Close::Abort, now);
                        return Step::Closed;
                    }
                }
            }
        }
        Step::from(moved)
    }

    /// A backend connection for the core: from the idle pool unless `fresh`,
    /// else a new one.
    fn connect(&mut self, t: &mut T, index: usize, backend: usize, fresh: bool, now: Instant) {
        let id = self.id_of(index);
        if !fresh
            && let Some(mut conn) =
                self.pool
                    .take(t, backend, now, self.settings.pool_idle, &self.metrics)
        {
            if t.adopt(&mut conn, id) {
                let s = &mut self.slots[index];
                s.upstream = Some(Upstream::new(conn, backend, false));
                PathMetrics::inc(&self.metrics.pool_reuses);
                s.core.handle_upstream_connected(now, true);
                return;
            }
            t.close_backend(conn, Close::Abort);
        }
        match t.connect(id, backend) {
            Ok(conn) => {
                PathMetrics::inc(&self.metrics.upstream_connects);
                self.slots[index].upstream = Some(Upstream::new(conn, backend, true));
                self.check_connected(t, index, now);
            }
            Err(e) => {
                tracing::warn!(backend = %self.shared.backends.get(backend).addr, error = %e, "backend connect failed");
                self.slots[index].core.handle_upstream_connect_failed(now);
            }
        }
    }

    /// A pending connect finished or failed.
    fn check_connected(&mut self, t: &mut T, index: usize, now: Instant) -> bool {
        let s = &mut self.slots[index];
        let Some(u) = s.upstream.as_mut().filter(|u| u.connecting) else {
            return false;
        };
        match t.connect_status(&mut u.conn) {
            ConnectStatus::Pending => false,
            ConnectStatus::Connected => {
                u.connecting = false;
                s.core.handle_upstream_connected(now, false);
                true
            }
            ConnectStatus::Failed => {
                let u = s.upstream.take().expect("checked above");
                tracing::warn!(backend = %self.shared.backends.get(u.backend).addr, "backend connect failed");
                t.close_backend(u.conn, Close::Abort);
                s.core.handle_upstream_connect_failed(now);
                true
            }
        }
    }

    /// Core ↔ backend: write the request, read the response.
    fn pump_upstream(&mut self, t: &mut T, index: usize, now: Instant) -> Step {
        let mut moved = self.check_connected(t, index, now);
        let s = &mut self.slots[index];
        let core = &mut s.core;
        let Some(u) = s.upstream.as_mut().filter(|u| !u.connecting) else {
            return Step::from(moved);
        };
        if !u.write_blocked && !core.upstream_pending().is_empty() {
            match t.backend_write(&mut u.conn, core.upstream_pending()) {
                Io::Done(n) if n > 0 => {
                    core.upstream_consumed(n);
                    moved = true;
                }
                Io::Done(_) | Io::WouldBlock => u.write_blocked = true,
                Io::Eof | Io::Failed(_) => {
                    u.read_blocked = true;
                    u.write_blocked = true;
                    core.handle_upstream_error(now);
                    return Step::Moved;
                }
            }
        }
        if u.read_blocked || !core.wants_upstream_read() {
            return Step::from(moved);
        }
        match t.backend_read(&mut u.conn, &mut |data| {
            core.handle_upstream_data(now, data)
        }) {
            Io::Done(n) if n > 0 => moved = true,
            Io::Done(_) | Io::WouldBlock => u.read_blocked = true,
            Io::Eof => {
                u.read_blocked = true;
                core.handle_upstream_eof(now);
                moved = true;
            }
            Io::Failed(_) => {
                u.read_blocked = true;
                core.handle_upstream_error(now);
                moved = true;
            }
        }
        Step::from(moved)
    }

    /// Core → client, then whatever the transport still holds.
    fn write_client(&mut self, t: &mut T, index: usize, now: Instant) -> Step {
        let s = &mut self.slots[index];
        if s.write_blocked || matches!(s.phase, Phase::Handshaking { .. } | Phase::Lingering { .. })
        {
            return Step::Still;
        }
        // After a TLS error nothing more can be sealed; only the alert goes.
        let takes_data = matches!(
            s.phase,
            Phase::Open
                | Phase::Flushing {
                    ending: Ending::Graceful,
                    ..
                }
        );
        let mut moved = false;
        if takes_data && !s.core.downstream_pending().is_empty() {
            match t.write(&mut s.client, s.core.downstream_pending()) {
                Io::Done(n) if n > 0 => {
                    s.core.downstream_consumed(now, n);
                    moved = true;
                }
                Io::Done(_) | Io::WouldBlock => s.write_blocked = true,
                Io::Eof | Io::Failed(_) => {
                    return self.client_failed(t, index, Failure::Broken, now);
                }
            }
        }
        let s = &mut self.slots[index];
        if !s.write_blocked && !t.flushed(&s.client) {
            match t.flush(&mut s.client) {
                Io::Done(n) if n > 0 => moved = true,
                Io::Done(_) => {}
                Io::WouldBlock => s.write_blocked = true,
                Io::Eof | Io::Failed(_) => {
                    return self.client_failed(t, index, Failure::Broken, now);
                }
            }
        }
        Step::from(moved)
    }

    /// A closing client: once everything is out, close_notify; once that is
    /// out, close (or linger for the client's end).
    fn settle_close(&mut self, t: &mut T, index: usize, now: Instant) -> Step {
        let s = &mut self.slots[index];
        let drained = t.flushed(&s.client);
        match s.phase {
            Phase::Flushing {
                since,
                ending: Ending::Graceful,
            } if drained && s.core.downstream_pending().is_empty() => {
                let linger = t.shutdown(&mut s.client);
                s.phase = Phase::Notified { since, linger };
                Step::Moved
            }
            Phase::Flushing {
                ending: Ending::AfterTlsError,
                ..
            } if drained => {
                self.close(t, index, Close::Graceful, now);
                Step::Closed
            }
            Phase::Notified { linger, .. } if drained => {
                if linger == Linger::Drain && !s.eof {
                    s.phase = Phase::Lingering {
                        until: now + self.settings.linger_drain,
                    };
                    s.read_blocked = false;
                    return Step::Moved;
                }
                self.close(t, index, Close::Graceful, now);
                Step::Closed
            }
            _ => Step::Still,
        }
    }
}

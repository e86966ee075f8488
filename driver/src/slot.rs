//! One client connection as the driver holds it: the L7 core, the client
//! and backend connections of the transport, readiness, and where the
//! connection is in its life.

use std::time::Instant;

use dpuproxy_l7::Connection;

pub use crate::id::{GENERATION_BITS, Side, SlotId};
use crate::transport::Linger;

/// The backend connection of a slot.
#[derive(Debug)]
pub struct Upstream<B> {
    /// The transport's connection.
    pub conn: B,
    /// Backend index.
    pub backend: usize,
    /// The connect has not completed yet.
    pub connecting: bool,
    pub(crate) read_blocked: bool,
    pub(crate) write_blocked: bool,
}

impl<B> Upstream<B> {
    pub(crate) fn new(conn: B, backend: usize, connecting: bool) -> Self {
        Self {
            conn,
            backend,
            connecting,
            read_blocked: false,
            write_blocked: false,
        }
    }
}

/// How a closing client ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Flush, close_notify, FIN.
    Graceful,
    /// A TLS error: flush what is queued (the alert), then FIN without
    /// close_notify.
    AfterTlsError,
}

/// Where a client connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TLS handshake running since `since`.
    Handshaking {
        /// When the connection was accepted.
        since: Instant,
    },
    /// Carrying requests.
    Open,
    /// Closing: writing out what is queued (bounded by the linger timeout
    /// from `since`).
    Flushing {
        /// When closing began.
        since: Instant,
        /// How it ends.
        ending: Ending,
    },
    /// close_notify is queued ([`crate::Transport::shutdown`] was called);
    /// writing it out.
    Notified {
        /// When closing began.
        since: Instant,
        /// What the transport needs once it is out.
        linger: Linger,
    },
    /// Our FIN is out; discarding client input until its end or `until`.
    Lingering {
        /// When to give up waiting.
        until: Instant,
    },
}

/// Whether a slot can move to another transport ([`crate::Driver::movable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movable {
    /// Open, with no connect under way: it can move now.
    Now,
    /// Handshaking, or its backend connect is under way: it may later.
    Later,
    /// Closing, or the client ended its side: it finishes where it is.
    Never,
}

/// A client connection in the driver.
#[derive(Debug)]
pub(crate) struct Slot<C, B> {
    pub client: C,
    pub core: Connection,
    pub upstream: Option<Upstream<B>>,
    pub phase: Phase,
    /// The client ended its side (or the connection broke).
    pub eof: bool,
    pub read_blocked: bool,
    pub write_blocked: bool,
    /// Listed to be driven this turn.
    pub queued: bool,
}

/// A client connection taken out of its driver with all of its L7 state,
/// to be attached to another driver (possibly over another transport):
/// the in-flight request, the response being relayed, the SSE position and
/// every buffer live in `core` and move with it.
#[derive(Debug)]
pub struct Detached<C, B> {
    /// The client connection.
    pub client: C,
    /// The backend connection, if one is attached.
    pub upstream: Option<Upstream<B>>,
    pub(crate) core: Connection,
    pub(crate) phase: Phase,
    pub(crate) eof: bool,
}

impl<C, B> Detached<C, B> {
    /// The same connection over other transport objects (e.g. a userspace
    /// TCP connection restored as a kernel socket): `backend` is the new
    /// backend object, given exactly when the slot has a backend
    /// connection (a mismatch is a bug of the caller: checked in debug
    /// builds; in release a spare backend object is dropped).
    pub fn with<C2, B2>(self, client: C2, backend: Option<B2>) -> Detached<C2, B2> {
        debug_assert_eq!(
            self.upstream.is_some(),
            backend.is_some(),
            "a backend object exactly for a slot with a backend connection"
        );
        Detached {
            client,
            upstream: self.upstream.zip(backend).map(|(u, conn)| Upstream {
                conn,
                backend: u.backend,
                connecting: u.connecting,
                read_blocked: false,
                write_blocked: false,
            }),
            core: self.core,
            phase: self.phase,
            eof: self.eof,
        }
    }

    /// The L7 state.
    pub fn core(&self) -> &Connection {
        &self.core
    }

    /// Where the connection is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }
}

//! dpuproxy-l7: the sans-IO core shared by every data path.
//!
//! This crate never touches a socket, a clock or a thread: time comes in
//! as `now` arguments, bytes come in through `handle_*` calls and go out
//! through `poll_*`/`*_pending` calls (see [`conn`] for the polling order).
//! One driver (`dpuproxy-driver`) drives every [`Connection`] for both the
//! kernel and the DPDK data path, so MCP behaviour is implemented and tested
//! once (its simulator tests live with the driver).
//!
//! What lives here:
//! - [`http`]: HTTP/1.1 heads (httparse), Content-Length and chunked
//!   framing, request-smuggling defences, and the heads the proxy writes
//!   ([`http::rewrite`]);
//! - [`mcp`]: protocol era, session id rules, JSON-RPC sniffing, routing
//!   classification;
//! - [`affinity`]: the bounded, sharded session → backend table that every
//!   worker shares;
//! - [`auth`]: bearer JWT validation, scopes, RFC 9728 metadata;
//! - [`backends`]: health, round-robin and least-outstanding picks;
//! - [`sse`]: event boundary tracking for keepalives and clean stream ends;
//! - [`conn`]: the per-connection state machine (requests routed in
//!   phases, see [`conn`]);
//! - [`reject`]: the one type for requests the proxy answers itself;
//! - [`deadlines`]: one timer per connection, for the drivers;
//! - [`metrics`] and [`config`]: counters and every named limit.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod affinity;
pub mod auth;
pub mod backends;
pub mod config;
pub mod conn;
pub mod deadlines;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod mcp;
pub mod metrics;
pub mod reject;
pub mod seal;
pub mod sse;

pub use affinity::AffinityTable;
pub use backends::{BackendSpec, BackendState, Backends};
pub use config::CoreConfig;
pub use conn::{Action, Connection};
pub use metrics::{ErrorKind, Metrics};
pub use reject::{Fault, Reject};

use std::sync::Mutex;
use std::time::Instant;

/// Wall-clock time for checks that need it (token expiry), derived from
/// the monotonic `now` the driver passes in and an anchor the driver sets
/// and refreshes (so the core itself never reads a clock).
#[derive(Debug, Default)]
pub struct WallClock {
    anchor: Mutex<Option<(Instant, u64)>>,
}

impl WallClock {
    /// Anchor: at monotonic `mono`, wall time was `unix_ms` ms since 1970.
    /// The driver calls this at start and now and then, so that wall-clock
    /// steps and drift are followed.
    pub fn set(&self, mono: Instant, unix_ms: u64) {
        *self.anchor.lock().unwrap_or_else(|p| p.into_inner()) = Some((mono, unix_ms));
    }

    /// Unix seconds at monotonic time `now`; `None` until anchored.
    pub fn unix_secs(&self, now: Instant) -> Option<u64> {
        let (mono, ms) = (*self.anchor.lock().unwrap_or_else(|p| p.into_inner()))?;
        let ms = if now >= mono {
            ms.saturating_add((now - mono).as_millis() as u64)
        } else {
            ms.saturating_sub((mono - now).as_millis() as u64)
        };
        Some(ms / 1000)
    }
}

/// State shared by every worker of one proxy instance.
#[derive(Debug)]
pub struct Shared {
    /// Limits and timeouts.
    pub config: CoreConfig,
    /// Backend set with health and load.
    pub backends: Backends,
    /// Session affinity.
    pub affinity: AffinityTable,
    /// Counters.
    pub metrics: Metrics,
    /// The resource server; `None` when auth is off.
    pub auth: Option<auth::Authenticator>,
    /// Wall clock for token times.
    pub wall: WallClock,
    /// Seals backend and session into the ids clients see; `None`: ids pass
    /// through and the affinity table routes.
    pub sealer: Option<seal::Sealer>,
}

impl Shared {
    /// Shared state for these backends (in order), with auth and sealing
    /// off and the wall clock not yet anchored.
    pub fn new<I, S>(config: CoreConfig, backends: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<backends::BackendSpec>,
    {
        let affinity = AffinityTable::new(
            config.max_sessions,
            config.sessions_per_client(),
            config.session_idle_timeout,
        );
        Self {
            backends: Backends::new(backends),
            affinity,
            metrics: Metrics::default(),
            config,
            auth: None,
            wall: WallClock::default(),
            sealer: None,
        }
    }
}

impl Shared {
    /// Turn on the resource server.
    pub fn with_auth(mut self, auth: auth::Authenticator) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Turn on sealed session ids.
    pub fn with_sealer(mut self, sealer: seal::Sealer) -> Self {
        self.sealer = Some(sealer);
        self
    }
}

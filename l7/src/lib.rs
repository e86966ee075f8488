//! dpuproxy-l7: the sans-IO core shared by every data path.
//!
//! This crate never touches a socket, a clock or a thread: time comes in
//! as `now` arguments, bytes come in through `handle_*` calls and go out
//! through `poll_*`/`*_pending` calls (see [`conn`] for the polling order).
//! Both the kernel data path and the DPDK data path drive the same
//! [`Connection`], so MCP behaviour is implemented and tested once.
//!
//! What lives here:
//! - [`http`]: HTTP/1.1 heads (httparse), Content-Length and chunked
//!   framing, request-smuggling defences;
//! - [`mcp`]: protocol era, session id rules, JSON-RPC sniffing, routing
//!   classification;
//! - [`affinity`]: the bounded, sharded session → backend table that every
//!   worker shares;
//! - [`backends`]: health, round-robin and least-outstanding picks;
//! - [`sse`]: event boundary tracking for keepalives and clean stream ends;
//! - [`conn`]: the per-connection state machine;
//! - [`metrics`] and [`config`]: counters and every named limit.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod affinity;
pub mod backends;
pub mod config;
pub mod conn;
pub mod http;
pub mod mcp;
pub mod metrics;
pub mod sse;

pub use affinity::AffinityTable;
pub use backends::Backends;
pub use config::CoreConfig;
pub use conn::{Action, Connection};
pub use metrics::{ErrorKind, Metrics};

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
}

impl Shared {
    /// Shared state for these backends (`host:port` strings, in order).
    pub fn new(config: CoreConfig, backends: Vec<String>) -> Self {
        let affinity = AffinityTable::new(config.max_sessions, config.session_idle_timeout);
        Self {
            backends: Backends::new(backends),
            affinity,
            metrics: Metrics::default(),
            config,
        }
    }
}

//! dpuproxy-driver: the one place where a client connection's life is
//! driven, for every data path.
//!
//! A data path (kernel sockets with OpenSSL on the fd, or the DPDK engine's
//! userspace TCP and TLS records) implements [`Transport`]: it moves bytes
//! and reports what its sockets did. Everything else lives here, once:
//!
//! - a client **slot** per connection: the `dpuproxy_l7` [`Connection`],
//!   the transport's client and backend connections, readiness flags, and
//!   the connection's [`Phase`] (handshaking, open, flushing, close_notify
//!   queued, lingering);
//! - applying the core's [`Action`]s: backend connects (from the idle pool
//!   or new), releases, aborts, and client closes (graceful: flush,
//!   close_notify, FIN; abortive: RST, no close_notify);
//! - the **idle backend pool** (`pool_idle`, `pool_max_per_backend`,
//!   liveness check at reuse, expiry once a second);
//! - **timers**: the TLS handshake deadline, the linger deadlines and the
//!   core's own, one per slot;
//! - one set of data-path **metrics** ([`PathMetrics`]).
//!
//! # Calling contract (the event loop of a data path)
//! 1. New connection: [`Driver::admit`] (false: refuse it), build the
//!    transport's client, [`Driver::accept`].
//! 2. Readiness from the transport: [`Driver::mark`] with the slot id the
//!    transport registered the connection under and the side.
//! 3. Then [`Driver::run`]: every marked slot is driven once, in bounded
//!    rounds; a slot that used its rounds is carried to the next `run`
//!    ([`Driver::has_work`] says the loop must not sleep).
//! 4. [`Driver::handle_timeout`] at [`Driver::poll_timeout`] (or whenever
//!    convenient after it).
//!
//! Readiness is edge-triggered: a direction that returned
//! [`Io::WouldBlock`] is not tried again until it is marked. Slot ids carry
//! a generation, so a stale event for a freed slot is ignored.
//!
//! # Changing transport
//! [`Driver::detach`] takes a connection out with all of its L7 state (the
//! in-flight request, the response and SSE position, every buffer) and
//! [`Driver::attach`] continues it in another driver, after
//! [`Detached::map`] moved its connections to that driver's transport.
//!
//! Nothing here opens a socket or reads a clock: time comes in as `now`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod drive;
mod driver;
#[doc(hidden)]
pub mod fuzz;
mod id;
pub mod metrics;
mod pool;
pub mod settings;
pub mod slot;
pub mod transport;

pub use dpuproxy_l7::{Action, Connection};
pub use driver::Driver;
pub use metrics::PathMetrics;
pub use settings::DriverSettings;
pub use slot::{Detached, Ending, GENERATION_BITS, Movable, Phase, Side, SlotId, Upstream};
pub use transport::{Close, ConnectStatus, Failure, HandshakeStep, Io, Linger, Transport};

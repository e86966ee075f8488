//! dpuproxy-bench: the benchmarks behind `dpuproxy bench`, which print
//! figures and assert nothing, and the rig parts they share with the demo.
//!
//! - [`proxy`]: `bench proxy`, kernel mode, DPDK mode and HAProxy side by
//!   side on the same MCP workload, with our load generator and native
//!   MCP backends;
//! - [`tcp`]: `bench tcp`, the userspace TCP stack against itself over an
//!   in-memory wire, with faults;
//! - [`soak`]: `bench soak`, many SSE streams for minutes or hours with
//!   request and session churn and backend kills, RSS/fd/session samples;
//! - [`records`]: `bench records`, the TLS record layer against raw EVP;
//! - [`repair`]: `bench repair`, kernel TCP connections moved between
//!   sockets with `TCP_REPAIR`, timed and checked;
//! - [`procs`] and [`background`]: child processes, free ports and
//!   stoppable background threads (the demo uses them too).
//!
//! Like `ctl`, this is operator-facing code: errors are reports
//! (`anyhow`), not values a caller branches on.

#![forbid(unsafe_code)]

pub mod background;
pub mod handoff;
pub mod procs;
pub mod proxy;
pub mod records;
mod records_ssl;
pub mod repair;
pub mod soak;
pub mod tcp;

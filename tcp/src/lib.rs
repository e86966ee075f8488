//! dpuproxy-tcp: a userspace TCP stack for one proxy core, over any
//! `smoltcp::phy::Device` (an in-memory wire, a tap, DPDK mbufs).
//!
//! # Contract
//! smoltcp's `tcp::Socket` is the protocol engine (handshake, retransmission,
//! windows and window scaling, Reno congestion control, options, checksums).
//! This crate owns everything smoltcp does per *set* of sockets and does not
//! scale: the 4-tuple demux (a keyed hash table instead of smoltcp's scan of
//! every socket per segment), the accept queue with a bounded backlog
//! (smoltcp has none: it RSTs extra SYNs), active open with ephemeral port
//! choice under a caller predicate (DPDK mode picks ports whose RSS hash lands
//! on the calling core), deadline-ordered timers (smoltcp walks every socket
//! on every egress poll), and compact TIME-WAIT records.
//!
//! Sans-IO: nothing here reads a clock, spawns a thread or blocks. Time comes
//! in as `now: Instant` (microseconds since any fixed epoch, non-decreasing);
//! randomness comes in as `StackConfig::seed`. The crate's one `unsafe` is
//! the cache prefetch hint of `prefetch.rs` (`deny(unsafe_code)` elsewhere).
//!
//! # Calling order
//! 1. [`Stack::poll`]`(now, device)`: receive up to `rx_burst` frames, run
//!    due timers, expire TIME-WAIT records, transmit for every connection
//!    that has something to send.
//! 2. [`Stack::poll_event`] until `None`: [`Event::Accept`] (then
//!    [`Stack::accept`]), `Connected`, `Readable`, `Writable`, `Closed`,
//!    `Reset`. Events are edge-triggered; `Readable` re-arms on `recv`,
//!    `Writable` on a short `send`.
//! 3. React: [`Stack::recv`]/[`Stack::send`] (closures over the socket
//!    buffers themselves: no copy beyond the caller's own), `shutdown`,
//!    `close`, `abort`, `connect`, `listen`. These only mark connections; the
//!    segments leave on the next `poll` (or [`Stack::egress`]).
//! 4. Sleep until [`Stack::poll_at`] or until the device has a frame.
//!
//! A handle from `connect` or `accept` stays valid until `close` or `abort`,
//! also after `Closed`/`Reset` (unread bytes of a cleanly closed connection
//! remain readable). After `close` the stack finishes the FIN exchange alone
//! and discards late data.
//!
//! # Design: per-socket driving over an unpatched engine
//! smoltcp's `Socket::accepts/process/dispatch/poll_at` are crate-private;
//! the public way in is `Interface::poll_ingress_single/poll_egress/poll_at`
//! over a `SocketSet`. So each connection owns a `SocketSet` holding exactly
//! its one socket, and one shared `Interface` (addresses, ARP, ICMP, RST
//! generation) is handed that set:
//! - ingress: the stack peeks at the frame's headers (no checksum work),
//!   looks the 4-tuple up, and gives smoltcp the frame through a one-frame
//!   device together with only that connection's set. Frames for no
//!   connection go in with an empty set, so smoltcp answers them as a closed
//!   port (RST) or as ARP/ICMP; TCP for an address not ours (broadcast,
//!   multicast), a SYN crossing our own (simultaneous open) and anything
//!   for a connection whose SYN has not left yet are dropped instead (see
//!   `stack::ingress`). Paths that create state (a SYN for a
//!   listener, a segment for a TIME-WAIT record) verify checksums first;
//!   everything else is verified by smoltcp before it acts;
//! - egress: only connections that were touched (a segment, a caller call,
//!   a due timer) are handed to `poll_egress`, through a device adapter that
//!   also records the last sequence numbers sent (for TIME-WAIT records);
//! - a connection's next deadline is `Interface::poll_at` over its own set.
//!
//! Per segment, the cost over smoltcp's own work is one header peek and one
//! hash lookup, independent of the number of connections. Patching smoltcp
//! to expose its per-socket `process/dispatch` was the alternative; it would
//! also have had to re-implement IP, ARP and RST handling around the socket.
//!
//! The one patch the stack does build on (`patches/smoltcp+0.13.1.patch`,
//! applied by `scripts/patch-deps.sh`) only adds what smoltcp cannot give at
//! all: a snapshot of an established socket, a peek at its send queue, and
//! a restore of a closed socket into an established one. [`Stack::export`]
//! and [`Stack::import`] build on it to move connections between stacks
//! and, through `TCP_REPAIR`, to and from the kernel (see [`ConnState`]).
//!
//! Three things smoltcp 0.13 does not let a caller configure are handled
//! around it:
//! - **Minimum RTO** (fixed at 1 s): smoltcp runs on a dilated clock, see
//!   [`StackConfig::min_rto`] and the `clock` module. Default 50 ms: a
//!   factor of 20, so the initial RTO is 50 ms and the RTO ceiling 3 s.
//! - **User timeout**: smoltcp's `timeout` also kills idle connections (it
//!   counts from the last segment received even with nothing in flight), so
//!   it is used for handshakes only; after that the stack enforces
//!   [`SocketConfig::timeout`] itself, only while data or a FIN awaits an ACK,
//!   keep-alive is on, or the caller has closed the handle.
//! - **TIME-WAIT** (10 s holding the whole socket and its buffers): when a
//!   socket reaches TIME-WAIT with nothing left to send it is dropped and a
//!   record (expiry, our and the peer's next sequence numbers: about 70 bytes
//!   with its flow-table slot and expiry-queue entry) takes its place. The
//!   record re-ACKs a retransmitted FIN (and restarts its 2MSL), ignores RSTs
//!   (RFC 1337), answers an old SYN with an ACK, and gives way to a SYN above
//!   the old sequence space (RFC 1122 4.2.2.13 reuse). Records live
//!   `time_wait` (60 s) and at most `max_time_wait` are kept, oldest dropped
//!   first.
//!
//! # Buffers that grow
//! A connection's receive buffer starts at 2 KiB and its send buffer at
//! 1 KiB (or the configured size, if smaller). The receive buffer doubles,
//! up to `rx_buffer`, once a segment leaves it more than half full (the
//! window the peer sees opens with it); the send buffer doubles, up to
//! `tx_buffer`, when a write finds less room than it brings. Growing copies
//! the queue into a new buffer (smoltcp patch: `replace_rx_buffer`/
//! `replace_tx_buffer`, which refuse a buffer that would not hold the
//! window already advertised, or while out-of-order data is held). Buffers
//! do not shrink back. A receive buffer above 64 KiB is allocated whole,
//! since the window scale is fixed at the handshake from the buffer's size.
//!
//! # Accept queue
//! Per listener, half-open plus established-but-not-accepted connections are
//! at most `backlog`. A SYN beyond that evicts the oldest half-open one
//! (drop-oldest): under a SYN flood the half-open slots cycle, and a real
//! client completes as long as its ACK returns before `backlog` newer SYNs
//! arrive; memory stays bounded either way. If every slot is an established
//! connection waiting for `accept`, the SYN is dropped silently (the client
//! retries). There are no SYN cookies.
//!
//! # Timers
//! A binary heap of `(deadline, slot, generation)`, at most one live entry
//! per connection, pushed only when a deadline moves earlier (see `timer`).
//! An idle connection (nothing in flight, no keep-alive) has no deadline and
//! costs nothing per poll.
//!
//! # Defaults (data-centre proxy)
//! | setting | default | why |
//! |---|---|---|
//! | `min_rto` | 50 ms | DC RTTs are µs; 1 s (smoltcp) or 200 ms (Linux) stall request/response on a single loss |
//! | `ack_delay` | 1 ms | lets an in-process response carry the ACK; well under the RTO |
//! | `nagle` | off | a proxy writes whole messages; Nagle plus delayed ACK would stall the tail |
//! | `rx_buffer`/`tx_buffer` | 8 KiB / 4 KiB | the most a connection's buffers grow to; they start at 2 KiB / 1 KiB (under 4 KiB per idle connection all told, for 100k connections per core); above 64 KiB window scaling is used and the buffer is whole from the start |
//! | `timeout` | 30 s | user timeout while something awaits an ACK |
//! | `handshake_timeout` | 5 s | half-open and SYN-SENT give up |
//! | `time_wait` / `max_time_wait` | 60 s / 262144 | 2×MSL-ish; records are small |
//! | congestion control | Reno | |
//!
//! # Limits
//! - IPv4 only. No SACK-based recovery, no timestamps/PAWS (smoltcp).
//! - ISNs come from smoltcp's PRNG seeded by `StackConfig::seed`, so the seed
//!   must be secret and fresh per process in production.
//! - On Ethernet, smoltcp's neighbour (ARP) cache holds 8 entries (a build-time
//!   constant, `SMOLTCP_IFACE_NEIGHBOR_CACHE_COUNT`): fine behind a gateway,
//!   too small for many on-link peers. Entries live 60 s of smoltcp time, i.e.
//!   `60 s * min_rto / 1 s` of real time (3 s by default), so ARP is refreshed
//!   often; a socket held back for ARP is retried as soon as an ARP frame
//!   arrives.
//! - The work of one `poll` is bounded on the receive side (`rx_burst`) and
//!   per connection on the send side (`tx_burst_per_conn`); a full device
//!   stops the egress pass and the rest waits for the next `poll`.
//!
//! # Test devices
//! [`wire`] joins two stacks in memory; [`fault::FaultyDevice`] wraps any
//! device and drops, reorders, duplicates and corrupts the frames sent through
//! it with a seeded RNG (one per side of the wire covers both directions). Corrupted frames are always caught by the IPv4/TCP
//! checksums and never delivered (tests check this byte by byte, with the
//! streams of [`pattern`]).

#![deny(unsafe_code)]

mod adapters;
mod clock;
mod config;
mod error;
pub mod fault;
mod flow;
mod flow_table;
mod frame;
#[doc(hidden)]
pub mod fuzz;
pub mod pattern;
mod prefetch;
mod stack;
mod timer;
pub mod wire;

pub use config::{Congestion, SocketConfig, StackConfig};
pub use error::TcpError;
pub use flow::FourTuple;
pub use stack::{ConnId, ConnState, ConnectOptions, Event, ListenerId, MemoryUsage, Stack, Stats};

/// A device that can show a frame still waiting to be received, so that
/// [`Stack::poll_prefetching`] can have the cache lines that frame will
/// need (its flow-table slot, its connection) loaded before it is handled.
pub trait RxPeek {
    /// Call `f` with the frame `ahead` places behind the one `receive`
    /// would return next (0: that one), if one is waiting there.
    fn peek_rx(&self, ahead: usize, f: &mut dyn FnMut(&[u8]));
}

pub use smoltcp;
pub use smoltcp::socket::tcp::State;
pub use smoltcp::time::{Duration, Instant};

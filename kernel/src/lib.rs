//! dpuproxy-kernel: the stock-Linux data path.
//!
//! Contract:
//! - [`start`] binds one `SO_REUSEPORT` listener per worker thread (so a
//!   port clash fails at start, not later), spawns the workers and a
//!   health prober, and returns a [`KernelProxy`] handle that stops them.
//! - Each worker runs a mio/epoll loop and feeds the shared driver
//!   (`dpuproxy_driver`), which drives one `dpuproxy_l7::Connection` per
//!   client: this crate is only the [`Transport`](dpuproxy_driver::Transport)
//!   (OpenSSL on the socket fd with `SSL_OP_ENABLE_KTLS`; backends are plain
//!   HTTP/1.1 over kernel TCP) and the event plumbing.
//! - Which record path each connection got (kTLS tx/rx, or OpenSSL records)
//!   is counted in [`KernelMetrics`]; kTLS availability is probed once at
//!   start ([`ktls::probe`]) and reported with its reason.
//! - Backend health: a failed connect marks a backend down (in the core);
//!   the prober marks it up again when a TCP connect succeeds.
//!
//! Unsafe code is confined to `tls_fd` (OpenSSL FFI, `SO_LINGER`),
//! [`ktls`] (`setsockopt`) and [`heap`] (`malloc_trim`).

pub mod handoff;
pub mod heap;
pub mod ktls;
mod moving;
mod records_fd;
pub mod repair;
mod tls_fd;
mod transport;
mod worker;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dpuproxy_driver::{DriverSettings, PathMetrics};
use dpuproxy_l7::Shared;
use dpuproxy_switch::SwitchBoard;
use dpuproxy_tls::HandshakeConfig;
use openssl::ssl::{SslContext, SslMode, SslOptions, SslVersion};

pub use ktls::KtlsSupport;
pub use tls_fd::RecordPath;
use worker::WorkerParts;

/// Errors that stop the kernel data path from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Certificate or key could not be loaded.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Creating the event loop failed.
    #[error("event loop: {0}")]
    Poll(std::io::Error),
}

/// Counters of the kernel data path's TLS record paths (the admin
/// endpoint exports them; connection counters are the driver's
/// [`PathMetrics`]).
#[derive(Debug, Default)]
pub struct KernelMetrics {
    /// Connections whose sends go through kTLS.
    pub ktls_tx: AtomicU64,
    /// Connections whose receives go through kTLS.
    pub ktls_rx: AtomicU64,
    /// Connections whose records OpenSSL processes in userspace.
    pub openssl_records: AtomicU64,
    /// Connections whose records our record layer processes
    /// (`[tls] records = "ours"`, or moved in from the DPDK path).
    pub ours_records: AtomicU64,
    /// 1 when the kTLS probe succeeded.
    pub ktls_available: AtomicU64,
}

impl KernelMetrics {
    pub(crate) fn record_path(&self, p: RecordPath) {
        if p.ktls_tx {
            self.ktls_tx.fetch_add(1, Ordering::Relaxed);
        }
        if p.ktls_rx {
            self.ktls_rx.fetch_add(1, Ordering::Relaxed);
        }
        if !p.ktls_tx && !p.ktls_rx {
            self.openssl_records.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Everything the kernel data path needs to start.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Client-facing TLS address.
    pub listen: SocketAddr,
    /// Worker threads (one epoll loop each).
    pub workers: usize,
    /// PEM certificate chain.
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Idle pooled backend connection lifetime (keep it below the backends'
    /// own keep-alive timeout; uvicorn's default is 5 s).
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections per backend per worker.
    pub pool_max_per_backend: usize,
    /// Client connections per worker.
    pub max_connections_per_worker: usize,
    /// Client connections per worker still in their TLS handshake (beyond
    /// it the oldest is shed).
    pub max_handshaking_per_worker: usize,
    /// Listen backlog: connections the TCP stack holds before the proxy
    /// accepts them, half-open ones included (kernel mode: capped by
    /// `net.core.somaxconn`; dpdk mode: beyond it a SYN evicts the oldest
    /// half-open connection).
    pub listen_backlog: usize,
    /// How often down backends are probed.
    pub probe_interval: Duration,
    /// Who processes TLS records after the handshake.
    pub records: KernelRecords,
}

/// Who processes a kernel-mode connection's TLS records after the
/// handshake (`[tls] records`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelRecords {
    /// OpenSSL on the socket: kTLS when the kernel takes it, else
    /// `SSL_read`/`SSL_write` (the stock-Linux design).
    #[default]
    Openssl,
    /// Our record layer (the DPDK path's) on the socket, after OpenSSL's
    /// handshake over memory buffers; never kTLS.
    Ours,
}

impl KernelConfig {
    /// Defaults for everything but addresses and files.
    pub fn new(listen: SocketAddr, tls_cert: PathBuf, tls_key: PathBuf) -> Self {
        Self {
            listen,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tls_cert,
            tls_key,
            handshake_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(4),
            pool_max_per_backend: 64,
            max_connections_per_worker: 50_000,
            max_handshaking_per_worker: 4096,
            listen_backlog: 4096,
            probe_interval: Duration::from_secs(1),
            records: KernelRecords::default(),
        }
    }
}

/// Build the server TLS context: TLS 1.2 and 1.3, kTLS allowed, partial
/// writes, HTTP/1.1 as the only ALPN protocol.
pub fn tls_context(cert: &Path, key: &Path) -> Result<SslContext, StartError> {
    tls_context_for(cert, key, true)
}

/// [`tls_context`], with OpenSSL's read-ahead where the kernel has no kTLS
/// (`ktls_possible` false): each record then costs one `read`, not two
/// (header, then body). With kTLS possible it stays off: OpenSSL 3.0 can
/// only hand the receive side to the kernel at a record boundary with
/// nothing read ahead.
fn tls_context_for(cert: &Path, key: &Path, ktls_possible: bool) -> Result<SslContext, StartError> {
    let mut b =
        dpuproxy_tls::server_builder(cert, key).map_err(|e| StartError::Tls(e.to_string()))?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|e| StartError::Tls(format!("min version: {e}")))?;
    b.set_options(
        SslOptions::NO_RENEGOTIATION
            | SslOptions::CIPHER_SERVER_PREFERENCE
            | SslOptions::from_bits_retain(tls_fd::SSL_OP_ENABLE_KTLS as _),
    );
    // RELEASE_BUFFERS: a connection that waits (a stalled handshake, an
    // idle keep-alive) holds no 16 KiB record buffers.
    b.set_mode(
        SslMode::ENABLE_PARTIAL_WRITE
            | SslMode::ACCEPT_MOVING_WRITE_BUFFER
            | SslMode::RELEASE_BUFFERS,
    );
    if !ktls_possible {
        b.set_read_ahead(true);
    }
    dpuproxy_tls::alpn_http11(&mut b);
    Ok(b.build())
}

/// The memory-buffer handshake's configuration for the same certificate
/// (records by our record layer: DPDK mode, and kernel mode with
/// [`KernelRecords::Ours`]).
pub fn handshake_config(cert: &Path, key: &Path) -> Result<HandshakeConfig, StartError> {
    let mut b =
        dpuproxy_tls::server_builder(cert, key).map_err(|e| StartError::Tls(e.to_string()))?;
    dpuproxy_tls::alpn_http11(&mut b);
    HandshakeConfig::server(b).map_err(|e| StartError::Tls(e.to_string()))
}

/// A running kernel-mode proxy.
#[derive(Debug)]
pub struct KernelProxy {
    stop: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
    end_streams: Arc<AtomicBool>,
    wakers: Vec<Arc<mio::Waker>>,
    threads: Vec<JoinHandle<()>>,
    /// Record-path counters.
    pub metrics: Arc<KernelMetrics>,
    /// Connection counters (the driver's).
    pub path: Arc<PathMetrics>,
    /// kTLS probe result.
    pub ktls: KtlsSupport,
    /// The bound address (useful when the port was 0).
    pub local_addr: SocketAddr,
}

impl KernelProxy {
    /// Stop accepting, close every connection and join the threads.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    /// Begin the graceful drain: the listeners close, and each client
    /// connection closes after its request (SSE streams at an event
    /// boundary). `path.open` falls to 0 when it is done; then call
    /// [`KernelProxy::shutdown`].
    pub fn drain(&self) {
        self.drain.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// The drain's time is nearly up: every SSE stream ends at its next
    /// event boundary, answers to POSTs included.
    pub fn drain_streams(&self) {
        self.end_streams.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for KernelProxy {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn bind_reuseport(addr: SocketAddr, backlog: usize) -> std::io::Result<mio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(mio::net::TcpListener::from_std(s.into()))
}

impl KernelConfig {
    /// The driver settings of each worker.
    pub fn driver_settings(&self) -> DriverSettings {
        DriverSettings {
            handshake_timeout: self.handshake_timeout,
            pool_idle: self.pool_idle_timeout,
            pool_max_per_backend: self.pool_max_per_backend,
            max_connections: self.max_connections_per_worker,
            max_handshaking: self.max_handshaking_per_worker,
            ..DriverSettings::default()
        }
    }
}

/// Start the kernel data path with `workers` epoll loops over `shared`,
/// counting connections into `path`.
pub fn start(
    cfg: &KernelConfig,
    shared: Arc<Shared>,
    path: Arc<PathMetrics>,
) -> Result<KernelProxy, StartError> {
    start_with(cfg, shared, path, None, Arc::default())
}

/// Start the kernel data path beside the DPDK path, for the live mode
/// switch: one worker, on the same listen address (which must be on a
/// kernel interface: the af_xdp port's), counting into `metrics`, with our record layer on every
/// connection (so that any can move), no backend prober (its connections
/// would not be steered here), and `board`'s mail and requests waking it.
pub fn start_beside_dpdk(
    cfg: &KernelConfig,
    shared: Arc<Shared>,
    path: Arc<PathMetrics>,
    board: Arc<SwitchBoard>,
    metrics: Arc<KernelMetrics>,
) -> Result<KernelProxy, StartError> {
    let mut cfg = cfg.clone();
    cfg.workers = 1;
    cfg.records = KernelRecords::Ours;
    start_with(&cfg, shared, path, Some(board), metrics)
}

fn start_with(
    cfg: &KernelConfig,
    shared: Arc<Shared>,
    path: Arc<PathMetrics>,
    switch: Option<Arc<SwitchBoard>>,
    metrics: Arc<KernelMetrics>,
) -> Result<KernelProxy, StartError> {
    let ktls = probe_ktls();
    let ctx = tls_context_for(&cfg.tls_cert, &cfg.tls_key, ktls.available)?;
    let records = match cfg.records {
        KernelRecords::Openssl => None,
        KernelRecords::Ours => Some(handshake_config(&cfg.tls_cert, &cfg.tls_key)?),
    };
    anchor_wall_clock(&shared);
    metrics
        .ktls_available
        .store(u64::from(ktls.available), Ordering::Relaxed);
    let workers = cfg.workers.max(1);
    let listeners = bind_listeners(cfg.listen, workers, cfg.listen_backlog)?;
    let local_addr = listeners[0].local_addr().map_err(StartError::Poll)?;
    let stop = Arc::new(AtomicBool::new(false));
    let drain = Arc::new(AtomicBool::new(false));
    let end_streams = Arc::new(AtomicBool::new(false));
    let mut wakers = Vec::new();
    let mut threads = Vec::new();
    for (id, listener) in listeners.into_iter().enumerate() {
        let poll = mio::Poll::new().map_err(StartError::Poll)?;
        let waker = Arc::new(worker::Worker::new_waker(&poll).map_err(StartError::Poll)?);
        let parts = WorkerParts {
            ctx: ctx.clone(),
            records: records.clone(),
            shared: shared.clone(),
            metrics: metrics.clone(),
            path: path.clone(),
            settings: cfg.driver_settings(),
            stop: stop.clone(),
            drain: drain.clone(),
            end_streams: end_streams.clone(),
            switch: switch.clone().map(|b| (b, local_addr.ip())),
        };
        if let Some(board) = &switch {
            let w = waker.clone();
            board.set_waker(
                dpuproxy_switch::Path::Kernel,
                Box::new(move || {
                    let _ = w.wake();
                }),
            );
        }
        let w = worker::Worker::new(id, poll, listener, parts).map_err(StartError::Poll)?;
        wakers.push(waker);
        threads.push(
            std::thread::Builder::new()
                .name(format!("dpuproxy-w{id}"))
                .spawn(move || w.run())
                .map_err(StartError::Poll)?,
        );
    }
    if switch.is_none() {
        let prober_stop = stop.clone();
        let prober_shared = shared.clone();
        let interval = cfg.probe_interval;
        threads.push(
            std::thread::Builder::new()
                .name("dpuproxy-probe".into())
                .spawn(move || probe_loop(prober_shared, interval, prober_stop))
                .map_err(StartError::Poll)?,
        );
    }
    tracing::info!(
        listen = %local_addr,
        workers,
        backends = shared.backends.len(),
        "kernel data path running"
    );
    Ok(KernelProxy {
        stop,
        drain,
        end_streams,
        wakers,
        threads,
        metrics,
        path,
        ktls,
        local_addr,
    })
}

/// Probe kTLS once and say what this data path will do.
fn probe_ktls() -> KtlsSupport {
    let ktls = ktls::probe();
    if ktls.available {
        tracing::info!("kTLS available: {}", ktls.reason);
    } else {
        tracing::warn!(
            "kTLS not available, records are processed by OpenSSL in userspace: {}",
            ktls.reason
        );
    }
    ktls
}

/// One `SO_REUSEPORT` listener per worker, all bound before any thread
/// runs so that a clash fails at start.
fn bind_listeners(
    listen: SocketAddr,
    workers: usize,
    backlog: usize,
) -> Result<Vec<mio::net::TcpListener>, StartError> {
    let mut listeners = Vec::with_capacity(workers);
    let mut addr = listen;
    for _ in 0..workers {
        let l =
            bind_reuseport(addr, backlog).map_err(|source| StartError::Listen { addr, source })?;
        if addr.port() == 0 {
            // Later workers must share the port the first one got.
            addr = l.local_addr().map_err(StartError::Poll)?;
        }
        listeners.push(l);
    }
    Ok(listeners)
}

/// Give the core the current wall-clock time (token expiry checks).
fn anchor_wall_clock(shared: &Shared) {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    shared.wall.set(Instant::now(), unix_ms);
}

/// Upkeep of the shared L7 state until `stop`: each turn re-anchors the
/// wall clock, offers every backend marked down to `revive`, expires idle
/// sessions every 5 s, then waits `interval` in sleeps of `step` (so that
/// shutdown stays prompt).
///
/// `revive(i, down_for)` gets the backend's index and how long this loop
/// has seen it down. It marks the backend up itself (and logs why) and
/// returns true when it did, which restarts that backend's clock.
pub fn housekeeping(
    shared: &Shared,
    stop: &AtomicBool,
    interval: Duration,
    step: Duration,
    mut revive: impl FnMut(usize, Duration) -> bool,
) {
    let mut down_since: Vec<Option<Instant>> = Vec::new();
    let mut last_sweep = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        anchor_wall_clock(shared);
        let now = Instant::now();
        // A reload may have added backends.
        down_since.resize(shared.backends.len(), None);
        for (i, since) in down_since.iter_mut().enumerate() {
            let b = shared.backends.get(i);
            if b.is_healthy()
                || b.state() == dpuproxy_l7::BackendState::Removed
                || revive(i, now.duration_since(*since.get_or_insert(now)))
            {
                *since = None;
            }
        }
        let now = Instant::now();
        if now.duration_since(last_sweep) >= Duration::from_secs(5) {
            let n = shared.affinity.sweep(now);
            if n > 0 {
                tracing::debug!(expired = n, "idle sessions expired");
            }
            // What a burst of connections freed goes back to the system.
            heap::trim_if_slack();
            last_sweep = now;
        }
        let until = Instant::now() + interval;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(step);
        }
    }
}

/// The kernel path's prober: a down backend is up again as soon as a TCP
/// connect to it succeeds.
fn probe_loop(shared: Arc<Shared>, interval: Duration, stop: Arc<AtomicBool>) {
    housekeeping(
        &shared,
        &stop,
        interval,
        Duration::from_millis(50),
        |i, _| {
            let addr = shared.backends.get(i).socket;
            let back = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
                && shared.backends.mark_up(i);
            if back {
                tracing::info!(backend = %addr, "backend is back (probe connected)");
            }
            back
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpuproxy_l7::CoreConfig;

    #[test]
    fn housekeeping_offers_only_down_backends_and_restarts_their_clock() {
        let shared = Shared::new(
            CoreConfig::default(),
            vec!["a:1".to_string(), "b:1".to_string()],
        );
        assert!(shared.wall.unix_secs(Instant::now()).is_none());
        shared.backends.mark_down(1);
        let stop = AtomicBool::new(false);
        let mut calls: Vec<(usize, Duration)> = Vec::new();
        let step = Duration::from_millis(5);
        housekeeping(&shared, &stop, step, step, |i, down_for| {
            calls.push((i, down_for));
            if calls.len() == 3 {
                // Reported revived although it stays down: its clock
                // restarts at the next sighting.
                return true;
            }
            if calls.len() == 5 {
                stop.store(true, Ordering::Relaxed);
            }
            false
        });
        assert!(calls.iter().all(|(i, _)| *i == 1), "{calls:?}");
        assert_eq!(calls[0].1, Duration::ZERO, "first sighting");
        assert!(
            calls[1].1 > Duration::ZERO && calls[2].1 > calls[1].1,
            "{calls:?}"
        );
        assert_eq!(calls[3].1, Duration::ZERO, "clock restarted after a revive");
        assert!(
            shared.wall.unix_secs(Instant::now()).is_some(),
            "wall clock anchored"
        );
    }
}

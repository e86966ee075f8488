//! One worker: a mio (epoll) loop that owns its `SO_REUSEPORT` listener and
//! feeds the shared driver. Everything about a connection's life is the
//! driver's; this loop only accepts, turns events into
//! [`Driver::mark`] calls, and wakes for the driver's deadlines.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dpuproxy_driver::{Driver, DriverSettings, PathMetrics, Side};
use dpuproxy_l7::Shared;
use dpuproxy_switch::{FlowOwner, Path, Station, SwitchBoard};
use dpuproxy_tls::HandshakeConfig;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use openssl::ssl::SslContext;

use crate::KernelMetrics;
use crate::records_fd::FdRecords;
use crate::tls_fd::FdTls;
use crate::transport::{ClientTls, KernelClient, KernelTransport, Owner, RESERVED, owner_of};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// What a worker needs besides its poll and listener.
pub(crate) struct WorkerParts {
    pub ctx: SslContext,
    /// Set when our record layer processes the records (`[tls] records =
    /// "ours"`): the memory-buffer handshake's configuration.
    pub records: Option<HandshakeConfig>,
    pub shared: Arc<Shared>,
    pub metrics: Arc<KernelMetrics>,
    pub path: Arc<PathMetrics>,
    pub settings: DriverSettings,
    pub stop: Arc<AtomicBool>,
    pub drain: Arc<AtomicBool>,
    pub end_streams: Arc<AtomicBool>,
    /// The live mode switch beside the DPDK path (with the listener's
    /// address, which backend connections are bound to).
    pub switch: Option<(Arc<SwitchBoard>, std::net::IpAddr)>,
}

/// A worker's part in the live mode switch.
struct WorkerSwitch {
    board: Arc<SwitchBoard>,
    station: Station,
    limits: dpuproxy_tls::Limits,
}

pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    /// `None` once draining (closed: new connections are refused).
    listener: Option<TcpListener>,
    ctx: SslContext,
    records: Option<HandshakeConfig>,
    driver: Driver<KernelTransport>,
    transport: KernelTransport,
    stop: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
    end_streams: Arc<AtomicBool>,
    ending_streams: bool,
    /// Accept failures not yet logged, and when the last line went out
    /// (one line a second at most: EMFILE can repeat on every event).
    accept_errors: u64,
    accept_logged: Option<Instant>,
    switch: Option<WorkerSwitch>,
}

impl Worker {
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        mut listener: TcpListener,
        parts: WorkerParts,
    ) -> io::Result<Self> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut transport = KernelTransport::new(
            poll.registry().try_clone()?,
            parts.shared.clone(),
            parts.metrics,
        );
        let switch = match parts.switch {
            Some((board, ip)) => {
                transport.switch = Some(board.clone());
                transport.switch_ip = Some(ip);
                let limits = parts
                    .records
                    .as_ref()
                    .map(HandshakeConfig::limits)
                    .unwrap_or_default();
                Some(WorkerSwitch {
                    board,
                    station: Station::new(Path::Kernel),
                    limits,
                })
            }
            None => None,
        };
        let driver = Driver::new(parts.shared, parts.settings, parts.path, Instant::now());
        Ok(Self {
            id,
            poll,
            listener: Some(listener),
            ctx: parts.ctx,
            records: parts.records,
            driver,
            transport,
            stop: parts.stop,
            drain: parts.drain,
            end_streams: parts.end_streams,
            ending_streams: false,
            accept_errors: 0,
            accept_logged: None,
            switch,
        })
    }

    pub(crate) fn new_waker(poll: &Poll) -> io::Result<Waker> {
        Waker::new(poll.registry(), WAKER)
    }

    /// Run until the stop flag is set (and the waker fires); then close
    /// every connection.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        tracing::debug!(worker = self.id, "worker started");
        while !self.stop.load(Ordering::Relaxed) {
            let timeout = if self.driver.has_work() || self.switch_pending() {
                Duration::ZERO
            } else {
                let due = self.driver.poll_timeout();
                let due = match self.switch.as_ref().and_then(|s| s.station.next_due()) {
                    Some(at) => due.min(at),
                    None => due,
                };
                due.saturating_duration_since(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, error = %e, "epoll failed; worker stops");
                break;
            }
            let now = Instant::now();
            if !self.driver.is_draining() && self.drain.load(Ordering::Relaxed) {
                self.begin_drain(now);
            }
            if !self.ending_streams && self.end_streams.load(Ordering::Relaxed) {
                self.ending_streams = true;
                self.driver.drain_streams(now);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {}
                    Token(t) if t < RESERVED => match owner_of(Token(t)) {
                        Owner::Client(id) => self.driver.mark(id, Side::Client),
                        Owner::Backend(conn) => {
                            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                            if let Some(id) =
                                self.transport
                                    .backend_event(conn, readable, ev.is_read_closed())
                            {
                                self.driver.mark(id, Side::Backend);
                            }
                        }
                    },
                    Token(_) => {}
                }
            }
            self.switch_turn(now);
            self.driver.run(&mut self.transport, now);
            let now = Instant::now();
            if now >= self.driver.poll_timeout() {
                self.driver.handle_timeout(&mut self.transport, now);
            }
        }
        let n = self.driver.len();
        self.driver.close_all(&mut self.transport, Instant::now());
        tracing::debug!(worker = self.id, closed = n, "worker stopped");
    }

    /// A switch began or parcels wait for this path.
    fn switch_pending(&self) -> bool {
        self.switch
            .as_ref()
            .is_some_and(|s| s.station.news(&s.board) || s.board.has_mail(Path::Kernel))
    }

    /// The live mode switch's share of a turn: pin and export when this
    /// path is the source, restore what was mailed here.
    fn switch_turn(&mut self, now: Instant) {
        let Some(mut sw) = self.switch.take() else {
            return;
        };
        if sw.station.news(&sw.board) {
            // Connections waiting in the accept queue become sockets of
            // ours before their flows are pinned.
            self.accept_all(now);
        }
        let transport = &self.transport;
        if let Some(to) = sw
            .station
            .poll(&sw.board, now, |steer| pin_all(transport, steer))
        {
            sw.station.export_batch(
                &sw.board,
                to,
                &mut self.driver,
                &mut self.transport,
                now,
                KernelTransport::export,
            );
        }
        while let Some(m) = sw.board.take(Path::Kernel) {
            let (transport, driver) = (&mut self.transport, &mut self.driver);
            let kept = sw.board.land(Path::Kernel, m, |parcel| {
                let d = transport.import(parcel, &sw.limits)?;
                Ok(driver.attach(transport, d, now))
            });
            if let Some(id) = kept {
                sw.station.keep(id);
            }
        }
        self.transport.sweep_lingering(now);
        self.switch = Some(sw);
    }

    /// Stop accepting (the listener closes) and drain the connections.
    fn begin_drain(&mut self, now: Instant) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.driver.drain(&mut self.transport, now);
        tracing::debug!(
            worker = self.id,
            open = self.driver.len(),
            "worker draining"
        );
    }

    fn accept_all(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.add_client(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log (at most once a second), and
                    // let the next event retry.
                    self.accept_errors += 1;
                    if self
                        .accept_logged
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        tracing::warn!(
                            worker = self.id,
                            error = %e,
                            failures = self.accept_errors,
                            "accept failed"
                        );
                        self.accept_logged = Some(now);
                        self.accept_errors = 0;
                    }
                    return;
                }
            }
        }
    }

    fn add_client(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant) {
        if !self.driver.admit(&mut self.transport, now) {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        let _ = stream.set_nodelay(true);
        let tls = match &self.records {
            Some(cfg) => ClientTls::Ours(FdRecords::accept(stream, cfg.clone())),
            None => match FdTls::accept(&self.ctx, stream) {
                Ok(t) => ClientTls::Openssl(t),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create TLS state");
                    return;
                }
            },
        };
        let client = KernelClient::new(tls);
        let _ = self
            .driver
            .accept(&mut self.transport, client, peer.ip().to_string(), now);
    }
}

/// Pin every flow of this worker (clients and backend connections, pooled
/// ones included, and sockets still closing) to the kernel path (before
/// the default moves away).
fn pin_all(t: &KernelTransport, steer: &dyn dpuproxy_switch::Steer) {
    let flows = t
        .client_flows
        .values()
        .chain(t.backends.iter().filter_map(|(_, e)| e.flow.as_ref()))
        .chain(t.lingering.flows());
    let (mut pinned, mut failed) = (0usize, 0usize);
    for f in flows {
        match steer.set(*f, FlowOwner::Path(Path::Kernel)) {
            Ok(()) => pinned += 1,
            Err(e) => {
                failed += 1;
                tracing::warn!(flow = %f, error = %e, "cannot pin a flow to the kernel path");
            }
        }
    }
    tracing::info!(
        pinned,
        failed,
        "kernel flows pinned before the default moves"
    );
}

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
        let transport = KernelTransport::new(
            poll.registry().try_clone()?,
            parts.shared.clone(),
            parts.metrics,
        );
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
            let timeout = if self.driver.has_work() {
                Duration::ZERO
            } else {
                self.driver
                    .poll_timeout()
                    .saturating_duration_since(Instant::now())
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
                            if let Some(id) = self.transport.backend_event(conn) {
                                self.driver.mark(id, Side::Backend);
                            }
                        }
                    },
                    Token(_) => {}
                }
            }
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

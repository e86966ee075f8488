//! One worker: a mio (epoll) loop that owns its `SO_REUSEPORT` listener,
//! its client connections, their upstream connections and an idle pool of
//! backend connections. It drives one `dpuproxy_l7::Connection` per client.
//!
//! mio is edge-triggered, so every socket is read and written until it
//! would block; `*_blocked` flags remember that, and any event on a socket
//! clears them. TLS may need to write while reading (and the reverse), so
//! both flags are cleared on either readiness.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dpuproxy_l7::deadlines::Deadlines;
use dpuproxy_l7::{Action, Connection, ErrorKind, Shared};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use openssl::ssl::SslContext;
use slab::Slab;

use crate::KernelMetrics;
use crate::tls_fd::{FdTls, Handshake};

const LISTENER: Token = Token(usize::MAX - 1);
pub(crate) const WAKER: Token = Token(usize::MAX - 2);
const READ_CHUNK: usize = 16 * 1024;
/// Upper bound on drive-loop rounds per event, so one busy connection
/// cannot starve the others.
const MAX_ROUNDS: usize = 64;
/// How long a closing connection drains client input after our FIN.
const LINGER_DRAIN: Duration = Duration::from_secs(2);
/// How often idle pooled connections past their lifetime are closed.
const POOL_EXPIRY_EVERY: Duration = Duration::from_secs(1);

fn client_token(i: usize) -> Token {
    Token(i * 2)
}
fn upstream_token(i: usize) -> Token {
    Token(i * 2 + 1)
}

/// Static settings of a worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSettings {
    /// Resolved backend addresses, index-aligned with `Shared::backends`.
    pub backend_addrs: Vec<SocketAddr>,
    /// A TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// How long a closing connection may take to flush to a client that
    /// does not read.
    pub linger_timeout: Duration,
    /// Idle pooled backend connections older than this are closed.
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections per backend per worker.
    pub pool_max_per_backend: usize,
    /// Most client connections per worker; beyond it new ones are closed.
    pub max_connections: usize,
}

struct Upstream {
    stream: TcpStream,
    backend: usize,
    connecting: bool,
    read_blocked: bool,
    write_blocked: bool,
}

struct Client {
    tls: FdTls,
    core: Connection,
    handshake_done: bool,
    accepted_at: Instant,
    read_blocked: bool,
    write_blocked: bool,
    eof_seen: bool,
    upstream: Option<Upstream>,
    /// `Some(flush)` once the core asked to close.
    closing: Option<bool>,
    closing_since: Option<Instant>,
    /// Set once close_notify and FIN went out: drain input until then.
    lingering_until: Option<Instant>,
}

struct Pooled {
    stream: TcpStream,
    since: Instant,
}

pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    listener: TcpListener,
    ctx: SslContext,
    shared: Arc<Shared>,
    metrics: Arc<KernelMetrics>,
    settings: WorkerSettings,
    clients: Slab<Client>,
    timers: Deadlines,
    /// Idle backend connections, indexed by backend.
    pool: Vec<Vec<Pooled>>,
    /// When the idle pool is next expired.
    next_pool_expiry: Instant,
    stop: Arc<AtomicBool>,
    buf: Vec<u8>,
    /// Connections to drive again without waiting for an event.
    ready: Vec<usize>,
    /// Spare list swapped with `ready` each turn, so neither reallocates.
    ready_spare: Vec<usize>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        mut listener: TcpListener,
        ctx: SslContext,
        shared: Arc<Shared>,
        metrics: Arc<KernelMetrics>,
        settings: WorkerSettings,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let pool = settings.backend_addrs.iter().map(|_| Vec::new()).collect();
        Ok(Self {
            id,
            poll,
            listener,
            ctx,
            shared,
            metrics,
            settings,
            clients: Slab::new(),
            timers: Deadlines::new(),
            pool,
            next_pool_expiry: Instant::now() + POOL_EXPIRY_EVERY,
            stop,
            buf: vec![0; READ_CHUNK],
            ready: Vec::new(),
            ready_spare: Vec::new(),
        })
    }

    pub(crate) fn new_waker(poll: &Poll) -> io::Result<Waker> {
        Waker::new(poll.registry(), WAKER)
    }

    /// Run until the stop flag is set (and the waker fires).
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        tracing::debug!(worker = self.id, "worker started");
        while !self.stop.load(Ordering::Relaxed) {
            // Wake for the next timer, and at least once a second to
            // expire the idle pool. Connections with work left over are
            // driven again at once.
            let timeout = if self.ready.is_empty() {
                let wake = self
                    .timers
                    .next()
                    .map_or(self.next_pool_expiry, |t| t.min(self.next_pool_expiry));
                wake.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, error = %e, "epoll failed; worker stops");
                break;
            }
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {}
                    Token(t) => {
                        let idx = t / 2;
                        let Some(c) = self.clients.get_mut(idx) else {
                            continue;
                        };
                        if t % 2 == 0 {
                            c.read_blocked = false;
                            c.write_blocked = false;
                        } else if let Some(u) = &mut c.upstream {
                            u.read_blocked = false;
                            u.write_blocked = false;
                            self.check_connected(idx, now);
                        }
                        self.drive(idx, now);
                    }
                }
            }
            self.fire_timers(Instant::now());
            // `drive` may queue connections again; they go on the other list.
            let mut ready =
                std::mem::replace(&mut self.ready, std::mem::take(&mut self.ready_spare));
            let now = Instant::now();
            for idx in ready.drain(..) {
                self.drive(idx, now);
            }
            self.ready_spare = ready;
            let now = Instant::now();
            if now >= self.next_pool_expiry {
                self.expire_pool(now);
                self.next_pool_expiry = now + POOL_EXPIRY_EVERY;
            }
        }
        let n = self.clients.len();
        for mut c in self.clients.drain() {
            c.tls.shutdown();
        }
        tracing::debug!(worker = self.id, closed = n, "worker stopped");
    }

    fn accept_all(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.add_client(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log, and let the next event retry.
                    tracing::warn!(worker = self.id, error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn add_client(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant) {
        if self.clients.len() >= self.settings.max_connections {
            self.metrics
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        let _ = stream.set_nodelay(true);
        let tls = match FdTls::accept(&self.ctx, stream) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create TLS state");
                return;
            }
        };
        let entry = self.clients.vacant_entry();
        let idx = entry.key();
        let mut client = Client {
            tls,
            core: Connection::new(self.shared.clone(), peer.ip().to_string(), now),
            handshake_done: false,
            accepted_at: now,
            read_blocked: false,
            write_blocked: false,
            eof_seen: false,
            upstream: None,
            closing: None,
            closing_since: None,
            lingering_until: None,
        };
        if let Err(e) = client.tls.register(
            self.poll.registry(),
            client_token(idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "cannot register client socket");
            return;
        }
        entry.insert(client);
        self.metrics.accepted.fetch_add(1, Ordering::Relaxed);
        self.drive(idx, now);
    }

    /// Move one client connection as far as it can go without blocking.
    /// A connection still making progress after `MAX_ROUNDS` goes on the
    /// ready list and is driven again next turn (edge-triggered epoll will
    /// not report the bytes it already has).
    fn drive(&mut self, idx: usize, now: Instant) {
        let mut exhausted = true;
        for _ in 0..MAX_ROUNDS {
            let Some(c) = self.clients.get_mut(idx) else {
                return;
            };
            let mut progress = false;

            if let Some(until) = c.lingering_until {
                // Closing: discard what the client still sends until it
                // closes too, so that our last response is not reset away.
                match c.tls.read(&mut self.buf) {
                    Ok(0) => return self.close_client(idx),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if now >= until {
                            return self.close_client(idx);
                        }
                        exhausted = false;
                        break;
                    }
                    Err(_) => return self.close_client(idx),
                }
            }

            if !c.handshake_done {
                match c.tls.handshake() {
                    Ok(Handshake::Done) => {
                        c.handshake_done = true;
                        let path = c.tls.record_path();
                        self.metrics.record_path(path);
                        self.metrics.handshakes.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            tls = %c.tls.describe(),
                            record_path = path.label(),
                            "handshake done"
                        );
                        progress = true;
                    }
                    Ok(Handshake::WouldBlock) => {
                        c.read_blocked = true;
                        exhausted = false;
                        break;
                    }
                    Err(e) => {
                        self.shared.metrics.error(ErrorKind::TlsHandshake);
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return self.close_client(idx);
                    }
                }
            }

            // Client → core.
            if c.handshake_done && !c.read_blocked && !c.eof_seen && c.core.wants_downstream_read()
            {
                match c.tls.read(&mut self.buf) {
                    Ok(0) => {
                        c.eof_seen = true;
                        c.core.handle_downstream_eof(now);
                        progress = true;
                    }
                    Ok(n) => {
                        c.core.handle_downstream_data(now, &self.buf[..n]);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.read_blocked = true,
                    Err(e) => {
                        // A broken client connection: nothing more can be
                        // delivered, so close without lingering.
                        tracing::debug!(error = %e, "client read failed");
                        self.shared.metrics.error(ErrorKind::TlsIo);
                        c.eof_seen = true;
                        c.core.handle_downstream_eof(now);
                        c.closing = Some(false);
                        progress = true;
                    }
                }
            }

            // Core → actions.
            while let Some(action) = self.clients[idx].core.poll_action() {
                progress = true;
                self.apply(idx, action, now);
            }
            let Some(c) = self.clients.get_mut(idx) else {
                return;
            };

            // Core → upstream.
            if let Some(u) = &mut c.upstream
                && !u.connecting
            {
                if !u.write_blocked && !c.core.upstream_pending().is_empty() {
                    match u.stream.write(c.core.upstream_pending()) {
                        Ok(n) => {
                            c.core.upstream_consumed(n);
                            progress = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => u.write_blocked = true,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            u.read_blocked = true;
                            u.write_blocked = true;
                            c.core.handle_upstream_error(now);
                            progress = true;
                        }
                    }
                }
                // Upstream → core.
                if let Some(u) = &mut c.upstream
                    && !u.read_blocked
                    && c.core.wants_upstream_read()
                {
                    match u.stream.read(&mut self.buf) {
                        Ok(0) => {
                            u.read_blocked = true;
                            c.core.handle_upstream_eof(now);
                            progress = true;
                        }
                        Ok(n) => {
                            c.core.handle_upstream_data(now, &self.buf[..n]);
                            progress = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => u.read_blocked = true,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            u.read_blocked = true;
                            c.core.handle_upstream_error(now);
                            progress = true;
                        }
                    }
                }
            }

            // Core → client.
            if c.handshake_done
                && !c.write_blocked
                && c.closing != Some(false)
                && !c.core.downstream_pending().is_empty()
            {
                match c.tls.write(c.core.downstream_pending()) {
                    Ok(n) => {
                        c.core.downstream_consumed(now, n);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.write_blocked = true,
                    Err(e) => {
                        tracing::debug!(error = %e, "client write failed");
                        c.eof_seen = true;
                        c.core.handle_downstream_eof(now);
                        c.closing = Some(false);
                        progress = true;
                    }
                }
            }

            if let Some(flush) = c.closing {
                if !flush {
                    return self.close_client(idx);
                }
                if c.core.downstream_pending().is_empty() {
                    if c.eof_seen {
                        return self.close_client(idx);
                    }
                    // Lingering close: close_notify and FIN now, then drain
                    // the client's input for a short while.
                    c.tls.shutdown();
                    c.tls.shutdown_write();
                    c.lingering_until = Some(now + LINGER_DRAIN);
                    c.closing_since = Some(now);
                    continue;
                }
                if c.write_blocked {
                    exhausted = false;
                    break;
                }
            }
            if !progress {
                exhausted = false;
                break;
            }
        }
        if exhausted && self.clients.contains(idx) {
            self.ready.push(idx);
        }
        self.rearm(idx);
    }

    fn apply(&mut self, idx: usize, action: Action, now: Instant) {
        match action {
            Action::ConnectUpstream { backend, fresh } => self.connect(idx, backend, fresh, now),
            Action::ReleaseUpstream { reusable } => {
                let c = &mut self.clients[idx];
                if let Some(mut u) = c.upstream.take() {
                    let _ = self.poll.registry().deregister(&mut u.stream);
                    if reusable {
                        let list = &mut self.pool[u.backend];
                        if list.len() < self.settings.pool_max_per_backend {
                            list.push(Pooled {
                                stream: u.stream,
                                since: now,
                            });
                        }
                    }
                }
            }
            Action::AbortUpstream => {
                let c = &mut self.clients[idx];
                if let Some(mut u) = c.upstream.take() {
                    let _ = self.poll.registry().deregister(&mut u.stream);
                    let _ = u.stream.shutdown(Shutdown::Both);
                }
            }
            Action::CloseDownstream { flush } => {
                let c = &mut self.clients[idx];
                c.closing = Some(flush);
                c.closing_since = Some(now);
            }
        }
    }

    /// Take a live pooled connection to `backend`, if any.
    fn take_pooled(&mut self, backend: usize, now: Instant) -> Option<TcpStream> {
        let list = self.pool.get_mut(backend)?;
        while let Some(p) = list.pop() {
            if now.saturating_duration_since(p.since) >= self.settings.pool_idle_timeout {
                continue;
            }
            // A pooled connection must be silent: EOF or stray bytes mean
            // the backend closed it or broke framing.
            let mut probe = [0u8; 1];
            match p.stream.peek(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(p.stream),
                _ => continue,
            }
        }
        None
    }

    fn connect(&mut self, idx: usize, backend: usize, fresh: bool, now: Instant) {
        if !fresh && let Some(mut stream) = self.take_pooled(backend, now) {
            let registered = self.poll.registry().register(
                &mut stream,
                upstream_token(idx),
                Interest::READABLE | Interest::WRITABLE,
            );
            if registered.is_ok() {
                let c = &mut self.clients[idx];
                c.upstream = Some(Upstream {
                    stream,
                    backend,
                    connecting: false,
                    read_blocked: false,
                    write_blocked: false,
                });
                self.metrics.pool_reuses.fetch_add(1, Ordering::Relaxed);
                c.core.handle_upstream_connected(now, true);
                return;
            }
        }
        let addr = self.settings.backend_addrs[backend];
        let attempt = TcpStream::connect(addr).and_then(|mut s| {
            s.set_nodelay(true)?;
            self.poll.registry().register(
                &mut s,
                upstream_token(idx),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        let c = &mut self.clients[idx];
        match attempt {
            Ok(stream) => {
                self.metrics
                    .upstream_connects
                    .fetch_add(1, Ordering::Relaxed);
                c.upstream = Some(Upstream {
                    stream,
                    backend,
                    connecting: true,
                    read_blocked: false,
                    write_blocked: false,
                });
                // Completion is checked on the first writable event.
                self.check_connected(idx, now);
            }
            Err(e) => {
                tracing::warn!(backend = %addr, error = %e, "backend connect failed");
                c.core.handle_upstream_connect_failed(now);
            }
        }
    }

    /// A non-blocking connect is done when the socket has a peer; it failed
    /// when `SO_ERROR` is set.
    fn check_connected(&mut self, idx: usize, now: Instant) {
        let c = &mut self.clients[idx];
        let Some(u) = &mut c.upstream else { return };
        if !u.connecting {
            return;
        }
        let failed = match u.stream.take_error() {
            Ok(Some(e)) | Err(e) => e,
            Ok(None) => match u.stream.peer_addr() {
                Ok(_) => {
                    u.connecting = false;
                    c.core.handle_upstream_connected(now, false);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => e,
            },
        };
        let addr = self.settings.backend_addrs[u.backend];
        tracing::warn!(backend = %addr, error = %failed, "backend connect failed");
        let mut u = c.upstream.take().expect("checked above");
        let _ = self.poll.registry().deregister(&mut u.stream);
        c.core.handle_upstream_connect_failed(now);
    }

    fn close_client(&mut self, idx: usize) {
        if !self.clients.contains(idx) {
            return;
        }
        let mut c = self.clients.remove(idx);
        self.timers.set(idx, None);
        if let Some(mut u) = c.upstream.take() {
            let _ = self.poll.registry().deregister(&mut u.stream);
        }
        if c.handshake_done && c.lingering_until.is_none() {
            c.tls.shutdown();
        }
        let _ = c.tls.deregister(self.poll.registry());
        self.metrics.closed.fetch_add(1, Ordering::Relaxed);
    }

    fn rearm(&mut self, idx: usize) {
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        let deadline = if !c.handshake_done {
            Some(c.accepted_at + self.settings.handshake_timeout)
        } else if let Some(until) = c.lingering_until {
            Some(until)
        } else if let Some(since) = c.closing_since {
            Some(since + self.settings.linger_timeout)
        } else {
            c.core.poll_timeout()
        };
        self.timers.set(idx, deadline);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(idx) = self.timers.pop_due(now) {
            let Some(c) = self.clients.get_mut(idx) else {
                continue;
            };
            if !c.handshake_done {
                self.shared.metrics.error(ErrorKind::TlsHandshake);
                self.close_client(idx);
                continue;
            }
            if c.closing.is_some() || c.lingering_until.is_some() {
                // The client stopped reading while we flushed, or did not
                // close within the drain time: give up.
                self.close_client(idx);
                continue;
            }
            c.core.handle_timeout(now);
            self.drive(idx, now);
        }
    }

    fn expire_pool(&mut self, now: Instant) {
        let limit = self.settings.pool_idle_timeout;
        for list in &mut self.pool {
            list.retain(|p| now.saturating_duration_since(p.since) < limit);
        }
    }
}

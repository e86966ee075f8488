//! The full-offload data path as a [`Transport`] for the shared driver:
//! clients are userspace TCP connections (`dpuproxy-tcp`) carrying TLS
//! records that this crate opens and seals itself (`dpuproxy-tls`: OpenSSL
//! handshake over memory buffers, then our record layer); backends are
//! plain TCP connections on the same stack. Nothing here needs DPDK: the
//! stack runs over any smoltcp device.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use dpuproxy_driver::{
    Close, ConnectStatus, Failure, HandshakeStep, Io, Linger, Side, SlotId, Transport,
};
use dpuproxy_l7::Shared;
use dpuproxy_switch::{Flow, FlowOwner, Lingering, Path, SwitchBoard};
use dpuproxy_tcp::{ConnId, ConnectOptions, Stack, State, TcpError};
use dpuproxy_tls::HandshakeConfig;
use dpuproxy_tls::session::{ServerSession, Step};

use crate::owners::{Owner, Owners};

/// TLS bytes held for one client in each direction before reads (or
/// seals) stop.
pub use dpuproxy_tls::session::MAX_TLS_BUFFER;

/// Whether a local port for a backend connection is acceptable (with
/// several lcores: its replies must hash to this lcore). Arguments: the
/// backend's address and port, and the candidate local port.
pub type PortFilter<'a> = Box<dyn Fn(Ipv4Addr, u16, u16) -> bool + 'a>;

/// A client connection of the userspace path: its TCP connection and its
/// TLS session (state and the TLS bytes on their way in and out).
#[derive(Debug)]
pub struct UserspaceClient {
    pub(crate) tcp: ConnId,
    pub(crate) tls: ServerSession,
}

impl UserspaceClient {
    /// An accepted TCP connection about to start its TLS handshake.
    pub fn new(
        tcp: ConnId,
        config: &HandshakeConfig,
    ) -> Result<Self, dpuproxy_tls::HandshakeError> {
        Ok(Self {
            tcp,
            tls: ServerSession::new(config)?,
        })
    }
}

/// One lcore's TCP stack and the owner of each of its connections.
pub struct UserspaceTransport<'a> {
    /// The stack (the loop polls it for frames and events).
    pub stack: Stack,
    pub(crate) owners: Owners<ConnId>,
    shared: Arc<Shared>,
    port_filter: PortFilter<'a>,
    /// With the live mode switch: the board whose steering learns this
    /// path's backend connections before their SYN leaves, and forgets
    /// every flow that closes here.
    switch: Option<&'a SwitchBoard>,
    /// Flows left pinned here after they closed (see [`Lingering`]).
    pub(crate) lingering: Lingering,
}

impl std::fmt::Debug for UserspaceTransport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceTransport")
            .field("stack", &self.stack)
            .finish_non_exhaustive()
    }
}

impl<'a> UserspaceTransport<'a> {
    /// A transport over `stack` for the backends of `shared` (their
    /// addresses must be IPv4: the stack is IPv4 only).
    pub fn new(stack: Stack, shared: Arc<Shared>, port_filter: PortFilter<'a>) -> Self {
        Self {
            stack,
            owners: Owners::default(),
            shared,
            port_filter,
            switch: None,
            lingering: Lingering::default(),
        }
    }

    /// Keep `board`'s steering in step with this transport's connections
    /// (the live mode switch).
    pub fn with_switch(mut self, board: &'a SwitchBoard) -> Self {
        self.switch = Some(board);
        self
    }

    /// `conn` closes here: while new connections come here its entry
    /// goes now (its last segments follow the default, which is this
    /// path); otherwise it lingers (see [`Lingering`]), so that they do
    /// not meet the other path's RST.
    fn unsteer(&mut self, conn: ConnId) {
        let Some(board) = self.switch else {
            return;
        };
        let (Some(steer), Ok(t)) = (board.steer(), self.stack.tuple(conn)) else {
            return;
        };
        if board.current() == Path::Dpdk {
            steer.forget(Flow::of(&t));
        } else {
            self.lingering.push(Flow::of(&t), std::time::Instant::now());
        }
    }

    /// Forget the lingering flows that are due (a bounded number).
    pub fn sweep_lingering(&mut self, now: std::time::Instant) {
        let (Some(steer), true) = (
            self.switch.and_then(SwitchBoard::steer),
            self.lingering.due(now),
        ) else {
            return;
        };
        let stack = &self.stack;
        self.lingering.sweep(steer, Path::Dpdk, now, 256, |f| {
            stack.has_connection(&dpuproxy_tcp::FourTuple {
                local_addr: *f.local.ip(),
                local_port: f.local.port(),
                remote_addr: *f.remote.ip(),
                remote_port: f.remote.port(),
            })
        });
    }

    /// The slot and side a TCP connection's event is for (`None`: a pooled
    /// or unknown connection, or a stale handle).
    pub fn owner(&self, conn: ConnId) -> Option<(SlotId, Side)> {
        match self.owners.get(conn)? {
            Owner::Slot(slot, side) => Some((slot, side)),
            Owner::Pooled => None,
        }
    }

    /// Send what is sealed, as far as the TCP send buffer takes it.
    fn push_out(&mut self, c: &mut UserspaceClient) -> Io {
        if c.tls.out_len() == 0 {
            return Io::Done(0);
        }
        match self.stack.send_slice(c.tcp, c.tls.pending_out()) {
            Ok(0) => Io::WouldBlock,
            Ok(n) => {
                c.tls.consume_out(n);
                Io::Done(n)
            }
            Err(_) => Io::Failed(Failure::Broken),
        }
    }

    /// Move received TCP bytes into the session's `inbuf` (bounded): how
    /// many came, or `Err` on the end of the TCP stream or a failure.
    fn pull_in(&mut self, c: &mut UserspaceClient) -> Result<usize, TcpError> {
        if c.tls.inbuf_full() {
            return Ok(0);
        }
        let inbuf = c.tls.inbuf();
        self.stack.recv(c.tcp, |buf| {
            inbuf.extend_from_slice(buf);
            (buf.len(), buf.len())
        })
    }
}

impl Transport for UserspaceTransport<'_> {
    type Client = UserspaceClient;
    type Backend = ConnId;

    fn attach_client(&mut self, client: &mut UserspaceClient, slot: SlotId) -> io::Result<()> {
        self.owners
            .insert(client.tcp, Owner::Slot(slot, Side::Client));
        Ok(())
    }

    fn handshake(&mut self, c: &mut UserspaceClient) -> HandshakeStep {
        // Everything TCP holds is fed (record by record, inside `feed`).
        loop {
            if self.pull_in(c).is_err() {
                return HandshakeStep::Failed;
            }
            if c.tls.inbuf().is_empty() {
                let _ = self.push_out(c);
                return HandshakeStep::Pending;
            }
            let step = c.tls.handshake();
            let _ = self.push_out(c);
            match step {
                Step::Done => return HandshakeStep::Done,
                Step::Failed => return HandshakeStep::Failed,
                Step::Pending => {}
            }
        }
    }

    fn read(&mut self, c: &mut UserspaceClient, sink: &mut dyn FnMut(&[u8])) -> Io {
        let (pulled, tcp_end) = match self.pull_in(c) {
            Ok(n) => (n, false),
            Err(TcpError::Finished) => (0, true),
            Err(_) => return Io::Failed(Failure::Broken),
        };
        let opened = c.tls.open(sink);
        if opened.error {
            return Io::Failed(Failure::Tls);
        }
        if opened.close_notify || (tcp_end && opened.consumed == 0) {
            return Io::Eof;
        }
        // Progress is bytes taken from TCP, opened or not yet whole.
        match pulled.max(opened.consumed) {
            0 => Io::WouldBlock,
            n => Io::Done(n),
        }
    }

    fn write(&mut self, c: &mut UserspaceClient, data: &[u8]) -> Io {
        if c.tls.outbuf_full() {
            if let Io::Failed(f) = self.push_out(c) {
                return Io::Failed(f);
            }
            if c.tls.outbuf_full() {
                return Io::WouldBlock;
            }
        }
        if let Err(e) = c.tls.seal(data) {
            tracing::debug!(error = %e, "TLS seal failed");
            return Io::Failed(Failure::Broken);
        }
        match self.push_out(c) {
            Io::Failed(f) => Io::Failed(f),
            _ => Io::Done(data.len()),
        }
    }

    fn flush(&mut self, c: &mut UserspaceClient) -> Io {
        self.push_out(c)
    }

    fn flushed(&self, c: &UserspaceClient) -> bool {
        c.tls.out_len() == 0
    }

    fn shutdown(&mut self, c: &mut UserspaceClient) -> Linger {
        // close_notify goes through the session's outbuf like any record,
        // so a full send buffer cannot cut it short; the FIN follows at
        // `close`, after it.
        c.tls.close_notify();
        // The stack discards what arrives after `close` itself.
        Linger::No
    }

    fn close(&mut self, c: UserspaceClient, how: Close) {
        self.owners.remove(c.tcp);
        self.unsteer(c.tcp);
        let _ = match how {
            Close::Graceful => self.stack.close(c.tcp),
            Close::Abort => self.stack.abort(c.tcp),
        };
    }

    fn buffered(&self, c: &UserspaceClient) -> usize {
        c.tls.buffered()
    }

    fn connect(&mut self, slot: SlotId, backend: usize) -> io::Result<ConnId> {
        if backend >= self.shared.backends.len() {
            return Err(io::Error::other("no such backend"));
        }
        let SocketAddr::V4(addr) = self.shared.backends.get(backend).socket else {
            return Err(io::Error::other("the DPDK path is IPv4 only"));
        };
        let (ip, port) = (*addr.ip(), addr.port());
        let filter = &self.port_filter;
        let id = self
            .stack
            .connect_with(ip, port, &ConnectOptions::default(), |p| {
                filter(ip, port, p)
            })
            .map_err(|e| io::Error::other(e.to_string()))?;
        // With the switch, the reply to our SYN must come here even when
        // new connections go to the kernel.
        if let Some(steer) = self.switch.and_then(SwitchBoard::steer)
            && let Ok(t) = self.stack.tuple(id)
            && let Err(e) = steer.set(Flow::of(&t), FlowOwner::Path(Path::Dpdk))
        {
            let _ = self.stack.abort(id);
            return Err(io::Error::other(format!(
                "steering the backend connection: {e}"
            )));
        }
        self.owners.insert(id, Owner::Slot(slot, Side::Backend));
        Ok(id)
    }

    fn connect_status(&mut self, conn: &mut ConnId) -> ConnectStatus {
        match self.stack.state(*conn) {
            Ok(State::SynSent | State::SynReceived) => ConnectStatus::Pending,
            Ok(State::Closed | State::Listen) | Err(_) => ConnectStatus::Failed,
            Ok(_) => ConnectStatus::Connected,
        }
    }

    fn backend_read(&mut self, conn: &mut ConnId, sink: &mut dyn FnMut(&[u8])) -> Io {
        match self.stack.recv(*conn, |buf| {
            if !buf.is_empty() {
                sink(buf);
            }
            (buf.len(), buf.len())
        }) {
            Ok(0) => Io::WouldBlock,
            Ok(n) => Io::Done(n),
            Err(TcpError::Finished) => Io::Eof,
            Err(_) => Io::Failed(Failure::Broken),
        }
    }

    fn backend_write(&mut self, conn: &mut ConnId, data: &[u8]) -> Io {
        match self.stack.send_slice(*conn, data) {
            Ok(0) => Io::WouldBlock,
            Ok(n) => Io::Done(n),
            Err(_) => Io::Failed(Failure::Broken),
        }
    }

    fn adopt(&mut self, conn: &mut ConnId, slot: SlotId) -> bool {
        self.owners.insert(*conn, Owner::Slot(slot, Side::Backend));
        true
    }

    fn park(&mut self, conn: &mut ConnId) {
        self.owners.insert(*conn, Owner::Pooled);
    }

    fn idle_alive(&mut self, conn: &mut ConnId) -> bool {
        self.stack.state(*conn) == Ok(State::Established) && self.stack.recv_queue(*conn) == Ok(0)
    }

    fn close_backend(&mut self, conn: ConnId, how: Close) {
        self.owners.remove(conn);
        self.unsteer(conn);
        let _ = match how {
            Close::Graceful => self.stack.close(conn),
            Close::Abort => self.stack.abort(conn),
        };
    }
}

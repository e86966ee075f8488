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
use dpuproxy_tcp::{ConnId, ConnectOptions, Stack, State, TcpError};
use dpuproxy_tls::{Handshake, HandshakeConfig, Incoming, OpensslHandshake, RecordLayer};

use crate::outbuf::OutBuf;
use crate::owners::{Owner, Owners};

/// TLS bytes held for one client in each direction before reads (or
/// seals) stop.
pub const MAX_TLS_BUFFER: usize = 256 * 1024;

/// Whether a local port for a backend connection is acceptable (with
/// several lcores: its replies must hash to this lcore). Arguments: the
/// backend's address and port, and the candidate local port.
pub type PortFilter<'a> = Box<dyn Fn(Ipv4Addr, u16, u16) -> bool + 'a>;

enum Tls {
    Handshaking(Box<OpensslHandshake>),
    Established(Box<RecordLayer>),
    Failed,
}

/// A client connection of the userspace path: its TCP connection, its TLS
/// state, and the TLS bytes on their way in and out.
pub struct UserspaceClient {
    tcp: ConnId,
    tls: Tls,
    /// TLS bytes received and not yet opened.
    inbuf: Vec<u8>,
    /// TLS bytes sealed and not yet taken by the TCP send buffer.
    outbuf: OutBuf,
}

impl std::fmt::Debug for UserspaceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceClient")
            .field("tcp", &self.tcp)
            .field("inbuf", &self.inbuf.len())
            .field("outbuf", &self.outbuf.len())
            .finish_non_exhaustive()
    }
}

impl UserspaceClient {
    /// An accepted TCP connection about to start its TLS handshake.
    pub fn new(
        tcp: ConnId,
        config: &HandshakeConfig,
    ) -> Result<Self, dpuproxy_tls::HandshakeError> {
        Ok(Self {
            tcp,
            tls: Tls::Handshaking(Box::new(OpensslHandshake::new(config)?)),
            inbuf: Vec::new(),
            outbuf: OutBuf::default(),
        })
    }
}

/// One lcore's TCP stack and the owner of each of its connections.
pub struct UserspaceTransport<'a> {
    /// The stack (the loop polls it for frames and events).
    pub stack: Stack,
    owners: Owners<ConnId>,
    shared: Arc<Shared>,
    port_filter: PortFilter<'a>,
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
        }
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
        if c.outbuf.is_empty() {
            return Io::Done(0);
        }
        match self.stack.send_slice(c.tcp, c.outbuf.pending()) {
            Ok(0) => Io::WouldBlock,
            Ok(n) => {
                c.outbuf.consume(n);
                Io::Done(n)
            }
            Err(_) => Io::Failed(Failure::Broken),
        }
    }

    /// Move received TCP bytes into `inbuf` (bounded): how many came, or
    /// `Err` on the end of the TCP stream or a failure.
    fn pull_in(&mut self, c: &mut UserspaceClient) -> Result<usize, TcpError> {
        if c.inbuf.len() >= MAX_TLS_BUFFER {
            return Ok(0);
        }
        let inbuf = &mut c.inbuf;
        self.stack.recv(c.tcp, |buf| {
            inbuf.extend_from_slice(buf);
            (buf.len(), buf.len())
        })
    }
}

/// What opening the buffered records gave.
struct Opened {
    consumed: usize,
    close_notify: bool,
    error: bool,
}

/// Open every whole record in `inbuf`, handing application data to `sink`.
fn open_records(rl: &mut RecordLayer, inbuf: &mut Vec<u8>, sink: &mut dyn FnMut(&[u8])) -> Opened {
    let mut used = 0;
    let mut out = Opened {
        consumed: 0,
        close_notify: false,
        error: false,
    };
    while used < inbuf.len() && !out.close_notify {
        match rl.open_next(&mut inbuf[used..]) {
            Ok(o) => {
                let n = o.consumed;
                match o.incoming {
                    Incoming::NeedMore => break,
                    Incoming::AppData(data) if !data.is_empty() => sink(data),
                    Incoming::AppData(_) | Incoming::Control => {}
                    Incoming::CloseNotify => out.close_notify = true,
                }
                used += n;
                if n == 0 {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "TLS record error");
                out.error = true;
                break;
            }
        }
    }
    inbuf.drain(..used.min(inbuf.len()));
    out.consumed = used;
    out
}

/// Feed the buffered handshake bytes to OpenSSL; hand over to the record
/// layer when it is done.
fn feed_handshake(c: &mut UserspaceClient) -> HandshakeStep {
    let Tls::Handshaking(hs) = &mut c.tls else {
        return HandshakeStep::Failed;
    };
    let fed = hs.feed(&c.inbuf);
    c.inbuf.clear();
    let _ = hs.poll_output(c.outbuf.appender());
    match fed {
        Err(e) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            c.tls = Tls::Failed;
            HandshakeStep::Failed
        }
        Ok(()) if hs.is_handshaking() => HandshakeStep::Pending,
        Ok(()) => {
            let Tls::Handshaking(hs) = std::mem::replace(&mut c.tls, Tls::Failed) else {
                unreachable!("matched above")
            };
            match hs.into_established() {
                Ok(est) => {
                    c.outbuf.appender().extend_from_slice(&est.output);
                    c.inbuf = est.leftover;
                    c.tls = Tls::Established(Box::new(est.record_layer));
                    HandshakeStep::Done
                }
                Err(e) => {
                    tracing::debug!(error = %e, "TLS hand-over failed");
                    HandshakeStep::Failed
                }
            }
        }
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
            if c.inbuf.is_empty() {
                let _ = self.push_out(c);
                return HandshakeStep::Pending;
            }
            let step = feed_handshake(c);
            let _ = self.push_out(c);
            if step != HandshakeStep::Pending {
                return step;
            }
        }
    }

    fn read(&mut self, c: &mut UserspaceClient, sink: &mut dyn FnMut(&[u8])) -> Io {
        let (pulled, tcp_end) = match self.pull_in(c) {
            Ok(n) => (n, false),
            Err(TcpError::Finished) => (0, true),
            Err(_) => return Io::Failed(Failure::Broken),
        };
        let Tls::Established(rl) = &mut c.tls else {
            return Io::Failed(Failure::Tls);
        };
        let opened = open_records(rl, &mut c.inbuf, sink);
        // KeyUpdate answers, alerts.
        let _ = rl.poll_output(c.outbuf.appender());
        if opened.error {
            c.inbuf.clear();
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
        if c.outbuf.len() >= MAX_TLS_BUFFER {
            if let Io::Failed(f) = self.push_out(c) {
                return Io::Failed(f);
            }
            if c.outbuf.len() >= MAX_TLS_BUFFER {
                return Io::WouldBlock;
            }
        }
        let Tls::Established(rl) = &mut c.tls else {
            return Io::Failed(Failure::Broken);
        };
        if let Err(e) = rl.write_app_data(data, c.outbuf.appender()) {
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
        c.outbuf.is_empty()
    }

    fn shutdown(&mut self, c: &mut UserspaceClient) -> Linger {
        // close_notify goes through outbuf like any record, so a full send
        // buffer cannot cut it short; the FIN follows at `close`, after it.
        if let Tls::Established(rl) = &mut c.tls
            && rl.send_close_notify().is_ok()
        {
            let _ = rl.poll_output(c.outbuf.appender());
        }
        // The stack discards what arrives after `close` itself.
        Linger::No
    }

    fn close(&mut self, c: UserspaceClient, how: Close) {
        self.owners.remove(c.tcp);
        let _ = match how {
            Close::Graceful => self.stack.close(c.tcp),
            Close::Abort => self.stack.abort(c.tcp),
        };
    }

    fn buffered(&self, c: &UserspaceClient) -> usize {
        c.inbuf.len() + c.outbuf.len()
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
        let _ = match how {
            Close::Graceful => self.stack.close(conn),
            Close::Abort => self.stack.abort(conn),
        };
    }
}

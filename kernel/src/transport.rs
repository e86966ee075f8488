//! The kernel data path as a [`Transport`] for the shared driver: clients
//! are OpenSSL sessions on kernel sockets ([`FdTls`], kTLS when the kernel
//! takes it), backends are non-blocking kernel TCP sockets, and readiness
//! comes from mio (epoll, edge-triggered). A client socket is registered
//! under a token that encodes its driver slot (index and generation); a
//! backend socket under a token of its own, registered once for its whole
//! life: the transport's table says which slot it serves, or that it idles
//! in the pool. Handing a pooled connection to a request (and back) is a
//! table update, not two `epoll_ctl` calls; a connection is probed
//! (`MSG_PEEK`) once when it is parked, and again at reuse only if an event
//! came for it while it idled.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dpuproxy_driver::{
    Close, ConnectStatus, Failure, HandshakeStep, Io, Linger, SlotId, Transport,
};
use dpuproxy_l7::Shared;
use dpuproxy_switch::{Flow, FlowOwner, Lingering, Path, SwitchBoard};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::KernelMetrics;
use crate::records_fd::FdRecords;
use crate::tls_fd::{FdTls, Handshake, set_linger_zero};

const READ_CHUNK: usize = 16 * 1024;
/// Tokens at or above this are the worker's own (listener, waker).
pub(crate) const RESERVED: usize = 1 << (usize::BITS - 1);
/// Bits of a token below the generation: side (1) and slot index (32).
const GEN_SHIFT: u32 = 33;
/// The driver's generations (they fit between the index and the reserved
/// top bit of a 64-bit token).
const GEN_MASK: usize = (1 << dpuproxy_driver::GENERATION_BITS) - 1;
const _: () = assert!(
    GEN_SHIFT + dpuproxy_driver::GENERATION_BITS < usize::BITS,
    "tokens need 64-bit usize"
);

/// The mio token of a slot's client socket.
pub(crate) fn client_token(id: SlotId) -> Token {
    let gen_bits = (id.generation as usize & GEN_MASK) << GEN_SHIFT;
    Token(gen_bits | ((id.index as usize) << 1))
}

/// The mio token of backend connection `id` (its entry in the transport's
/// table).
fn backend_token(id: usize) -> Token {
    Token((id << 1) | 1)
}

/// What a (non-reserved) token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A slot's client socket.
    Client(SlotId),
    /// Backend connection `id` of the transport's table.
    Backend(usize),
}

/// The socket a (non-reserved) token stands for.
pub(crate) fn owner_of(t: Token) -> Owner {
    if t.0 & 1 == 1 {
        return Owner::Backend(t.0 >> 1);
    }
    let index = ((t.0 >> 1) & 0xffff_ffff) as u32;
    let generation = ((t.0 >> GEN_SHIFT) & GEN_MASK) as u32;
    Owner::Client(SlotId { index, generation })
}

/// Who processes a kernel client's TLS records.
#[derive(Debug)]
pub(crate) enum ClientTls {
    /// OpenSSL on the fd (`SSL_read`/`SSL_write`, or kTLS it installs).
    Openssl(FdTls),
    /// Our record layer on the fd, after a memory-buffer handshake.
    Ours(FdRecords),
}

/// A client connection of the kernel path.
#[derive(Debug)]
pub(crate) struct KernelClient {
    pub(crate) tls: ClientTls,
    /// The client sent its first bytes: OpenSSL runs the handshake.
    started: bool,
    established: bool,
}

impl KernelClient {
    pub(crate) fn new(tls: ClientTls) -> Self {
        Self {
            tls,
            started: false,
            established: false,
        }
    }

    /// A client moved in from the other path, its session established.
    pub(crate) fn moved(records: FdRecords) -> Self {
        Self {
            tls: ClientTls::Ours(records),
            started: true,
            established: true,
        }
    }

    /// Its socket, when our record layer runs on it.
    pub(crate) fn records_stream(&self) -> Option<&TcpStream> {
        match &self.tls {
            ClientTls::Openssl(_) => None,
            ClientTls::Ours(r) => Some(r.stream()),
        }
    }
}

/// A backend connection of the kernel path.
#[derive(Debug)]
pub(crate) struct KernelBackend {
    pub(crate) stream: TcpStream,
    pub(crate) addr: SocketAddr,
    /// Its entry in [`KernelTransport`]'s table (and its token);
    /// `usize::MAX` for one moved in and not registered yet.
    pub(crate) id: usize,
}

/// Where a backend connection's events go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackendEntry {
    /// The socket's descriptor (an entry belongs to one socket).
    fd: RawFd,
    /// The slot it serves; `None` while it idles in the pool.
    owner: Option<SlotId>,
    /// An event came while it idled: it may have closed or sent bytes, so
    /// it is probed before reuse.
    stirred: bool,
    /// The last read returned less than it asked for, no event has come
    /// since, and the last event did not report the peer's FIN: the socket
    /// holds nothing, so the next read (or the probe at a park) is known to
    /// find nothing without a syscall. Edge-triggered epoll reports any
    /// byte or FIN that arrives later.
    drained: bool,
    /// The last event reported the peer's FIN (`EPOLLRDHUP`/`EPOLLHUP`):
    /// a short read then does not mean drained (the FIN is still to read).
    read_closed: bool,
    /// Its flow, with the live mode switch (for the steering).
    pub(crate) flow: Option<Flow>,
}

/// One worker's sockets, registered with its mio poll.
pub(crate) struct KernelTransport {
    pub(crate) registry: Registry,
    shared: Arc<Shared>,
    metrics: Arc<KernelMetrics>,
    buf: Vec<u8>,
    pub(crate) backends: slab::Slab<BackendEntry>,
    /// With the live mode switch: the board whose steering learns this
    /// path's backend connections before their SYN leaves and forgets
    /// every flow that closes here; and each client's flow.
    pub(crate) switch: Option<Arc<SwitchBoard>>,
    /// The address backend connections are bound to with the switch (the
    /// listener's: the one both paths share).
    pub(crate) switch_ip: Option<std::net::IpAddr>,
    /// Each client socket's flow (by descriptor), with the switch.
    pub(crate) client_flows: std::collections::HashMap<RawFd, Flow>,
    /// Flows of sockets closed here, whose FIN and TIME-WAIT segments must
    /// still come here (see [`Lingering`]); pinned again by a switch away.
    pub(crate) lingering: Lingering,
}

impl KernelTransport {
    pub(crate) fn new(
        registry: Registry,
        shared: Arc<Shared>,
        metrics: Arc<KernelMetrics>,
    ) -> Self {
        Self {
            registry,
            shared,
            metrics,
            buf: vec![0; READ_CHUNK],
            backends: slab::Slab::new(),
            switch: None,
            switch_ip: None,
            client_flows: std::collections::HashMap::new(),
            lingering: Lingering::default(),
        }
    }

    /// Take a client's socket out of epoll and the flow table, as `close`
    /// does, without closing it: a slot whose export failed is attached
    /// again (and registered anew) by the driver.
    pub(crate) fn unregister_client(&mut self, client: &mut KernelClient) {
        match &mut client.tls {
            ClientTls::Openssl(tls) => {
                let _ = tls.deregister(&self.registry);
            }
            ClientTls::Ours(r) => {
                self.client_flows.remove(&r.stream().as_raw_fd());
                let _ = self.registry.deregister(r.stream_mut());
            }
        }
    }

    /// Forget the lingering flows that are due (a bounded number), unless
    /// a live socket of this worker uses the 4-tuple again.
    pub(crate) fn sweep_lingering(&mut self, now: std::time::Instant) {
        let Some(steer) = self.switch.as_deref().and_then(SwitchBoard::steer) else {
            return;
        };
        if !self.lingering.due(now) {
            return;
        }
        let live: std::collections::HashSet<Flow> = self
            .client_flows
            .values()
            .copied()
            .chain(self.backends.iter().filter_map(|(_, e)| e.flow))
            .collect();
        self.lingering
            .sweep(steer, Path::Kernel, now, 256, |f| live.contains(f));
    }

    /// The steering, with the live mode switch.
    pub(crate) fn steer(&self) -> Option<&dyn dpuproxy_switch::Steer> {
        self.switch.as_deref().and_then(SwitchBoard::steer)
    }

    /// A backend connection that the steering sends here before its SYN
    /// leaves: bound first (to the listener's address), pinned, then
    /// connected.
    fn connect_pinned(
        &self,
        addr: SocketAddr,
        local: std::net::IpAddr,
    ) -> io::Result<(TcpStream, Flow)> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::new(local, 0).into())?;
        let flow = match (s.local_addr()?.as_socket(), addr) {
            (Some(SocketAddr::V4(l)), SocketAddr::V4(r)) => Flow {
                remote: r,
                local: l,
            },
            _ => return Err(io::Error::other("the live mode switch is IPv4 only")),
        };
        if let Some(steer) = self.steer() {
            steer
                .set(flow, FlowOwner::Path(Path::Kernel))
                .map_err(|e| io::Error::other(format!("steering the backend connection: {e}")))?;
        }
        match s.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => {
                if let Some(steer) = self.steer() {
                    steer.forget(flow);
                }
                return Err(e);
            }
        }
        Ok((TcpStream::from_std(s.into()), flow))
    }

    /// Register a backend socket under a new entry owned by `slot`; `flow`
    /// is its flow with the live mode switch.
    fn register_backend(
        &mut self,
        stream: &mut TcpStream,
        slot: SlotId,
        flow: Option<Flow>,
    ) -> io::Result<usize> {
        let entry = self.backends.vacant_entry();
        let id = entry.key();
        self.registry.register(stream, backend_token(id), both())?;
        entry.insert(BackendEntry {
            fd: stream.as_raw_fd(),
            owner: Some(slot),
            stirred: false,
            drained: false,
            read_closed: false,
            flow,
        });
        Ok(id)
    }

    /// The slot an event for backend connection `id` is for; `None` when
    /// the connection idles in the pool (the event is remembered, so the
    /// connection is probed before it is reused) or is gone. `readable`:
    /// the event says there is something to read (bytes, a FIN or an
    /// error; a write-only event leaves a drained socket drained);
    /// `read_closed`: it reported the peer's FIN.
    pub(crate) fn backend_event(
        &mut self,
        id: usize,
        readable: bool,
        read_closed: bool,
    ) -> Option<SlotId> {
        let entry = self.backends.get_mut(id)?;
        if readable {
            entry.drained = false;
        }
        entry.read_closed |= read_closed;
        if entry.owner.is_none() {
            entry.stirred = true;
        }
        entry.owner
    }
}

/// A connected IPv4 socket's flow.
pub(crate) fn flow_of(s: &TcpStream) -> Option<Flow> {
    match (s.local_addr().ok()?, s.peer_addr().ok()?) {
        (SocketAddr::V4(local), SocketAddr::V4(remote)) => Some(Flow { remote, local }),
        _ => None,
    }
}

fn both() -> Interest {
    Interest::READABLE | Interest::WRITABLE
}

/// Open, and nothing to read: neither bytes nor a FIN (one `MSG_PEEK`).
fn probe_silent(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Read a non-blocking socket once into `buf`.
fn read_stream(stream: &mut TcpStream, buf: &mut [u8], sink: &mut dyn FnMut(&[u8])) -> Io {
    loop {
        return match stream.read(buf) {
            Ok(0) => Io::Eof,
            Ok(n) => {
                sink(&buf[..n]);
                Io::Done(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => Io::Failed(Failure::Broken),
        };
    }
}

impl Transport for KernelTransport {
    type Client = KernelClient;
    type Backend = KernelBackend;

    fn attach_client(&mut self, client: &mut KernelClient, slot: SlotId) -> io::Result<()> {
        if self.switch.is_some()
            && let Some(stream) = client.records_stream()
            && let Some(flow) = flow_of(stream)
        {
            self.client_flows.insert(stream.as_raw_fd(), flow);
        }
        match &mut client.tls {
            ClientTls::Openssl(t) => t.register(&self.registry, client_token(slot), both()),
            ClientTls::Ours(r) => {
                self.registry
                    .register(r.stream_mut(), client_token(slot), both())
            }
        }
    }

    fn handshake(&mut self, client: &mut KernelClient) -> HandshakeStep {
        // OpenSSL allocates tens of KiB per connection when its handshake
        // starts: a connection that has sent nothing yet costs none of it.
        if !client.started {
            let input = match &client.tls {
                ClientTls::Openssl(t) => t.has_input(),
                ClientTls::Ours(r) => r.has_input(),
            };
            match input {
                Ok(true) => client.started = true,
                Ok(false) => return HandshakeStep::Pending,
                Err(()) => return HandshakeStep::Failed,
            }
        }
        let tls = match &mut client.tls {
            ClientTls::Openssl(tls) => tls,
            ClientTls::Ours(r) => {
                let step = r.handshake(&mut self.buf);
                if step == HandshakeStep::Done {
                    client.established = true;
                    self.metrics.ours_records.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(tls = %r.describe(), record_path = "ours", "handshake done");
                }
                return step;
            }
        };
        match tls.handshake() {
            Ok(Handshake::Done) => {
                client.established = true;
                let path = tls.record_path();
                self.metrics.record_path(path);
                tracing::debug!(
                    tls = %tls.describe(),
                    record_path = path.label(),
                    "handshake done"
                );
                HandshakeStep::Done
            }
            Ok(Handshake::WouldBlock) => HandshakeStep::Pending,
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                HandshakeStep::Failed
            }
        }
    }

    fn read(&mut self, client: &mut KernelClient, sink: &mut dyn FnMut(&[u8])) -> Io {
        let tls = match &mut client.tls {
            ClientTls::Openssl(tls) => tls,
            ClientTls::Ours(r) => return r.read(&mut self.buf, sink),
        };
        match tls.read(&mut self.buf) {
            Ok(0) => Io::Eof,
            Ok(n) => {
                sink(&self.buf[..n]);
                Io::Done(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::debug!(error = %e, "TLS error from a client");
                Io::Failed(Failure::Tls)
            }
            Err(e) => {
                tracing::debug!(error = %e, "client read failed");
                Io::Failed(Failure::Broken)
            }
        }
    }

    fn write(&mut self, client: &mut KernelClient, data: &[u8]) -> Io {
        let tls = match &mut client.tls {
            ClientTls::Openssl(tls) => tls,
            ClientTls::Ours(r) => return r.write(data),
        };
        match tls.write(data) {
            Ok(n) => Io::Done(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::WouldBlock,
            Err(e) => {
                tracing::debug!(error = %e, "client write failed");
                Io::Failed(Failure::Broken)
            }
        }
    }

    fn flush(&mut self, client: &mut KernelClient) -> Io {
        match &mut client.tls {
            // OpenSSL writes records straight to the socket.
            ClientTls::Openssl(_) => Io::Done(0),
            ClientTls::Ours(r) => r.flush(),
        }
    }

    fn flushed(&self, client: &KernelClient) -> bool {
        match &client.tls {
            ClientTls::Openssl(_) => true,
            ClientTls::Ours(r) => r.flushed(),
        }
    }

    fn shutdown(&mut self, client: &mut KernelClient) -> Linger {
        if !client.established {
            return Linger::No;
        }
        match &mut client.tls {
            ClientTls::Openssl(tls) => {
                tls.shutdown();
                tls.shutdown_write();
            }
            // The FIN follows close_notify once the socket took it.
            ClientTls::Ours(r) => r.shutdown(),
        }
        Linger::Drain
    }

    fn close(&mut self, mut client: KernelClient, how: Close) {
        if self.switch.is_some()
            && let Some(stream) = client.records_stream()
            && let Some(flow) = self.client_flows.remove(&stream.as_raw_fd())
        {
            self.lingering.push(flow, std::time::Instant::now());
        }
        match &mut client.tls {
            ClientTls::Openssl(tls) => {
                let _ = tls.deregister(&self.registry);
                if how == Close::Abort {
                    tls.set_abortive_close();
                }
            }
            ClientTls::Ours(r) => {
                let _ = self.registry.deregister(r.stream_mut());
                if how == Close::Abort {
                    set_linger_zero(r.stream());
                }
            }
        }
        // Dropping frees the SSL (which sends nothing), then closes the fd.
    }

    fn buffered(&self, client: &KernelClient) -> usize {
        match &client.tls {
            ClientTls::Openssl(_) => 0,
            ClientTls::Ours(r) => r.buffered(),
        }
    }

    fn connect(&mut self, slot: SlotId, backend: usize) -> io::Result<KernelBackend> {
        if backend >= self.shared.backends.len() {
            return Err(io::Error::other("no such backend"));
        }
        let addr = self.shared.backends.get(backend).socket;
        let (mut stream, flow) = match self.switch_ip {
            Some(local) => {
                let (s, f) = self.connect_pinned(addr, local)?;
                (s, Some(f))
            }
            None => (TcpStream::connect(addr)?, None),
        };
        stream.set_nodelay(true)?;
        let id = match self.register_backend(&mut stream, slot, flow) {
            Ok(id) => id,
            Err(e) => {
                if let (Some(f), Some(steer)) = (flow, self.steer()) {
                    steer.forget(f);
                }
                return Err(e);
            }
        };
        Ok(KernelBackend { stream, addr, id })
    }

    /// A non-blocking connect is done when the socket has a peer; it failed
    /// when `SO_ERROR` is set.
    fn connect_status(&mut self, conn: &mut KernelBackend) -> ConnectStatus {
        let failed = match conn.stream.take_error() {
            Ok(Some(e)) | Err(e) => e,
            Ok(None) => match conn.stream.peer_addr() {
                Ok(_) => return ConnectStatus::Connected,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    return ConnectStatus::Pending;
                }
                Err(e) => e,
            },
        };
        tracing::debug!(backend = %conn.addr, error = %failed, "backend connect failed");
        ConnectStatus::Failed
    }

    fn backend_read(&mut self, conn: &mut KernelBackend, sink: &mut dyn FnMut(&[u8])) -> Io {
        let entry = self.backends.get_mut(conn.id);
        if entry.as_ref().is_some_and(|e| e.drained) {
            return Io::WouldBlock;
        }
        let io = read_stream(&mut conn.stream, &mut self.buf, sink);
        if let (Io::Done(n), Some(e)) = (io, entry) {
            e.drained = n < self.buf.len() && !e.read_closed;
        }
        io
    }

    fn backend_write(&mut self, conn: &mut KernelBackend, data: &[u8]) -> Io {
        loop {
            return match conn.stream.write(data) {
                Ok(n) => Io::Done(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => Io::Failed(Failure::Broken),
            };
        }
    }

    /// A connection of this transport's is handed over by a table update.
    /// One from another worker's transport (moved by `Driver::attach`) is
    /// registered here under a new entry. Kernel mode moves no backend
    /// connection between workers today: `Driver::detach` has no transport
    /// hook, so the old worker would keep its registration and entry; a
    /// move will need that hook first.
    fn adopt(&mut self, conn: &mut KernelBackend, slot: SlotId) -> bool {
        let fd = conn.stream.as_raw_fd();
        match self.backends.get_mut(conn.id) {
            Some(entry) if entry.fd == fd => {
                entry.owner = Some(slot);
                true
            }
            _ => {
                // One moved in (with the switch).
                let flow = self.switch.as_ref().and_then(|_| flow_of(&conn.stream));
                match self.register_backend(&mut conn.stream, slot, flow) {
                    Ok(id) => {
                        conn.id = id;
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    }

    /// The connection stays registered; its events now only mark it
    /// stirred. Whatever came before the park (a FIN or bytes after the
    /// response, whose event the serving slot already took) is found by
    /// one probe here; whatever comes after raises an event.
    fn park(&mut self, conn: &mut KernelBackend) {
        let drained = self.backends.get(conn.id).is_some_and(|e| e.drained);
        let silent = drained || probe_silent(&conn.stream);
        if let Some(entry) = self.backends.get_mut(conn.id) {
            entry.owner = None;
            entry.stirred = !silent;
        }
    }

    /// Silent since it was parked (no event since the probe at the park),
    /// or probed again and found silent.
    fn idle_alive(&mut self, conn: &mut KernelBackend) -> bool {
        let Some(entry) = self.backends.get(conn.id) else {
            return false;
        };
        !entry.stirred || probe_silent(&conn.stream)
    }

    fn close_backend(&mut self, mut conn: KernelBackend, how: Close) {
        let _ = self.registry.deregister(&mut conn.stream);
        if let Some(e) = self.backends.try_remove(conn.id)
            && let Some(f) = e.flow
            && self.switch.is_some()
        {
            self.lingering.push(f, std::time::Instant::now());
        }
        if how == Close::Abort {
            set_linger_zero(&conn.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Poll until `conn` is connected, handing backend events to the
    /// transport as the worker does; bounded in time.
    fn pump(t: &mut KernelTransport, poll: &mut mio::Poll, rounds: usize) {
        let mut events = mio::Events::with_capacity(64);
        for _ in 0..rounds {
            poll.poll(&mut events, Some(std::time::Duration::from_millis(20)))
                .unwrap();
            for ev in events.iter() {
                if let Owner::Backend(id) = owner_of(ev.token()) {
                    // As the worker hands them over.
                    let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                    let _ = t.backend_event(id, readable, ev.is_read_closed());
                }
            }
        }
    }

    /// A transport whose one backend is a listener on loopback.
    fn rig() -> (std::net::TcpListener, mio::Poll, KernelTransport) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared::new(Default::default(), vec![addr]));
        let poll = mio::Poll::new().unwrap();
        let registry = poll.registry().try_clone().unwrap();
        let t = KernelTransport::new(registry, shared, Default::default());
        (listener, poll, t)
    }

    #[test]
    fn parked_backends_keep_their_registration_and_are_probed_only_after_an_event() {
        use std::io::Write as _;
        let (listener, mut poll, mut t) = rig();
        let slot = SlotId {
            index: 3,
            generation: 1,
        };
        let mut conns = Vec::new();
        let mut peers = Vec::new();
        for i in 0..4 {
            let mut c = t.connect(slot, 0).expect("connect starts");
            let (peer, _) = listener.accept().unwrap();
            pump(&mut t, &mut poll, 3);
            assert!(matches!(t.connect_status(&mut c), ConnectStatus::Connected));
            // While a slot owns it, its events go to that slot.
            assert_eq!(t.backend_event(c.id, true, false), Some(slot));
            let mut peer = peer;
            if i == 3 {
                // Bytes (or a FIN) whose event the serving slot took
                // before the park: the probe at the park finds them.
                peer.write_all(b"late").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
                pump(&mut t, &mut poll, 2);
            }
            t.park(&mut c);
            conns.push(c);
            peers.push(peer);
        }
        let mut late = conns.pop().unwrap();
        assert!(t.backends[late.id].stirred && !t.idle_alive(&mut late));
        t.close_backend(late, Close::Abort);
        pump(&mut t, &mut poll, 3);
        // Silent while parked: reusable with no probe at all.
        for c in &mut conns {
            assert!(!t.backends[c.id].stirred);
            assert!(t.idle_alive(c));
        }
        // The backend sends a stray byte on one, closes another; the third
        // stays silent.
        peers[0].write_all(b"x").unwrap();
        peers[1].shutdown(std::net::Shutdown::Both).unwrap();
        pump(&mut t, &mut poll, 10);
        assert!(t.backends[conns[0].id].stirred && !t.idle_alive(&mut conns[0]));
        assert!(t.backends[conns[1].id].stirred && !t.idle_alive(&mut conns[1]));
        assert!(t.idle_alive(&mut conns[2]));
        // An event for a silent idle connection costs a probe, not the
        // connection.
        t.backends[conns[2].id].stirred = true;
        assert!(t.idle_alive(&mut conns[2]));
        // Adopted again, its events go to the new slot; closed, its entry
        // and token are gone.
        let next = SlotId {
            index: 9,
            generation: 2,
        };
        assert!(t.adopt(&mut conns[2], next));
        assert_eq!(t.backend_event(conns[2].id, true, false), Some(next));
        for c in conns {
            let id = c.id;
            t.close_backend(c, Close::Graceful);
            assert_eq!(t.backend_event(id, true, false), None);
        }
        assert!(t.backends.is_empty());
    }

    /// A short read leaves the socket known empty until its next event:
    /// the read after it makes no syscall; bytes that come later are read
    /// after their event; a FIN that comes with bytes is not taken for
    /// empty, so the end of the stream is read too.
    #[test]
    fn a_short_read_waits_for_the_next_event_and_misses_no_fin() {
        use std::io::Write as _;
        let (listener, mut poll, mut t) = rig();
        let slot = SlotId {
            index: 1,
            generation: 1,
        };
        let mut c = t.connect(slot, 0).expect("connect starts");
        let (mut peer, _) = listener.accept().unwrap();
        pump(&mut t, &mut poll, 3);
        assert!(matches!(t.connect_status(&mut c), ConnectStatus::Connected));
        let settle = |t: &mut KernelTransport, poll: &mut mio::Poll| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            pump(t, poll, 2);
        };
        peer.write_all(b"abc").unwrap();
        settle(&mut t, &mut poll);
        let mut got = Vec::new();
        assert_eq!(
            t.backend_read(&mut c, &mut |d| got.extend_from_slice(d)),
            Io::Done(3)
        );
        assert!(t.backends[c.id].drained, "a short read: known empty");
        assert_eq!(t.backend_read(&mut c, &mut |_| {}), Io::WouldBlock);
        // More bytes and the FIN, one event.
        peer.write_all(b"de").unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        settle(&mut t, &mut poll);
        assert!(!t.backends[c.id].drained, "the event clears it");
        assert_eq!(
            t.backend_read(&mut c, &mut |d| got.extend_from_slice(d)),
            Io::Done(2)
        );
        assert!(!t.backends[c.id].drained, "a FIN is still to read");
        assert_eq!(t.backend_read(&mut c, &mut |_| {}), Io::Eof);
        assert_eq!(got, b"abcde");
        t.close_backend(c, Close::Graceful);
    }

    #[test]
    fn tokens_round_trip_and_stay_below_the_reserved_ones() {
        let max_gen = (1 << dpuproxy_driver::GENERATION_BITS) - 1;
        for (index, generation) in [(0, 0), (7, 3), (u32::MAX, 0), (12, max_gen)] {
            let id = SlotId { index, generation };
            let t = client_token(id);
            assert!(t.0 < RESERVED, "{t:?}");
            assert_eq!(owner_of(t), Owner::Client(id));
        }
        for id in [0, 1, 4096, u32::MAX as usize] {
            let t = backend_token(id);
            assert!(t.0 < RESERVED, "{t:?}");
            assert_eq!(owner_of(t), Owner::Backend(id));
        }
    }
}

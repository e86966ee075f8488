//! The fake data path: plaintext "TLS" and in-memory sockets, so the
//! production [`crate::Driver`] runs without I/O. Every field is public:
//! tests and the fuzz target steer the peers and read what they saw.

use std::collections::{BTreeSet, VecDeque};

use crate::{Close, ConnectStatus, Failure, HandshakeStep, Io, Linger, SlotId, Transport};

/// One fake client connection, as the proxy's transport sees it.
#[derive(Debug, Default)]
pub struct FakeClient {
    /// Bytes the client sent that the proxy has not read.
    pub to_proxy: VecDeque<u8>,
    /// Most bytes one read returns.
    pub read_chunk: usize,
    /// The client ended its side after `to_proxy`.
    pub eof: bool,
    /// What the client received.
    pub received: Vec<u8>,
    /// How many more bytes the client takes (`None`: any amount).
    pub window: Option<usize>,
    /// Bytes the transport holds (like sealed records) until the window
    /// lets them through.
    pub held: Vec<u8>,
    /// Handshake steps still pending before it is done (`None`: it fails).
    pub handshake_left: Option<usize>,
    /// The next read fails with this.
    pub read_failure: Option<Failure>,
    /// `shutdown` was called (close_notify).
    pub shutdown: bool,
    /// What `shutdown` answers.
    pub linger: Option<Linger>,
    /// How the transport closed it.
    pub closed: Option<Close>,
    /// The slot it was attached to.
    pub slot: Option<SlotId>,
}

/// Which fake client a driver slot holds (an index into
/// [`FakeTransport::clients`]).
#[derive(Debug)]
pub struct ClientRef(pub usize);

/// One fake backend connection.
#[derive(Debug, Default)]
pub struct FakeConn {
    /// The backend it connects to.
    pub backend: usize,
    /// The slot using it (`None` while pooled or once closed).
    pub slot: Option<SlotId>,
    /// Entry in [`FakeTransport::requests`] that writes go to.
    pub requests_entry: usize,
    /// Bytes the backend sent that the proxy has not read.
    pub to_proxy: VecDeque<u8>,
    /// The backend ended its side after `to_proxy` (FIN).
    pub eof: bool,
    /// The backend reset the connection.
    pub reset: bool,
    /// The connect completed.
    pub connected: bool,
    /// It sits in the driver's idle pool.
    pub parked: bool,
    /// How the proxy closed it.
    pub closed: Option<Close>,
    /// The backend closes it the moment it is reused (a pooled connection
    /// that died between the liveness check and the request).
    pub eof_on_reuse: bool,
}

/// The fake data path.
#[derive(Debug, Default)]
pub struct FakeTransport {
    /// Every client ever added, by index.
    pub clients: Vec<FakeClient>,
    /// Every backend connection ever opened, by index.
    pub conns: Vec<FakeConn>,
    /// Backends whose connects fail and whose pooled connections are dead.
    pub down: BTreeSet<usize>,
    /// Every backend connection a slot got: (backend, from the pool).
    pub connects: Vec<(usize, bool)>,
    /// Bytes each backend received, per connection use, in order.
    pub requests: Vec<Vec<u8>>,
    /// The slot each entry of `requests` was written for.
    pub request_slots: Vec<SlotId>,
    /// Releases to the pool (true) and graceful backend closes (false).
    pub releases: Vec<bool>,
    /// Abortive backend closes.
    pub aborts: usize,
    /// The connection most recently given to a slot.
    pub current: Option<usize>,
}

impl FakeTransport {
    /// A new client with an immediate handshake and reads of up to 16 KiB.
    pub fn add_client(&mut self) -> usize {
        self.clients.push(FakeClient {
            read_chunk: 16 * 1024,
            handshake_left: Some(0),
            ..FakeClient::default()
        });
        self.clients.len() - 1
    }

    /// The client attached to `slot`, if it is still open.
    pub fn client_of(&self, slot: SlotId) -> Option<usize> {
        self.clients
            .iter()
            .position(|c| c.slot == Some(slot) && c.closed.is_none())
    }

    fn use_conn(&mut self, conn: usize, slot: SlotId, pooled: bool) {
        let c = &mut self.conns[conn];
        c.slot = Some(slot);
        c.parked = false;
        c.requests_entry = self.requests.len();
        self.requests.push(Vec::new());
        self.request_slots.push(slot);
        self.connects.push((c.backend, pooled));
        self.current = Some(conn);
    }
}

impl Transport for FakeTransport {
    type Client = ClientRef;
    type Backend = usize;

    fn attach_client(&mut self, client: &mut ClientRef, slot: SlotId) -> std::io::Result<()> {
        self.clients[client.0].slot = Some(slot);
        Ok(())
    }

    fn handshake(&mut self, client: &mut ClientRef) -> HandshakeStep {
        let c = &mut self.clients[client.0];
        match &mut c.handshake_left {
            None => HandshakeStep::Failed,
            Some(0) => HandshakeStep::Done,
            Some(n) => {
                *n -= 1;
                HandshakeStep::Pending
            }
        }
    }

    fn read(&mut self, client: &mut ClientRef, sink: &mut dyn FnMut(&[u8])) -> Io {
        let c = &mut self.clients[client.0];
        if let Some(f) = c.read_failure.take() {
            return Io::Failed(f);
        }
        if c.to_proxy.is_empty() {
            return if c.eof { Io::Eof } else { Io::WouldBlock };
        }
        let n = c.to_proxy.len().min(c.read_chunk.max(1));
        let data: Vec<u8> = c.to_proxy.drain(..n).collect();
        sink(&data);
        Io::Done(n)
    }

    fn write(&mut self, client: &mut ClientRef, data: &[u8]) -> Io {
        let c = &mut self.clients[client.0];
        if c.closed.is_some() {
            return Io::Failed(Failure::Broken);
        }
        if !c.held.is_empty() {
            return Io::WouldBlock;
        }
        let room = c.window.unwrap_or(usize::MAX);
        let n = data.len().min(room);
        if n == 0 {
            return Io::WouldBlock;
        }
        c.received.extend_from_slice(&data[..n]);
        if let Some(w) = &mut c.window {
            *w -= n;
        }
        Io::Done(n)
    }

    fn flush(&mut self, client: &mut ClientRef) -> Io {
        let c = &mut self.clients[client.0];
        let room = c.window.unwrap_or(usize::MAX);
        let n = c.held.len().min(room);
        if n == 0 {
            return if c.held.is_empty() {
                Io::Done(0)
            } else {
                Io::WouldBlock
            };
        }
        c.received.extend(c.held.drain(..n));
        if let Some(w) = &mut c.window {
            *w -= n;
        }
        Io::Done(n)
    }

    fn flushed(&self, client: &ClientRef) -> bool {
        self.clients[client.0].held.is_empty()
    }

    fn shutdown(&mut self, client: &mut ClientRef) -> Linger {
        let c = &mut self.clients[client.0];
        c.shutdown = true;
        c.linger.unwrap_or(Linger::No)
    }

    fn close(&mut self, client: ClientRef, how: Close) {
        self.clients[client.0].closed = Some(how);
    }

    fn buffered(&self, client: &ClientRef) -> usize {
        self.clients[client.0].held.len()
    }

    fn connect(&mut self, slot: SlotId, backend: usize) -> std::io::Result<usize> {
        self.conns.push(FakeConn {
            backend,
            ..FakeConn::default()
        });
        let conn = self.conns.len() - 1;
        self.use_conn(conn, slot, false);
        Ok(conn)
    }

    fn connect_status(&mut self, conn: &mut usize) -> ConnectStatus {
        let c = &mut self.conns[*conn];
        if self.down.contains(&c.backend) {
            return ConnectStatus::Failed;
        }
        c.connected = true;
        ConnectStatus::Connected
    }

    fn backend_read(&mut self, conn: &mut usize, sink: &mut dyn FnMut(&[u8])) -> Io {
        let c = &mut self.conns[*conn];
        if c.reset {
            return Io::Failed(Failure::Broken);
        }
        if c.to_proxy.is_empty() {
            return if c.eof { Io::Eof } else { Io::WouldBlock };
        }
        // At most one socket buffer's worth per read, like a kernel read.
        let n = c.to_proxy.len().min(16 * 1024);
        let data: Vec<u8> = c.to_proxy.drain(..n).collect();
        sink(&data);
        Io::Done(n)
    }

    fn backend_write(&mut self, conn: &mut usize, data: &[u8]) -> Io {
        let c = &self.conns[*conn];
        if c.reset || c.closed.is_some() {
            return Io::Failed(Failure::Broken);
        }
        self.requests[c.requests_entry].extend_from_slice(data);
        Io::Done(data.len())
    }

    fn adopt(&mut self, conn: &mut usize, slot: SlotId) -> bool {
        self.use_conn(*conn, slot, true);
        let c = &mut self.conns[*conn];
        if c.eof_on_reuse {
            c.eof = true;
        }
        true
    }

    fn park(&mut self, conn: &mut usize) {
        let c = &mut self.conns[*conn];
        c.parked = true;
        c.slot = None;
        self.releases.push(true);
    }

    fn idle_alive(&mut self, conn: &mut usize) -> bool {
        let c = &self.conns[*conn];
        !self.down.contains(&c.backend) && !c.eof && !c.reset && c.to_proxy.is_empty()
    }

    fn close_backend(&mut self, conn: usize, how: Close) {
        let c = &mut self.conns[conn];
        if !c.parked && c.closed.is_none() {
            match how {
                Close::Graceful => self.releases.push(false),
                Close::Abort => self.aborts += 1,
            }
        }
        c.closed = Some(how);
        c.slot = None;
    }
}

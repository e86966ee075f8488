//! The deterministic simulator: the production [`Driver`] over a fake
//! transport (plaintext "TLS", in-memory sockets) and a fake clock, as
//! quinn's `Pair` drives the production endpoint. No sockets, no threads,
//! no sleeping.
#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpuproxy_driver::{
    Close, ConnectStatus, Driver, DriverSettings, Failure, HandshakeStep, Io, Linger, PathMetrics,
    Side, SlotId, Transport,
};
use dpuproxy_l7::{Connection, CoreConfig, Shared};

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

/// Which fake client a driver slot holds.
#[derive(Debug)]
pub struct ClientRef(pub usize);

/// One fake backend connection.
#[derive(Debug, Default)]
pub struct FakeConn {
    pub backend: usize,
    pub slot: Option<SlotId>,
    /// Entry in `FakeTransport::requests` that writes go to.
    pub requests_entry: usize,
    pub to_proxy: VecDeque<u8>,
    pub eof: bool,
    pub reset: bool,
    pub connected: bool,
    pub parked: bool,
    pub closed: Option<Close>,
    /// The backend closes it the moment it is reused (a pooled connection
    /// that died between the liveness check and the request).
    pub eof_on_reuse: bool,
}

/// The fake data path.
#[derive(Debug, Default)]
pub struct FakeTransport {
    pub clients: Vec<FakeClient>,
    pub conns: Vec<FakeConn>,
    /// Backends whose connects fail and whose pooled connections are dead.
    pub down: HashSet<usize>,
    /// Every backend connection a slot got: (backend, from the pool).
    pub connects: Vec<(usize, bool)>,
    /// Bytes each backend received, per connection use, in order.
    pub requests: Vec<Vec<u8>>,
    /// Releases to the pool (true) and graceful backend closes (false).
    pub releases: Vec<bool>,
    /// Abortive backend closes.
    pub aborts: usize,
    /// The connection most recently given to a slot.
    pub current: Option<usize>,
}

impl FakeTransport {
    fn use_conn(&mut self, conn: usize, slot: SlotId, pooled: bool) {
        let c = &mut self.conns[conn];
        c.slot = Some(slot);
        c.parked = false;
        c.requests_entry = self.requests.len();
        self.requests.push(Vec::new());
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

pub const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
pub const CALL: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;

pub fn post(body: &str, extra: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub fn json_response(session: Option<&str>, body: &str) -> String {
    let sid = session
        .map(|s| format!("mcp-session-id: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{sid}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub fn sse_head() -> &'static str {
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
}

pub fn chunk(s: &str) -> String {
    format!("{:x}\r\n{s}\r\n", s.len())
}

pub fn shared_with(cfg: CoreConfig, n: usize) -> Arc<Shared> {
    Arc::new(Shared::new(
        cfg,
        (0..n).map(|i| format!("10.0.0.{i}:900{i}")),
    ))
}

pub fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One driver (a worker) with one client connection on it, over the fake
/// transport, on a fake clock.
pub struct Sim {
    pub shared: Arc<Shared>,
    pub driver: Driver<FakeTransport>,
    pub t: FakeTransport,
    pub now: Instant,
    /// The fake client of the primary connection.
    pub client: usize,
    pub id: SlotId,
}

impl Sim {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self::with_settings(shared, DriverSettings::default())
    }

    pub fn with_settings(shared: Arc<Shared>, settings: DriverSettings) -> Self {
        Self::start(shared, settings, Instant::now(), "192.0.2.7")
    }

    fn start(shared: Arc<Shared>, settings: DriverSettings, now: Instant, peer: &str) -> Self {
        let metrics = Arc::new(PathMetrics::default());
        let mut driver = Driver::new(shared.clone(), settings, metrics, now);
        let mut t = FakeTransport::default();
        let client = t.add_client();
        let id = driver
            .accept(&mut t, ClientRef(client), peer.to_string(), now)
            .expect("fake attach cannot fail");
        let mut sim = Self {
            shared,
            driver,
            t,
            now,
            client,
            id,
        };
        sim.pump();
        sim
    }

    /// Another worker with one client, sharing the proxy state, clock and
    /// the backends that are down.
    pub fn sibling(&self) -> Sim {
        let mut s = Self::start(
            self.shared.clone(),
            DriverSettings::default(),
            self.now,
            "192.0.2.8",
        );
        s.t.down = self.t.down.clone();
        s
    }

    /// Tell the driver every side of every slot may move, then run it until
    /// nothing is left to do.
    pub fn pump(&mut self) {
        for _ in 0..1000 {
            for id in self.driver.ids() {
                self.driver.mark(id, Side::Client);
                self.driver.mark(id, Side::Backend);
            }
            self.driver.run(&mut self.t, self.now);
            if !self.driver.has_work() {
                return;
            }
        }
        panic!("driver did not settle in 1000 turns");
    }

    pub fn fake(&mut self) -> &mut FakeClient {
        &mut self.t.clients[self.client]
    }

    pub fn client(&mut self, data: &str) {
        self.fake().to_proxy.extend(data.as_bytes());
        self.pump();
    }

    pub fn client_bytewise(&mut self, data: &str) {
        for b in data.as_bytes() {
            self.fake().to_proxy.push_back(*b);
            self.pump();
        }
    }

    /// The client ends its side.
    pub fn client_eof(&mut self) {
        self.fake().eof = true;
        self.pump();
    }

    fn current(&mut self) -> &mut FakeConn {
        let c = self.t.current.expect("no backend connection yet");
        &mut self.t.conns[c]
    }

    pub fn backend(&mut self, data: &str) {
        let c = self.current();
        if c.closed.is_none() && !c.parked {
            c.to_proxy.extend(data.as_bytes());
        }
        self.pump();
    }

    pub fn backend_bytewise(&mut self, data: &str) {
        for b in data.as_bytes() {
            self.current().to_proxy.push_back(*b);
            self.pump();
        }
    }

    /// The backend closes the current connection (FIN).
    pub fn backend_eof(&mut self) {
        self.current().eof = true;
        self.pump();
    }

    /// The backend resets the current connection.
    pub fn backend_reset(&mut self) {
        self.current().reset = true;
        self.pump();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.driver.poll_timeout() <= self.now {
            self.driver.handle_timeout(&mut self.t, self.now);
        }
        self.pump();
    }

    /// Advance virtual time in steps, firing every timer on the way.
    pub fn run_for(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            let next = self
                .driver
                .poll_timeout()
                .min(end)
                .min(self.now + step)
                .max(self.now);
            self.now = if next == self.now {
                self.now + step
            } else {
                next
            };
            if self.driver.poll_timeout() <= self.now {
                self.driver.handle_timeout(&mut self.t, self.now);
            }
            self.pump();
        }
    }

    pub fn core(&self) -> &Connection {
        self.driver.core(self.id).expect("the connection is closed")
    }

    pub fn client_rx(&self) -> &[u8] {
        &self.t.clients[self.client].received
    }

    pub fn client_text(&self) -> String {
        String::from_utf8_lossy(self.client_rx()).into_owned()
    }

    pub fn take_client(&mut self) -> String {
        let s = self.client_text();
        self.fake().received.clear();
        s
    }

    /// How the client connection was closed: `Some(true)` graceful,
    /// `Some(false)` abortive, `None` still open.
    pub fn client_closed(&self) -> Option<bool> {
        self.t.clients[self.client]
            .closed
            .map(|c| c == Close::Graceful)
    }

    pub fn last_request(&self) -> String {
        String::from_utf8_lossy(self.t.requests.last().expect("no request")).into_owned()
    }

    pub fn metrics(&self) -> &PathMetrics {
        self.driver.metrics()
    }
}

impl FakeTransport {
    /// A new client with an immediate handshake and unlimited reads.
    pub fn add_client(&mut self) -> usize {
        self.clients.push(FakeClient {
            read_chunk: 16 * 1024,
            handshake_left: Some(0),
            ..FakeClient::default()
        });
        self.clients.len() - 1
    }
}

/// Initialize a session on this sim; returns the backend it landed on.
pub fn initialize(sim: &mut Sim, session: &str) -> usize {
    sim.client(&post(INIT, ""));
    let (b, _) = *sim.t.connects.last().expect("initialize must connect");
    assert!(sim.last_request().contains("\"initialize\""));
    sim.backend(&json_response(
        Some(session),
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    ));
    let resp = sim.take_client();
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains(session));
    b
}

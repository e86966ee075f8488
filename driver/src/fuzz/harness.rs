//! The deterministic simulator: the production [`Driver`] over the fake
//! transport and a fake clock, as quinn's `Pair` drives the production
//! endpoint. No sockets, no threads, no sleeping. Also the request and
//! response builders the tests and the fuzz target share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dpuproxy_l7::{Connection, CoreConfig, Shared};

use super::fake::{ClientRef, FakeClient, FakeConn, FakeTransport};
use crate::{Close, Driver, DriverSettings, PathMetrics, Side, SlotId};

/// Most driver turns [`Sim::pump`] allows before it calls the driver stuck.
pub const MAX_TURNS: usize = 1000;

/// An `initialize` request body.
pub const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
/// A `tools/call` request body.
pub const CALL: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;

/// A POST to `/mcp` with `body` and the extra header lines `extra` (each
/// ending in CRLF).
pub fn post(body: &str, extra: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A 200 JSON response with `body`, carrying `session` as its
/// `Mcp-Session-Id` when given.
pub fn json_response(session: Option<&str>, body: &str) -> String {
    let sid = session
        .map(|s| format!("mcp-session-id: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{sid}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The head of a chunked SSE response.
pub fn sse_head() -> &'static str {
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
}

/// `s` as one HTTP chunk.
pub fn chunk(s: &str) -> String {
    format!("{:x}\r\n{s}\r\n", s.len())
}

/// Shared proxy state with `n` backends (`10.0.0.i:900i`), auth off.
pub fn shared_with(cfg: CoreConfig, n: usize) -> Arc<Shared> {
    Arc::new(Shared::new(
        cfg,
        (0..n).map(|i| format!("10.0.0.{i}:900{i}")),
    ))
}

/// The status code of the response at the start of `resp` (0: none).
pub fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One driver (a worker) with one client connection on it, over the fake
/// transport, on a fake clock.
#[derive(Debug)]
pub struct Sim {
    /// The proxy state.
    pub shared: Arc<Shared>,
    /// The driver under test.
    pub driver: Driver<FakeTransport>,
    /// The fake data path.
    pub t: FakeTransport,
    /// The fake clock.
    pub now: Instant,
    /// The fake client of the primary connection.
    pub client: usize,
    /// The primary connection's slot.
    pub id: SlotId,
}

impl Sim {
    /// A sim with default driver settings.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self::with_settings(shared, DriverSettings::default())
    }

    /// A sim with these driver settings.
    pub fn with_settings(shared: Arc<Shared>, settings: DriverSettings) -> Self {
        Self::start(shared, settings, Instant::now(), "192.0.2.7")
    }

    /// A sim whose primary client connects from `peer` at `now`.
    pub fn start(shared: Arc<Shared>, settings: DriverSettings, now: Instant, peer: &str) -> Self {
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
    /// nothing is left to do. Panics when it does not settle within
    /// [`MAX_TURNS`] turns (a livelock).
    pub fn pump(&mut self) {
        for _ in 0..MAX_TURNS {
            for id in self.driver.ids() {
                self.driver.mark(id, Side::Client);
                self.driver.mark(id, Side::Backend);
            }
            self.driver.run(&mut self.t, self.now);
            if !self.driver.has_work() {
                return;
            }
        }
        panic!("driver did not settle in {MAX_TURNS} turns");
    }

    /// The primary fake client.
    pub fn fake(&mut self) -> &mut FakeClient {
        &mut self.t.clients[self.client]
    }

    /// The primary client sends `data`.
    pub fn client(&mut self, data: &str) {
        self.fake().to_proxy.extend(data.as_bytes());
        self.pump();
    }

    /// The primary client sends `data` one byte at a time.
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

    /// The backend of the current connection sends `data` (dropped when
    /// the connection is closed or pooled).
    pub fn backend(&mut self, data: &str) {
        let c = self.current();
        if c.closed.is_none() && !c.parked {
            c.to_proxy.extend(data.as_bytes());
        }
        self.pump();
    }

    /// The backend sends `data` one byte at a time.
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

    /// Move the clock by `d`, firing the timers that are due.
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

    /// The primary connection's L7 state (panics once it is closed).
    pub fn core(&self) -> &Connection {
        self.driver.core(self.id).expect("the connection is closed")
    }

    /// What the primary client received.
    pub fn client_rx(&self) -> &[u8] {
        &self.t.clients[self.client].received
    }

    /// What the primary client received, as text.
    pub fn client_text(&self) -> String {
        String::from_utf8_lossy(self.client_rx()).into_owned()
    }

    /// What the primary client received, as text, forgotten after.
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

    /// The last request a backend received, as text.
    pub fn last_request(&self) -> String {
        String::from_utf8_lossy(self.t.requests.last().expect("no request")).into_owned()
    }

    /// The driver's counters.
    pub fn metrics(&self) -> &PathMetrics {
        self.driver.metrics()
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

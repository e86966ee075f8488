//! The runner: one worker, up to four clients and two or three backends
//! over the fake transport, driven by a decoded [`Script`], then closed
//! down and checked.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dpuproxy_l7::{CoreConfig, Shared};

use super::dictionary::{self, MAX_CLIENTS, kind, response};
use super::fake::ClientRef;
use super::harness::Sim;
use super::script::{Event, Script};
use crate::{DriverSettings, Failure, PathMetrics, SlotId};

/// Clock steps of [`Event::Advance`]: around every timeout of the core and
/// the driver (keepalive 15 s, request 30 s, client idle 120 s...).
const STEPS: [Duration; 8] = [
    Duration::from_millis(1),
    Duration::from_millis(50),
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(16),
    Duration::from_secs(31),
    Duration::from_secs(121),
    Duration::from_secs(301),
];

/// Read sizes of a client's transport, by `Connect` setup bits 0-1.
const READ_CHUNKS: [usize; 4] = [16 * 1024, 1, 7, 100];

/// Most timer rounds the close-down waits for the driver to empty.
const CLOSE_DOWN_ROUNDS: usize = 256;

/// What one run saw (for the corpus replay test's depth checks).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Events run.
    pub events: usize,
    /// Clients accepted.
    pub clients: usize,
    /// Requests that reached a backend.
    pub forwarded: usize,
    /// Clients that received at least one byte of a backend's response.
    pub answered: usize,
    /// 401 answers the clients got.
    pub auth_refusals: usize,
    /// Sessions bound when the clients went away.
    pub sessions: usize,
    /// SSE events relayed.
    pub sse_events: u64,
    /// Stateless requests routed.
    pub stateless: u64,
    /// The worker drained.
    pub drained: bool,
}

/// The simulated proxy and what the oracles need to remember.
#[derive(Debug)]
pub struct World {
    sim: Sim,
    /// Per client: tags of the requests it sent with one valid token.
    authorized: Vec<BTreeSet<String>>,
    /// Per client: every byte it sent.
    sent: Vec<Vec<u8>>,
    /// Per client: session ids the backends announced to it.
    sessions: Vec<Vec<String>>,
    next_tag: usize,
    next_session: usize,
}

/// The L7 limits of the simulation: small, so that scripts reach them.
fn core_config() -> CoreConfig {
    CoreConfig {
        max_header_bytes: 2048,
        max_headers: 24,
        max_body_bytes: 1024,
        max_downstream_buffer: 1024,
        max_pipelined_bytes: 1024,
        max_sessions: 8,
        max_sessions_per_client: 3,
        ..CoreConfig::default()
    }
}

/// The driver limits of the simulation: three connections, two of them
/// in their handshake, two pooled backend connections per backend.
fn driver_settings() -> DriverSettings {
    DriverSettings {
        max_connections: 3,
        max_handshaking: 2,
        pool_max_per_backend: 2,
        ..DriverSettings::default()
    }
}

impl World {
    /// A proxy with auth on and `backends` backends, and client 0
    /// connected.
    pub fn new(backends: usize) -> Self {
        let now = Instant::now();
        let shared = Shared::new(
            core_config(),
            (0..backends).map(|i| format!("10.0.0.{i}:900{i}")),
        )
        .with_auth(dictionary::authenticator());
        shared.wall.set(now, dictionary::WALL_MS);
        let sim = Sim::start(Arc::new(shared), driver_settings(), now, "192.0.2.0");
        Self {
            sim,
            authorized: vec![BTreeSet::new()],
            sent: vec![Vec::new()],
            sessions: vec![Vec::new()],
            next_tag: 0,
            next_session: 0,
        }
    }

    /// Run `script`, close everything down, check every oracle (a
    /// violation panics) and say what happened.
    pub fn run(script: &Script) -> Outcome {
        let mut world = World::new(2 + usize::from(script.header & 1));
        for e in &script.events {
            world.apply(e);
        }
        let drained = world.sim.driver.is_draining();
        let sessions = world.sim.shared.affinity.len();
        world.close_down();
        world.check_leaks();
        world.check_requests();
        world.check_isolation();
        Outcome {
            events: script.events.len(),
            drained,
            sessions,
            ..world.outcome()
        }
    }

    fn apply(&mut self, e: &Event) {
        match e {
            Event::Connect { setup } => self.connect(*setup),
            Event::Send {
                client,
                request,
                split,
            } => {
                let c = self.client(*client);
                let bytes = self.request(c, *request);
                self.send(c, &bytes, *split);
            }
            Event::Pipeline {
                client,
                first,
                second,
            } => {
                let c = self.client(*client);
                let mut bytes = self.request(c, *first);
                bytes.extend(self.request(c, *second));
                self.send(c, &bytes, 0);
            }
            Event::Raw { client, bytes } => {
                let c = self.client(*client);
                self.send(c, bytes, 0);
            }
            Event::Respond {
                conn,
                response,
                split,
            } => self.respond(*conn, *response, *split),
            Event::BackendEof { conn } => self.with_conn(*conn, |c| c.eof = true),
            Event::BackendReset { conn } => self.with_conn(*conn, |c| c.reset = true),
            _ => self.apply_control(e),
        }
        self.sim.pump();
    }

    /// The events that steer clients, time and the worker.
    fn apply_control(&mut self, e: &Event) {
        let sim = &mut self.sim;
        match e {
            Event::ClientEof { client } => {
                let c = usize::from(*client) % sim.t.clients.len();
                sim.t.clients[c].eof = true;
            }
            Event::ClientReset { client } => {
                let c = usize::from(*client) % sim.t.clients.len();
                sim.t.clients[c].read_failure = Some(Failure::Broken);
            }
            Event::Window { client, room } => {
                let c = usize::from(*client) % sim.t.clients.len();
                sim.t.clients[c].window = (*room != 0).then(|| usize::from(*room) * 8);
            }
            Event::Advance { step } => sim.advance(STEPS[usize::from(*step) % STEPS.len()]),
            Event::Drain => sim.driver.drain(&mut sim.t, sim.now),
            Event::DrainStreams => {
                sim.driver.drain(&mut sim.t, sim.now);
                sim.driver.drain_streams(sim.now);
            }
            Event::ToggleBackend { backend } => {
                let b = usize::from(*backend) % sim.shared.backends.len();
                if !sim.t.down.remove(&b) {
                    sim.t.down.insert(b);
                }
            }
            _ => unreachable!("data events are applied by `apply`"),
        }
    }

    /// A new client, if the worker admits it and fewer than
    /// [`MAX_CLIENTS`] came before.
    fn connect(&mut self, setup: u8) {
        let sim = &mut self.sim;
        if sim.t.clients.len() >= MAX_CLIENTS || !sim.driver.admit(&mut sim.t, sim.now) {
            return;
        }
        let c = sim.t.add_client();
        let fake = &mut sim.t.clients[c];
        fake.read_chunk = READ_CHUNKS[usize::from(setup & 3)];
        fake.handshake_left = match (setup >> 2) & 3 {
            0 | 1 => Some(0),
            2 => Some(2),
            _ => None,
        };
        let accepted = sim
            .driver
            .accept(&mut sim.t, ClientRef(c), format!("192.0.2.{c}"), sim.now);
        assert!(
            accepted.is_some(),
            "the fake transport attaches every client"
        );
        self.authorized.push(BTreeSet::new());
        self.sent.push(Vec::new());
        self.sessions.push(Vec::new());
    }

    fn client(&self, index: u8) -> usize {
        usize::from(index) % self.sim.t.clients.len()
    }

    /// The next dictionary request of client `c`, remembered as authorized
    /// when it carries a valid token.
    fn request(&mut self, c: usize, k: u8) -> Vec<u8> {
        let tag = format!("c{c}r{}", self.next_tag);
        self.next_tag += 1;
        let own = self.sessions[c].last();
        let session = if k % dictionary::REQUEST_KINDS == kind::FOREIGN_SESSION {
            (1..self.sessions.len())
                .map(|d| &self.sessions[(c + d) % self.sessions.len()])
                .find_map(|s| s.last())
        } else {
            own
        };
        let session = session.map_or("sid-none", String::as_str);
        let (bytes, authorized) = dictionary::request(k, c, &tag, session);
        if authorized {
            self.authorized[c].insert(tag);
        }
        bytes
    }

    /// Client `c` sends `bytes`, in two writes cut at `split`/256.
    fn send(&mut self, c: usize, bytes: &[u8], split: u8) {
        self.sent[c].extend_from_slice(bytes);
        let cut = bytes.len() * usize::from(split) / 256;
        if cut > 0 {
            self.sim.t.clients[c].to_proxy.extend(&bytes[..cut]);
            self.sim.pump();
        }
        self.sim.t.clients[c].to_proxy.extend(&bytes[cut..]);
    }

    /// The live backend connection `index` selects: held by a slot, open.
    fn live_conn(&self, index: u8) -> Option<usize> {
        let live: Vec<usize> = (self.sim.t.conns.iter().enumerate())
            .filter(|(_, c)| c.slot.is_some() && c.closed.is_none() && !c.parked)
            .map(|(i, _)| i)
            .collect();
        (!live.is_empty()).then(|| live[usize::from(index) % live.len()])
    }

    fn with_conn(&mut self, index: u8, f: impl FnOnce(&mut super::fake::FakeConn)) {
        if let Some(i) = self.live_conn(index) {
            f(&mut self.sim.t.conns[i]);
        }
    }

    /// The client that slot `slot` held (the latest one: slots are reused
    /// with a new generation, so ids do not repeat within a script).
    fn owner_of(&self, slot: SlotId) -> Option<usize> {
        self.sim
            .t
            .clients
            .iter()
            .rposition(|c| c.slot == Some(slot))
    }

    /// A backend answers on a live connection, for the client holding it.
    fn respond(&mut self, index: u8, r: u8, split: u8) {
        let Some(i) = self.live_conn(index) else {
            return;
        };
        let slot = self.sim.t.conns[i]
            .slot
            .expect("a live connection has a slot");
        let owner = self.owner_of(slot).expect("every slot holds a client");
        let session = format!("sid-{owner}-{}", self.next_session);
        self.next_session += 1;
        if r % dictionary::RESPONSE_KINDS == response::SESSION {
            self.sessions[owner].push(session.clone());
        }
        let (bytes, close) = dictionary::response(r, owner, &session);
        let cut = bytes.len() * usize::from(split) / 256;
        for part in [&bytes[..cut], &bytes[cut..]] {
            let conn = &mut self.sim.t.conns[i];
            if !part.is_empty() && conn.closed.is_none() && !conn.parked {
                conn.to_proxy.extend(part);
                self.sim.pump();
            }
        }
        let conn = &mut self.sim.t.conns[i];
        if close && conn.closed.is_none() && !conn.parked {
            conn.eof = true;
        }
    }

    /// Every client ends its side (reading everything), every backend
    /// closes every connection it holds for a slot (again each round, as
    /// pipelined requests open new ones), and the timers run until the
    /// worker is empty.
    fn close_down(&mut self) {
        let sim = &mut self.sim;
        for c in &mut sim.t.clients {
            c.window = None;
            c.eof = true;
        }
        for _ in 0..CLOSE_DOWN_ROUNDS {
            for c in &mut sim.t.conns {
                if c.slot.is_some() && c.closed.is_none() {
                    c.eof = true;
                }
            }
            sim.pump();
            if sim.driver.is_empty() {
                break;
            }
            sim.now = sim
                .driver
                .poll_timeout()
                .max(sim.now + Duration::from_millis(1));
            sim.driver.handle_timeout(&mut sim.t, sim.now);
        }
    }

    /// Oracle: once every client is gone, nothing is held. No slot, no
    /// open-connection count, no request counted as outstanding on a
    /// backend, no SSE stream counted active, and every backend connection
    /// is closed or idle in the pool (which closes them all).
    fn check_leaks(&mut self) {
        let sim = &mut self.sim;
        assert!(
            sim.driver.is_empty(),
            "slots left after every client closed: {:?}",
            sim.driver
                .ids()
                .iter()
                .map(|&id| sim.driver.phase(id))
                .collect::<Vec<_>>()
        );
        let m = sim.driver.metrics();
        assert_eq!(PathMetrics::get(&m.open), 0, "open connections counted");
        assert_eq!(PathMetrics::get(&m.accepted), PathMetrics::get(&m.closed));
        for (c, client) in sim.t.clients.iter().enumerate() {
            assert!(client.closed.is_some(), "client {c} was never closed");
        }
        for (b, backend) in sim.shared.backends.iter().enumerate() {
            assert_eq!(
                backend.outstanding(),
                0,
                "backend {b}: requests outstanding"
            );
        }
        assert_eq!(
            sim.shared.metrics.sse_active.load(Ordering::Relaxed),
            0,
            "SSE streams active"
        );
        let idle = sim
            .t
            .conns
            .iter()
            .filter(|c| c.parked && c.closed.is_none());
        assert_eq!(
            idle.count(),
            sim.driver.pooled(),
            "pool and parked connections differ"
        );
        assert!(
            sim.t.conns.iter().all(|c| c.parked || c.closed.is_some()),
            "a backend connection is neither closed nor pooled"
        );
        sim.driver.close_all(&mut sim.t, sim.now);
        assert!(
            sim.t.conns.iter().all(|c| c.closed.is_some()),
            "close_all left a connection"
        );
    }

    /// Oracle (auth and attribution): every request a backend received
    /// names, in `X-Authenticated-Subject` (which the proxy alone writes),
    /// exactly the subject of the client whose slot sent it, and carries
    /// the tag of a request that client sent with a valid token.
    fn check_requests(&self) {
        let t = &self.sim.t;
        for (bytes, &slot) in t.requests.iter().zip(&t.request_slots) {
            if bytes.is_empty() {
                continue;
            }
            let c = self
                .owner_of(slot)
                .expect("a request entry belongs to a client");
            let head_end = find(bytes, b"\r\n\r\n").map_or(bytes.len(), |p| p + 4);
            let head = &bytes[..head_end];
            let text = String::from_utf8_lossy(bytes);
            let subjects = field_values(head, "x-authenticated-subject");
            assert_eq!(
                subjects,
                [dictionary::subject(c)],
                "client {c}: a request reached a backend without its own subject: {text:?}"
            );
            let tags = field_values(head, "x-fuzz-req");
            assert!(
                tags.iter().any(|tag| self.authorized[c].contains(tag)),
                "client {c}: a request reached a backend that no valid token of it authorized: {text:?}"
            );
        }
    }

    /// Oracle (isolation): no client receives a byte of a response written
    /// for another client (`owner-<c>.`), unless it sent that marker itself.
    fn check_isolation(&self) {
        let clients = &self.sim.t.clients;
        for (x, client) in clients.iter().enumerate() {
            for y in (0..clients.len()).filter(|&y| y != x) {
                let marker = dictionary::owner_marker(y);
                assert!(
                    find(&client.received, marker.as_bytes()).is_none()
                        || find(&self.sent[x], marker.as_bytes()).is_some(),
                    "client {x} received bytes of client {y}'s response: {:?}",
                    String::from_utf8_lossy(&client.received)
                );
            }
        }
    }

    fn outcome(&self) -> Outcome {
        let t = &self.sim.t;
        let m = &self.sim.shared.metrics;
        Outcome {
            clients: t.clients.len(),
            forwarded: t.requests.iter().filter(|r| !r.is_empty()).count(),
            answered: (t.clients.iter().enumerate())
                .filter(|(c, cl)| {
                    find(&cl.received, dictionary::owner_marker(*c).as_bytes()).is_some()
                })
                .count(),
            auth_refusals: t
                .clients
                .iter()
                .map(|c| {
                    c.received
                        .windows(12)
                        .filter(|w| w == b"HTTP/1.1 401")
                        .count()
                })
                .sum(),
            sse_events: m.sse_events.load(Ordering::Relaxed),
            stateless: m.stateless_requests.load(Ordering::Relaxed),
            ..Outcome::default()
        }
    }
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The values of every field of `head` named `name` (ASCII case and `_`
/// for `-` ignored, so that a look-alike spelling counts too).
fn field_values(head: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().replace('_', "-").eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

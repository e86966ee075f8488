//! The soak's clients: one mio thread holding every TLS connection.
//!
//! Three roles, each a logical client that reconnects (paced) whenever its
//! connection ends:
//! - **stream**: `initialize`, then a `GET` SSE stream held for the whole
//!   soak; every event id must follow the previous one (a gap counts as
//!   lost events, a repeat as duplicated ones);
//! - **requester**: one session, `tools/call` every `request_every` on a
//!   keep-alive connection (request churn);
//! - **churner**: `initialize`, `tools/call`, `DELETE`, again and again
//!   (session churn).
//!
//! A failed request is excused only when a killed backend explains it: the
//! session's backend was killed since the request (or stream) began, or
//! the request picked no backend yet while a backend was down or had just
//! changed state. Everything else counts in `requests_failed`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dpuproxy_l7::http::{self, BodyFraming, ChunkedDecoder, header};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use openssl::ssl::{ErrorCode, SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};

use super::kills::{KillBook, backend_index};

/// After a backend changes state, how long a request that picked no
/// backend yet may still fail because of it.
const GRACE: Duration = Duration::from_secs(5);

/// What the clients do.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The proxy's TLS address.
    pub proxy: SocketAddr,
    /// Source addresses, used in turn (loopback has ~28k ports per source).
    pub sources: Vec<Ipv4Addr>,
    /// Bearer token.
    pub token: String,
    /// TLS 1.3 suite offered.
    pub ciphersuite: String,
    /// Stream clients.
    pub streams: usize,
    /// Request-churn clients and their interval.
    pub requesters: usize,
    /// Interval between two requests of one requester.
    pub request_every: Duration,
    /// Session-churn clients.
    pub churners: usize,
    /// Pause between two churn cycles of one churner.
    pub churn_every: Duration,
    /// New connections per second at most (ramp and reconnects).
    pub connect_rate: f64,
    /// Connections in TCP or TLS handshake at once at most.
    pub max_connecting: usize,
}

/// Live counters (relaxed atomics), read by the orchestrator each sample.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Streams open now (SSE head received, not ended).
    pub streams_open: AtomicU64,
    /// Open streams that have not seen their `end` event.
    pub streams_awaiting_end: AtomicU64,
    /// Events received.
    pub events: AtomicU64,
    /// Events missing from a stream's sequence.
    pub events_lost: AtomicU64,
    /// Events received twice.
    pub events_duplicated: AtomicU64,
    /// Requests answered as expected (including stream opens).
    pub requests_ok: AtomicU64,
    /// Requests (and streams) that failed with no killed backend to explain it.
    pub requests_failed: AtomicU64,
    /// Failures a killed backend explains.
    pub requests_excused: AtomicU64,
    /// Connections opened after the first one of each client.
    pub reconnects: AtomicU64,
}

/// Shared flags.
#[derive(Debug, Default)]
struct Flags {
    /// Requesters and churners send nothing new.
    quiet: AtomicBool,
    /// Count the streams' tails, close everything, return.
    finish: AtomicBool,
}

/// The running clients.
#[derive(Debug)]
pub struct SoakClients {
    /// Live counters.
    pub stats: Arc<ClientStats>,
    flags: Arc<Flags>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl SoakClients {
    /// Start the client thread; connections open at the paced rate.
    pub fn start(settings: ClientSettings, backends: Arc<KillBook>) -> anyhow::Result<Self> {
        let stats = Arc::new(ClientStats::default());
        let flags = Arc::new(Flags::default());
        let (st, fl) = (stats.clone(), flags.clone());
        let thread = std::thread::Builder::new()
            .name("soak-clients".into())
            .spawn(move || -> anyhow::Result<()> {
                Clients::new(settings, backends, st, fl)?.run()
            })?;
        Ok(Self {
            stats,
            flags,
            thread: Some(thread),
        })
    }

    /// Stop sending new requests (streams stay open).
    pub fn quiet(&self) {
        self.flags.quiet.store(true, Ordering::Relaxed);
    }

    /// Whether the thread has ended (an error, or after `finish`).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Count the open streams that have not seen their `end` event (the
    /// backends must have paused a moment before), close every connection
    /// and wait for the thread.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.flags.finish.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the client thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for SoakClients {
    fn drop(&mut self) {
        self.flags.finish.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Stream,
    Requester,
    Churner,
}

/// Where a client is in its script.
enum Step {
    /// Waiting for its turn to connect.
    Queued,
    /// TCP connect in progress.
    Connecting,
    /// TLS handshake in progress.
    Handshaking,
    /// A request is out; the response decides the next step.
    Awaiting(Expect),
    /// Streaming SSE events.
    Streaming(Box<SseReader>),
    /// Connected, waiting for its next request's time.
    Idle,
}

impl Step {
    fn name(&self) -> String {
        match self {
            Step::Queued => "queued".into(),
            Step::Connecting => "connecting".into(),
            Step::Handshaking => "handshaking".into(),
            Step::Awaiting(e) => format!("awaiting {e:?}"),
            Step::Streaming(_) => "streaming".into(),
            Step::Idle => "idle".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Initialize,
    StreamHead,
    Call,
    Delete,
}

struct SseReader {
    decoder: ChunkedDecoder,
    text: Vec<u8>,
    next_id: u64,
    /// The backend's last event (`event: end`) arrived.
    ended: bool,
}

struct Client {
    role: Role,
    step: Step,
    tcp: Option<TcpStream>,
    tls: Option<SslStream<TcpStream>>,
    session: Option<String>,
    /// The global index of the session's backend (from `serverInfo.name`).
    session_backend: Option<usize>,
    /// Kills booked when the session's `initialize` left: a later kill of
    /// its backend may have taken the session with it.
    session_booked: u64,
    /// Bumped at every reconnect; timers carry it.
    epoch: u32,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    connected_once: bool,
    /// Counted in `connecting`: from the TCP connect until the first
    /// response (a proxy still busy with earlier handshakes has not
    /// finished this one just because our side of TLS has).
    opening: bool,
}

struct Clients {
    s: ClientSettings,
    backends: Arc<KillBook>,
    stats: Arc<ClientStats>,
    flags: Arc<Flags>,
    poll: Poll,
    connector: SslConnector,
    clients: Vec<Client>,
    queue: VecDeque<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    connecting: usize,
    budget: f64,
    last_refill: Instant,
    next_rpc: u64,
}

impl Clients {
    fn new(
        s: ClientSettings,
        backends: Arc<KillBook>,
        stats: Arc<ClientStats>,
        flags: Arc<Flags>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!s.sources.is_empty(), "no source addresses");
        let mut b = SslConnector::builder(SslMethod::tls_client())?;
        b.set_verify(SslVerifyMode::NONE);
        b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
        b.set_ciphersuites(&s.ciphersuite)?;
        b.set_alpn_protos(b"\x08http/1.1")?;
        b.set_mode(openssl::ssl::SslMode::RELEASE_BUFFERS);
        let roles = std::iter::repeat_n(Role::Stream, s.streams)
            .chain(std::iter::repeat_n(Role::Requester, s.requesters))
            .chain(std::iter::repeat_n(Role::Churner, s.churners));
        let clients: Vec<Client> = roles
            .map(|role| Client {
                role,
                step: Step::Queued,
                tcp: None,
                tls: None,
                session: None,
                session_backend: None,
                session_booked: 0,
                epoch: 0,
                out: Vec::new(),
                inbuf: Vec::new(),
                connected_once: false,
                opening: false,
            })
            .collect();
        Ok(Self {
            queue: (0..clients.len()).collect(),
            clients,
            backends,
            stats,
            flags,
            poll: Poll::new()?,
            connector: b.build(),
            timers: BinaryHeap::new(),
            connecting: 0,
            budget: 0.0,
            last_refill: Instant::now(),
            next_rpc: 1,
            s,
        })
    }

    fn run(mut self) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(4096);
        while !self.flags.finish.load(Ordering::Relaxed) {
            self.open_queued();
            self.fire_timers(Instant::now());
            self.poll
                .poll(&mut events, Some(Duration::from_millis(10)))?;
            let ready: Vec<usize> = events.iter().map(|e| e.token().0).collect();
            for i in ready {
                self.drive(i);
            }
        }
        self.count_tails();
        Ok(())
    }

    /// Start connections from the queue within the rate and the bound on
    /// handshakes in progress.
    fn open_queued(&mut self) {
        let now = Instant::now();
        let refill = now.duration_since(self.last_refill).as_secs_f64() * self.s.connect_rate;
        self.budget = (self.budget + refill).min(self.s.connect_rate.max(1.0) / 10.0 + 1.0);
        self.last_refill = now;
        while self.budget >= 1.0 && self.connecting < self.s.max_connecting {
            let Some(i) = self.queue.pop_front() else {
                break;
            };
            self.budget -= 1.0;
            if let Err(e) = self.connect(i) {
                self.fail(i, false, &format!("connect: {e}"));
            }
        }
    }

    fn connect(&mut self, i: usize) -> std::io::Result<()> {
        use socket2::{Domain, Socket, Type};
        let src = self.s.sources[i % self.s.sources.len()];
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        sock.bind(&SocketAddr::from((src, 0)).into())?;
        match sock.connect(&self.s.proxy.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
            Err(e) => return Err(e),
        }
        let mut tcp = TcpStream::from_std(sock.into());
        self.poll.registry().register(
            &mut tcp,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let c = &mut self.clients[i];
        if c.connected_once {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        c.connected_once = true;
        c.opening = true;
        c.tcp = Some(tcp);
        c.step = Step::Connecting;
        self.connecting += 1;
        Ok(())
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((due, i, epoch))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let c = &self.clients[i];
            if c.epoch == epoch && matches!(c.step, Step::Idle) {
                self.next_request(i);
                self.drive(i);
            }
        }
    }

    /// Make progress on client `i`: connect, handshake, write, read, parse,
    /// and write again what the parsed responses queued (edge-triggered:
    /// no new event would come for a socket that stayed writable).
    fn drive(&mut self, i: usize) {
        if matches!(self.clients[i].step, Step::Connecting) && !self.finish_connect(i) {
            return;
        }
        if matches!(self.clients[i].step, Step::Handshaking) && !self.handshake(i) {
            return;
        }
        for _ in 0..8 {
            let epoch = self.clients[i].epoch;
            match self.transfer(i) {
                Ok(true) => self.consume(i),
                Ok(false) => {
                    self.consume(i);
                    if self.clients[i].epoch == epoch {
                        self.ended(i);
                    }
                    return;
                }
                Err(()) => return self.ended(i),
            }
            let c = &self.clients[i];
            if c.epoch != epoch || c.out.is_empty() {
                return;
            }
        }
    }

    /// TCP connect done? Then start TLS. False: not ready yet or failed.
    fn finish_connect(&mut self, i: usize) -> bool {
        let c = &mut self.clients[i];
        let Some(tcp) = c.tcp.as_ref() else {
            return false;
        };
        match (tcp.take_error(), tcp.peer_addr()) {
            (Ok(None), Ok(_)) => {}
            (Ok(None), Err(e)) if e.kind() == ErrorKind::NotConnected => return false,
            (err, peer) => {
                let why = format!("TCP connect: {err:?} {peer:?}");
                self.fail(i, false, &why);
                return false;
            }
        }
        let tcp = c.tcp.take().expect("checked above");
        let ssl = self.connector.configure().and_then(|mut cfg| {
            cfg.set_verify_hostname(false);
            cfg.into_ssl("localhost")
        });
        match ssl.map(|ssl| SslStream::new(ssl, tcp)) {
            Ok(Ok(s)) => {
                c.tls = Some(s);
                c.step = Step::Handshaking;
                true
            }
            _ => {
                self.fail(i, false, "TLS setup");
                false
            }
        }
    }

    fn handshake(&mut self, i: usize) -> bool {
        let Some(tls) = self.clients[i].tls.as_mut() else {
            return false;
        };
        match tls.connect() {
            Ok(()) => {
                self.clients[i].step = Step::Idle;
                self.next_request(i);
                true
            }
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => false,
            Err(e) => {
                self.fail(i, false, &format!("TLS handshake: {e}"));
                false
            }
        }
    }

    /// Write what is queued, read what arrived. Ok(false): clean EOF.
    fn transfer(&mut self, i: usize) -> Result<bool, ()> {
        let c = &mut self.clients[i];
        let Some(tls) = c.tls.as_mut() else {
            return Err(());
        };
        while !c.out.is_empty() {
            match tls.ssl_write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                    break;
                }
                Err(_) => return Err(()),
            }
        }
        let mut buf = [0u8; 16384];
        loop {
            match tls.ssl_read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                    return Ok(true);
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok(false),
                Err(_) => return Err(()),
            }
        }
    }

    /// Queue the request the client's script calls for next: initialize
    /// without a session, then the role's request (a stream's GET, a
    /// requester's call, a churner's DELETE). Once quiet, requesters and
    /// churners start nothing new.
    fn next_request(&mut self, i: usize) {
        let quiet = self.flags.quiet.load(Ordering::Relaxed);
        let c = &self.clients[i];
        let (method, expect) = match (c.role, c.session.is_some()) {
            (Role::Stream, false) => ("POST", Expect::Initialize),
            (Role::Stream, true) => ("GET", Expect::StreamHead),
            (_, false) if quiet => return,
            (_, false) => ("POST", Expect::Initialize),
            (Role::Requester, true) if quiet => return,
            (Role::Requester, true) => ("POST", Expect::Call),
            (Role::Churner, true) => ("DELETE", Expect::Delete),
        };
        self.send(i, method, expect);
    }

    fn send(&mut self, i: usize, method: &str, expect: Expect) {
        let id = (method == "POST").then_some(self.next_rpc);
        self.next_rpc += 1;
        let c = &mut self.clients[i];
        if expect == Expect::Initialize {
            c.session_booked = self.backends.booked();
        }
        c.out = request_bytes(method, &self.s.token, c.session.as_deref(), id);
        c.step = Step::Awaiting(expect);
    }

    /// Parse what the client has read as its script expects.
    fn consume(&mut self, i: usize) {
        loop {
            let c = &mut self.clients[i];
            match &mut c.step {
                Step::Streaming(reader) => {
                    let ended_before = reader.ended;
                    let (events, lost, dup, done) = read_events(reader, &mut c.inbuf);
                    if reader.ended && !ended_before {
                        self.stats
                            .streams_awaiting_end
                            .fetch_sub(1, Ordering::Relaxed);
                    }
                    self.stats.events.fetch_add(events, Ordering::Relaxed);
                    self.stats.events_lost.fetch_add(lost, Ordering::Relaxed);
                    self.stats
                        .events_duplicated
                        .fetch_add(dup, Ordering::Relaxed);
                    if done {
                        self.ended(i);
                    }
                    return;
                }
                Step::Awaiting(expect) => {
                    let expect = *expect;
                    let method = if expect == Expect::StreamHead {
                        "GET"
                    } else {
                        "POST"
                    };
                    match http::parse_response_head(&c.inbuf, method, 65536, 100) {
                        Ok(None) => return,
                        Ok(Some((head, len))) => {
                            if !self.on_response(i, expect, head, len) {
                                return;
                            }
                        }
                        Err(e) => return self.fail(i, true, &format!("response head: {e}")),
                    }
                }
                _ => return,
            }
        }
    }

    /// Handle one response head (and body when it is complete). False:
    /// wait for more bytes, or the client moved on to a state that
    /// consumes no more now.
    /// The connection is no longer being opened (answered, or gone).
    fn opened(&mut self, i: usize) {
        if std::mem::replace(&mut self.clients[i].opening, false) {
            self.connecting -= 1;
        }
    }

    fn on_response(
        &mut self,
        i: usize,
        expect: Expect,
        head: http::ResponseHead,
        len: usize,
    ) -> bool {
        self.opened(i);
        let c = &mut self.clients[i];
        let body_end = match head.framing {
            BodyFraming::Length(n) => len + n as usize,
            BodyFraming::None => len,
            BodyFraming::Chunked if expect == Expect::StreamHead && head.status == 200 => len,
            f => {
                let why = format!("status {} framing {f:?} for {expect:?}", head.status);
                self.fail(i, true, &why);
                return false;
            }
        };
        if c.inbuf.len() < body_end {
            return false;
        }
        let body: Vec<u8> = c.inbuf.drain(..body_end).skip(len).collect();
        let ok = match (expect, head.status) {
            (Expect::Initialize, 200) => {
                c.session = header(&head.headers, "mcp-session-id")
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                c.session_backend = server_name(&body).and_then(|n| backend_index(&n));
                c.session.is_some() && c.session_backend.is_some()
            }
            (Expect::StreamHead, 200) => true,
            (Expect::Call, 200) => true,
            (Expect::Delete, 200) => {
                c.session = None;
                true
            }
            _ => false,
        };
        if !ok {
            self.fail(i, true, &format!("status {} for {expect:?}", head.status));
            return false;
        }
        self.stats.requests_ok.fetch_add(1, Ordering::Relaxed);
        self.after_success(i, expect);
        true
    }

    fn after_success(&mut self, i: usize, expect: Expect) {
        let quiet = self.flags.quiet.load(Ordering::Relaxed);
        let c = &mut self.clients[i];
        c.step = Step::Idle;
        match (c.role, expect) {
            (Role::Stream, Expect::StreamHead) => {
                self.stats.streams_open.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .streams_awaiting_end
                    .fetch_add(1, Ordering::Relaxed);
                c.step = Step::Streaming(Box::new(SseReader {
                    decoder: ChunkedDecoder::new(),
                    text: Vec::new(),
                    next_id: 0,
                    ended: false,
                }));
            }
            (Role::Requester, Expect::Call) => self.idle_until(i, self.s.request_every),
            (Role::Churner, Expect::Initialize) if !quiet => self.send(i, "POST", Expect::Call),
            (Role::Churner, Expect::Delete) => self.idle_until(i, self.s.churn_every),
            _ => self.next_request(i),
        }
    }

    fn idle_until(&mut self, i: usize, after: Duration) {
        let c = &mut self.clients[i];
        c.step = Step::Idle;
        self.timers
            .push(Reverse((Instant::now() + after, i, c.epoch)));
    }

    /// The connection ended (EOF or error) in whatever step it was.
    fn ended(&mut self, i: usize) {
        let c = &self.clients[i];
        let mid_request = matches!(c.step, Step::Awaiting(_) | Step::Streaming(_));
        if mid_request || matches!(c.step, Step::Connecting | Step::Handshaking) {
            let why = format!("connection ended in step {}", c.step.name());
            self.fail(i, mid_request, &why);
        } else {
            self.reset(i);
        }
    }

    /// Count a failure (excused or not) and start the client over.
    fn fail(&mut self, i: usize, was_request: bool, why: &str) {
        let c = &self.clients[i];
        let excused = match c.session.as_ref().and(c.session_backend) {
            Some(b) => self.backends.killed_since(b, c.session_booked),
            None => self.backends.disturbed_within(GRACE),
        };
        let finishing = self.flags.finish.load(Ordering::Relaxed);
        if !finishing && (was_request || !excused) {
            let counter = if excused {
                &self.stats.requests_excused
            } else {
                &self.stats.requests_failed
            };
            let before = counter.fetch_add(1, Ordering::Relaxed);
            if !excused && before < 20 {
                tracing::warn!(
                    "soak client {i} ({:?}): failed in step {}: {why} (session {:?})",
                    c.role,
                    c.step.name(),
                    c.session
                );
            }
        }
        // Start over with a new session: the old one died with its
        // backend, or failed for a reason worth counting once, not forever.
        self.clients[i].session = None;
        self.clients[i].session_backend = None;
        self.reset(i);
    }

    /// Close the connection and queue a new one.
    fn reset(&mut self, i: usize) {
        self.opened(i);
        let c = &mut self.clients[i];
        if let Step::Streaming(r) = &c.step {
            self.stats.streams_open.fetch_sub(1, Ordering::Relaxed);
            if !r.ended {
                self.stats
                    .streams_awaiting_end
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let Some(mut t) = c.tcp.take() {
            let _ = self.poll.registry().deregister(&mut t);
        }
        if let Some(mut s) = c.tls.take() {
            let _ = self.poll.registry().deregister(s.get_mut());
        }
        if c.role != Role::Requester {
            // Streams and churners begin with a fresh session; a requester
            // keeps its own across a closed keep-alive connection.
            c.session = None;
            c.session_backend = None;
        }
        c.out.clear();
        c.inbuf.clear();
        c.epoch = c.epoch.wrapping_add(1);
        c.step = Step::Queued;
        if !self.flags.finish.load(Ordering::Relaxed) {
            self.queue.push_back(i);
        }
    }

    /// At the end: an open stream that has not seen its `end` event lost
    /// at least that one.
    fn count_tails(&mut self) {
        let missing = self
            .clients
            .iter()
            .filter(|c| matches!(&c.step, Step::Streaming(r) if !r.ended))
            .count() as u64;
        self.stats.events_lost.fetch_add(missing, Ordering::Relaxed);
    }
}

/// `result.serverInfo.name` of an initialize response body.
fn server_name(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(v.pointer("/result/serverInfo/name")?.as_str()?.to_string())
}

/// A request as the soak sends it: `body` is the JSON-RPC id of a POST
/// (initialize without a session, tools/call with one).
fn request_bytes(method: &str, token: &str, session: Option<&str>, body: Option<u64>) -> Vec<u8> {
    let json = match (body, session) {
        (Some(id), None) => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"2025-11-25","capabilities":{{}},"clientInfo":{{"name":"dpuproxy-soak","version":"1"}}}}}}"#
        ),
        (Some(id), Some(_)) => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"soak"}}}}}}"#
        ),
        (None, _) => String::new(),
    };
    let mut h = format!(
        "{method} /mcp HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {token}\r\nAccept: application/json, text/event-stream\r\n"
    );
    if let Some(s) = session {
        h.push_str(&format!(
            "Mcp-Session-Id: {s}\r\nMCP-Protocol-Version: 2025-11-25\r\n"
        ));
    }
    if method == "POST" {
        h.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            json.len()
        ));
    }
    h.push_str("\r\n");
    let mut out = h.into_bytes();
    out.extend_from_slice(json.as_bytes());
    out
}

/// Decode chunked SSE bytes from `inbuf` and check event ids. Returns
/// (events, lost, duplicated, stream ended).
fn read_events(r: &mut SseReader, inbuf: &mut Vec<u8>) -> (u64, u64, u64, bool) {
    let used = match r.decoder.decode(inbuf, &mut r.text) {
        Ok(n) => n,
        Err(_) => return (0, 0, 0, true),
    };
    inbuf.drain(..used);
    let (mut events, mut lost, mut dup) = (0, 0, 0);
    while let Some(end) = find(&r.text, b"\n\n") {
        let event: Vec<u8> = r.text.drain(..end + 2).collect();
        let Some(id) = event_id(&event) else {
            continue; // a comment (keep-alive) or an event without id
        };
        events += 1;
        r.ended |= event.split(|&b| b == b'\n').any(|l| l == b"event: end");
        match id.cmp(&r.next_id) {
            std::cmp::Ordering::Equal => r.next_id += 1,
            std::cmp::Ordering::Greater => {
                lost += id - r.next_id;
                r.next_id = id + 1;
            }
            std::cmp::Ordering::Less => dup += 1,
        }
    }
    (events, lost, dup, r.decoder.is_done())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn event_id(event: &[u8]) -> Option<u64> {
    event
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"id: "))
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(events: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            http::encode_chunk(e.as_bytes(), &mut out);
        }
        out
    }

    #[test]
    fn gaps_and_repeats_are_counted_and_comments_ignored() {
        let mut r = SseReader {
            decoder: ChunkedDecoder::new(),
            text: Vec::new(),
            next_id: 0,
            ended: false,
        };
        let mut bytes = chunked(&[
            "id: 0\ndata: a\n\n",
            ": keepalive\n\n",
            "id: 1\ndata: b\n\nid: 3\n",
            "data: c\n\n",
            "id: 3\ndata: c\n\n",
        ]);
        assert_eq!(read_events(&mut r, &mut bytes), (4, 1, 1, false));
        assert_eq!(r.next_id, 4);
        assert!(!r.ended);
        let mut last = chunked(&["id: 4\nevent: end\ndata: {}\n\n"]);
        assert_eq!(read_events(&mut r, &mut last), (1, 0, 0, false));
        assert!(r.ended);
        let mut end = http::CHUNKED_END.to_vec();
        assert_eq!(read_events(&mut r, &mut end), (0, 0, 0, true));
    }

    #[test]
    fn the_backend_comes_from_server_info() {
        let body =
            br#"{"jsonrpc":"2.0","id":1,"result":{"serverInfo":{"name":"b3","version":"soak"}}}"#;
        assert_eq!(server_name(body).as_deref(), Some("b3"));
        assert_eq!(server_name(b"{}"), None);
        assert_eq!(server_name(b"not json"), None);
    }

    #[test]
    fn requests_carry_the_session_and_a_length() {
        let r = String::from_utf8(request_bytes("POST", "t", Some("b2-9"), Some(7))).unwrap();
        assert!(r.contains("Mcp-Session-Id: b2-9\r\n"), "{r}");
        assert!(r.contains("\"method\":\"tools/call\""), "{r}");
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        assert!(
            r.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{r}"
        );
        let g = String::from_utf8(request_bytes("GET", "t", Some("b1-1"), None)).unwrap();
        assert!(!g.contains("Content-Length"), "{g}");
    }
}

//! The soak's MCP backends: one mio thread serving K listeners, built to
//! hold tens of thousands of SSE streams cheaply (no thread per
//! connection).
//!
//! Protocol subset (the one the soak client speaks):
//! - `POST initialize` without a session → 200 JSON with a fresh
//!   `Mcp-Session-Id` and `serverInfo.name` = `b<K>`, the backend's global
//!   name (the client reads its session's backend from it: the proxy may
//!   seal the id);
//! - `POST tools/call` on a known session → 200 JSON echo; a notification
//!   → 202; an unknown session → 404;
//! - `GET` on a known session → a chunked `text/event-stream` that carries
//!   event `id: 0` at once and then one event per `event_every`, ids
//!   counting up: a gap the client sees is an event lost on the way; once
//!   emission pauses, each stream gets a last event marked `event: end`,
//!   so a lost tail shows up too;
//! - `DELETE` → the session and its stream end.
//!
//! [`BackendControl`] kills and restarts a backend (listener and every
//! connection closed, sessions forgotten, as a restarted process would)
//! and pauses emission before the final count.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dpuproxy_l7::http::{self, BodyFraming, RequestHead, header};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::background::Background;

/// Output queued for one connection beyond which it counts as stuck and is
/// closed (the proxy reads its backends promptly; this bounds memory).
const MAX_QUEUED: usize = 4 << 20;

/// Shared with the process's command loop.
#[derive(Debug)]
pub struct BackendControl {
    /// Requested state per local backend: true = down (killed).
    down: Vec<AtomicBool>,
    /// True: emit no more events (each stream got its `end` event).
    paused: AtomicBool,
    /// Requests answered (all kinds).
    pub requests: AtomicU64,
    /// Events emitted.
    pub events: AtomicU64,
    /// Connections closed because the proxy stopped reading them.
    pub stuck: AtomicU64,
}

impl BackendControl {
    fn new(n: usize) -> Self {
        Self {
            down: (0..n).map(|_| AtomicBool::new(false)).collect(),
            paused: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            events: AtomicU64::new(0),
            stuck: AtomicU64::new(0),
        }
    }

    /// Kill local backend `i` (`down`) or bring it back (`!down`); takes
    /// effect within one loop turn (≤ 20 ms). Out of range: false.
    pub fn set_down(&self, i: usize, down: bool) -> bool {
        self.down
            .get(i)
            .map(|d| d.store(down, Ordering::Relaxed))
            .is_some()
    }

    fn is_down(&self, i: usize) -> bool {
        self.down[i].load(Ordering::Relaxed)
    }

    /// Stop emitting events; every open stream gets its `end` event.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
    }
}

/// The running backends; dropping this stops the thread.
#[derive(Debug)]
pub struct SoakBackends {
    /// Listen addresses, backend `i` at index `i` (named `b<i+1>`).
    pub addrs: Vec<SocketAddr>,
    /// Kill, restart, pause, counters.
    pub control: Arc<BackendControl>,
    _thread: Background,
}

/// How the backends behave.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    /// Address every listener binds (port 0: ephemeral, kept across restarts).
    pub ip: std::net::Ipv4Addr,
    /// Global index of the first backend here (names count on from `b<first+1>`).
    pub first: usize,
    /// Number of backends.
    pub count: usize,
    /// Interval between two events of one stream.
    pub event_every: Duration,
    /// Padding bytes in each event's data.
    pub event_pad: usize,
}

impl SoakBackends {
    /// Bind every listener and start serving.
    pub fn start(settings: BackendSettings) -> anyhow::Result<Self> {
        let control = Arc::new(BackendControl::new(settings.count));
        let (tx, rx) = std::sync::mpsc::channel();
        let ctl = control.clone();
        let thread = Background::spawn("soak-backends", move |stop| {
            let server = Server::bind(settings, ctl);
            match server {
                Ok(mut s) => {
                    let _ = tx.send(Ok(s.addrs.clone()));
                    s.run(&stop);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
        let addrs = rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the backend thread ended before binding"))??;
        Ok(Self {
            addrs,
            control,
            _thread: thread,
        })
    }
}

struct Stream {
    session: String,
    next_id: u64,
}

struct Conn {
    sock: TcpStream,
    backend: usize,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    stream: Option<Stream>,
}

struct Server {
    settings: BackendSettings,
    control: Arc<BackendControl>,
    poll: Poll,
    addrs: Vec<SocketAddr>,
    listeners: Vec<Option<TcpListener>>,
    conns: Slab<Conn>,
    /// Session → (backend, the connection streaming it, if any).
    sessions: HashMap<String, (usize, Option<usize>)>,
    /// Streams in due order: (due, connection, session).
    due: VecDeque<(Instant, usize, String)>,
    next_session: u64,
    /// The `end` events have gone out.
    ended: bool,
}

/// Tokens below this are listeners; connection `k` is `LISTENERS + k`.
const LISTENERS: usize = 1024;

impl Server {
    fn bind(settings: BackendSettings, control: Arc<BackendControl>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..LISTENERS).contains(&settings.count),
            "between 1 and {} backends",
            LISTENERS - 1
        );
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..settings.count {
            let mut l = TcpListener::bind(SocketAddr::from((settings.ip, 0)))?;
            poll.registry()
                .register(&mut l, Token(i), Interest::READABLE)?;
            addrs.push(l.local_addr()?);
            listeners.push(Some(l));
        }
        Ok(Self {
            settings,
            control,
            poll,
            addrs,
            listeners,
            conns: Slab::new(),
            sessions: HashMap::new(),
            due: VecDeque::new(),
            next_session: 1,
            ended: false,
        })
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(1024);
        while !stop.load(Ordering::Relaxed) {
            self.apply_kills();
            if self
                .poll
                .poll(&mut events, Some(Duration::from_millis(20)))
                .is_err()
            {
                continue;
            }
            for ev in events.iter() {
                match ev.token().0 {
                    i if i < LISTENERS => self.accept(i),
                    k => self.service(k - LISTENERS),
                }
            }
            if self.control.paused.load(Ordering::Relaxed) {
                self.end_streams();
            } else {
                self.emit_due(Instant::now());
            }
        }
    }

    /// Once paused: every open stream's last event, marked `end`.
    fn end_streams(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let open: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.stream.is_some())
            .map(|(k, _)| k)
            .collect();
        for k in open {
            let mut out = Vec::new();
            if let Some(mut stream) = self.conns.get_mut(k).and_then(|c| c.stream.take()) {
                self.event(&mut stream, "event: end\n", &mut out);
                if let Some(c) = self.conns.get_mut(k) {
                    c.stream = Some(stream);
                    c.out.extend_from_slice(&out);
                }
            }
            self.flush(k);
        }
    }

    fn apply_kills(&mut self) {
        for i in 0..self.settings.count {
            let want_down = self.control.is_down(i);
            match (want_down, self.listeners[i].is_some()) {
                (true, true) => self.kill(i),
                (false, false) => self.restart(i),
                _ => {}
            }
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut l) = self.listeners[i].take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let victims: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.backend == i)
            .map(|(k, _)| k)
            .collect();
        for k in victims {
            self.close(k);
        }
        self.sessions.retain(|_, (b, _)| *b != i);
    }

    fn restart(&mut self, i: usize) {
        // The same port again, as a restarted server would (retried on the
        // next turn if the port is still held).
        if let Ok(mut l) = TcpListener::bind(self.addrs[i])
            && self
                .poll
                .registry()
                .register(&mut l, Token(i), Interest::READABLE)
                .is_ok()
        {
            self.listeners[i] = Some(l);
        }
    }

    fn accept(&mut self, i: usize) {
        while let Some(l) = &self.listeners[i] {
            let Ok((mut sock, _)) = l.accept() else { break };
            let _ = sock.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let token = Token(LISTENERS + entry.key());
            if self
                .poll
                .registry()
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            entry.insert(Conn {
                sock,
                backend: i,
                inbuf: Vec::new(),
                out: Vec::new(),
                stream: None,
            });
        }
    }

    fn close(&mut self, k: usize) {
        if !self.conns.contains(k) {
            return;
        }
        let mut c = self.conns.remove(k);
        let _ = self.poll.registry().deregister(&mut c.sock);
        if let Some(s) = c.stream
            && let Some((_, streaming)) = self.sessions.get_mut(&s.session)
            && *streaming == Some(k)
        {
            *streaming = None;
        }
    }

    /// Read, answer every complete request, flush.
    fn service(&mut self, k: usize) {
        let mut buf = [0u8; 16384];
        let mut eof = false;
        while let Some(c) = self.conns.get_mut(k) {
            match c.sock.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if c.stream.is_none() {
                        c.inbuf.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            self.close(k);
            return;
        }
        self.answer_requests(k);
        self.flush(k);
    }

    fn answer_requests(&mut self, k: usize) {
        loop {
            let Some(c) = self.conns.get_mut(k) else {
                return;
            };
            if c.stream.is_some() {
                return;
            }
            let Ok(Some((head, len))) = http::parse_request_head(&c.inbuf, 65536, 100) else {
                return;
            };
            let body_len = match head.framing {
                BodyFraming::Length(n) => n as usize,
                _ => 0,
            };
            if c.inbuf.len() < len + body_len {
                return;
            }
            let body: Vec<u8> = c.inbuf[len..len + body_len].to_vec();
            c.inbuf.drain(..len + body_len);
            let backend = c.backend;
            self.control.requests.fetch_add(1, Ordering::Relaxed);
            let reply = self.respond(k, backend, &head, &body);
            if let Some(c) = self.conns.get_mut(k) {
                c.out.extend_from_slice(&reply);
            }
        }
    }

    fn respond(&mut self, k: usize, backend: usize, head: &RequestHead, body: &[u8]) -> Vec<u8> {
        let session = header(&head.headers, "mcp-session-id")
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let known = session
            .as_ref()
            .and_then(|s| self.sessions.get(s))
            .is_some_and(|(b, _)| *b == backend);
        match (head.method.as_str(), session) {
            ("DELETE", Some(s)) if known => {
                self.end_session(&s);
                json("200 OK", None, "")
            }
            ("GET", Some(s)) if known => self.open_stream(k, s),
            ("POST", None) => self.initialize(backend, body),
            ("POST", Some(_)) if known => call(body),
            _ => json(
                "404 Not Found",
                None,
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#,
            ),
        }
    }

    fn initialize(&mut self, backend: usize, body: &[u8]) -> Vec<u8> {
        let msg: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if msg.get("method").and_then(|m| m.as_str()) != Some("initialize") {
            return json("400 Bad Request", None, "");
        }
        let name = format!("b{}", self.settings.first + backend + 1);
        let sid = format!("{name}-{:x}", self.next_session);
        self.next_session += 1;
        self.sessions.insert(sid.clone(), (backend, None));
        let result = serde_json::json!({"jsonrpc":"2.0","id":msg.get("id"),"result":{
            "protocolVersion":"2025-11-25","capabilities":{"tools":{}},
            "serverInfo":{"name":name,"version":"soak"}}});
        json("200 OK", Some(&sid), &result.to_string())
    }

    fn open_stream(&mut self, k: usize, session: String) -> Vec<u8> {
        // One stream per session: a newer one replaces the older.
        let older = self
            .sessions
            .get_mut(&session)
            .and_then(|(_, streaming)| streaming.replace(k))
            .filter(|&old| old != k);
        if let Some(old) = older {
            self.close(old);
        }
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut stream = Stream {
            session: session.clone(),
            next_id: 0,
        };
        self.event(&mut stream, "", &mut out);
        if self.ended {
            // Opened after the pause (a reconnect still under way): its
            // last event at once, as every other stream got.
            self.event(&mut stream, "event: end\n", &mut out);
        }
        if let Some(c) = self.conns.get_mut(k) {
            c.stream = Some(stream);
        }
        self.due
            .push_back((Instant::now() + self.settings.event_every, k, session));
        out
    }

    fn end_session(&mut self, session: &str) {
        if let Some((_, Some(k))) = self.sessions.remove(session)
            && let Some(c) = self.conns.get_mut(k)
        {
            c.stream = None;
            c.out.extend_from_slice(http::CHUNKED_END);
            self.flush(k);
        }
    }

    /// Append the stream's next event (with `extra` lines) to `out` and
    /// count it.
    fn event(&self, stream: &mut Stream, extra: &str, out: &mut Vec<u8>) {
        let id = stream.next_id;
        stream.next_id += 1;
        let ev = format!(
            "id: {id}\n{extra}data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"seq\":{id},\"pad\":\"{}\"}}}}\n\n",
            "x".repeat(self.settings.event_pad)
        );
        http::encode_chunk(ev.as_bytes(), out);
        self.control.events.fetch_add(1, Ordering::Relaxed);
    }

    fn emit_due(&mut self, now: Instant) {
        while let Some((due, _, _)) = self.due.front() {
            if *due > now {
                break;
            }
            let (_, k, session) = self.due.pop_front().expect("front exists");
            let Some(mut stream) = self
                .conns
                .get_mut(k)
                .and_then(|c| c.stream.take_if(|s| s.session == session))
            else {
                continue; // ended, or the slot holds another connection now
            };
            let mut out = Vec::new();
            self.event(&mut stream, "", &mut out);
            if let Some(c) = self.conns.get_mut(k) {
                c.stream = Some(stream);
                c.out.extend_from_slice(&out);
            }
            self.flush(k);
            self.due
                .push_back((now + self.settings.event_every, k, session));
        }
    }

    fn flush(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        while !c.out.is_empty() {
            match c.sock.write(&c.out) {
                Ok(0) => break,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.close(k);
                    return;
                }
            }
        }
        if c.out.len() > MAX_QUEUED {
            self.control.stuck.fetch_add(1, Ordering::Relaxed);
            self.close(k);
        }
    }
}

fn json(status: &str, session: Option<&str>, body: &str) -> Vec<u8> {
    let sid = session
        .map(|s| format!("Mcp-Session-Id: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{sid}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn call(body: &[u8]) -> Vec<u8> {
    let msg: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let Some(id) = msg.get("id") else {
        return b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_vec();
    };
    let text = msg
        .pointer("/params/arguments/text")
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let result = serde_json::json!({"jsonrpc":"2.0","id":id,"result":{
        "content":[{"type":"text","text":text}],"isError":false}});
    json("200 OK", None, &result.to_string())
}

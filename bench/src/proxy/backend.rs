//! A minimal native MCP Streamable-HTTP server for load tests.
//!
//! Why it exists: the Python SDK servers top out at a few hundred requests/s
//! on this class of machine, so a proxy comparison against them measures
//! the backends, not the proxies. This server speaks the same protocol
//! subset the load generator uses, cheaply:
//! - `initialize` (no session id) → 200 JSON with a fresh `Mcp-Session-Id`;
//! - a notification → 202;
//! - `tools/call` with a known session id → the `text` argument echoed, as
//!   JSON or (when asked) as an SSE stream with one progress event and the
//!   result; an unknown id → 404, so mis-routed requests show up as errors;
//! - `DELETE` → forgets the session.
//!
//! It checks the session belongs to it, which makes every load run an
//! affinity test as well. One thread per connection, keep-alive.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dpuproxy_l7::http::{self, BodyFraming, header};

use crate::background::Background;

/// Counters of one backend.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Requests for a session this backend never issued (mis-routed).
    pub unknown_session: AtomicU64,
}

/// A running native backend; dropping it stops the listener thread.
#[derive(Debug)]
pub struct NativeBackend {
    /// Bound port on 127.0.0.1.
    pub port: u16,
    /// Counters.
    pub stats: Arc<BackendStats>,
    _thread: Background,
}

/// One backend's sessions and replies, whatever carries its bytes (kernel
/// sockets here, the memif peer's userspace TCP there).
#[derive(Debug)]
pub(crate) struct BackendState {
    name: String,
    sse: bool,
    sessions: Mutex<HashSet<String>>,
    next: AtomicU64,
    stats: Arc<BackendStats>,
}

impl BackendState {
    /// A backend called `name` (its session ids start with it).
    pub(crate) fn new(name: &str, sse: bool) -> Self {
        Self {
            name: name.to_string(),
            sse,
            sessions: Mutex::new(HashSet::new()),
            next: AtomicU64::new(1),
            stats: Arc::new(BackendStats::default()),
        }
    }

    /// Its counters.
    pub(crate) fn stats(&self) -> &BackendStats {
        &self.stats
    }

    /// The reply to one whole request.
    pub(crate) fn respond(&self, head: &http::RequestHead, body: &[u8]) -> Vec<u8> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        respond(self, head, body)
    }
}

impl NativeBackend {
    /// Start on an ephemeral port of 127.0.0.1. `sse` answers tools/call
    /// with SSE.
    pub fn start(name: &str, sse: bool) -> std::io::Result<Self> {
        Self::start_in(name, sse, Ipv4Addr::LOCALHOST, None)
    }

    /// Start on an ephemeral port of `ip`, inside `netns` when given (the
    /// server threads live in that network namespace).
    pub fn start_in(
        name: &str,
        sse: bool,
        ip: Ipv4Addr,
        netns: Option<Arc<super::netns::Netns>>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let state = Arc::new(BackendState::new(name, sse));
        let stats = state.stats.clone();
        let thread = Background::spawn(&format!("bench-backend-{name}"), move |s| {
            let bound = (|| -> std::io::Result<TcpListener> {
                if let Some(ns) = &netns {
                    ns.enter().map_err(std::io::Error::other)?;
                }
                let l = TcpListener::bind((ip, 0))?;
                l.set_nonblocking(true)?;
                Ok(l)
            })();
            let listener = match bound {
                Ok(l) => {
                    let _ = tx.send(l.local_addr().map(|a| a.port()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let st = state.clone();
                        let stop = s.clone();
                        let _ = std::thread::Builder::new()
                            .name("bench-backend-conn".into())
                            .spawn(move || serve(stream, &st, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })?;
        let port = rx
            .recv()
            .map_err(|_| std::io::Error::other("backend thread ended before binding"))??;
        Ok(Self {
            port,
            stats,
            _thread: thread,
        })
    }
}

fn serve(mut s: TcpStream, st: &BackendState, stop: &AtomicBool) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    while !stop.load(Ordering::Relaxed) {
        // Parse as many complete requests as are buffered.
        while let Ok(Some((head, len))) = http::parse_request_head(&buf, 65536, 100) {
            let body_len = match head.framing {
                BodyFraming::Length(n) => n as usize,
                _ => 0,
            };
            if buf.len() < len + body_len {
                break;
            }
            let body = buf[len..len + body_len].to_vec();
            buf.drain(..len + body_len);
            let resp = st.respond(&head, &body);
            if s.write_all(&resp).is_err() {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

fn json_response(status: &str, session: Option<&str>, body: &str) -> Vec<u8> {
    let sid = session
        .map(|s| format!("Mcp-Session-Id: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{sid}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn respond(st: &BackendState, head: &http::RequestHead, body: &[u8]) -> Vec<u8> {
    let session =
        header(&head.headers, "mcp-session-id").map(|v| String::from_utf8_lossy(v).into_owned());
    if head.method == "DELETE" {
        if let Some(id) = session {
            st.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        return json_response("200 OK", None, "");
    }
    let msg: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let method = msg.get("method").and_then(|m| m.as_str()).unwrap_or("");
    let id = msg.get("id").cloned().unwrap_or(serde_json::Value::Null);
    if method == "initialize" && session.is_none() {
        let n = st.next.fetch_add(1, Ordering::Relaxed);
        let sid = format!("{}-{n:016x}", st.name);
        st.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sid.clone());
        let result = serde_json::json!({"jsonrpc":"2.0","id":id,"result":{
            "protocolVersion":"2025-11-25","capabilities":{"tools":{}},
            "serverInfo":{"name":st.name,"version":"bench"}}});
        return json_response("200 OK", Some(&sid), &result.to_string());
    }
    let known = session.as_ref().is_some_and(|s| {
        st.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(s)
    });
    if !known {
        st.stats.unknown_session.fetch_add(1, Ordering::Relaxed);
        return json_response(
            "404 Not Found",
            None,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#,
        );
    }
    if msg.get("id").is_none() {
        return b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_vec();
    }
    let text = msg
        .pointer("/params/arguments/text")
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let result = serde_json::json!({"jsonrpc":"2.0","id":id,"result":{
        "content":[{"type":"text","text":text}],"isError":false}});
    if !st.sse {
        return json_response("200 OK", None, &result.to_string());
    }
    let progress = serde_json::json!({"jsonrpc":"2.0","method":"notifications/progress",
        "params":{"progressToken":id,"progress":1,"total":1}});
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for ev in [progress, result] {
        let e = format!("event: message\r\ndata: {ev}\r\n\r\n");
        http::encode_chunk(e.as_bytes(), &mut out);
    }
    out.extend_from_slice(http::CHUNKED_END);
    out
}

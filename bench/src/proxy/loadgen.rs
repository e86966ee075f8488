//! The MCP load generator: TLS keep-alive connections driven by mio, each
//! holding one MCP session (`initialize` once, then `tools/call` requests).
//!
//! - Closed loop (default): each connection sends its next request when the
//!   last response is complete.
//! - Open loop (`rate`): each connection has a schedule; latency counts from
//!   the scheduled send time, so a stalled server is not hidden
//!   (coordinated omission).
//! - Latency goes into HDR histograms (microseconds), one per run; the
//!   controller moves all threads from warm-up through the runs with one
//!   atomic, so every thread's figures cover the same windows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dpuproxy_l7::http::{self, BodyFraming, ChunkedDecoder, header};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use openssl::ssl::{ErrorCode, SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Proxy address.
    pub addr: SocketAddr,
    /// Host header value.
    pub host: String,
    /// Concurrent connections (= sessions).
    pub connections: usize,
    /// Generator threads.
    pub threads: usize,
    /// Bearer token, if any.
    pub token: Option<String>,
    /// Bytes of text echoed per `tools/call`.
    pub payload: usize,
    /// Open-loop total rate in requests/s; `None` is closed loop.
    pub rate: Option<f64>,
    /// TLS 1.3 suite offered (the same for every target).
    pub ciphersuite: String,
    /// Network namespace the generator threads run in (dpdk target).
    pub netns: Option<Arc<super::netns::Netns>>,
}

/// Figures of one measurement run.
#[derive(Debug, Clone)]
pub struct RunFigures {
    /// Completed 2xx `tools/call` responses.
    pub ok: u64,
    /// Non-2xx or unparsable responses, and requests lost to a broken
    /// connection.
    pub errors: u64,
    /// Latency histogram (µs).
    pub latency: Histogram<u64>,
}

/// Shared phase control: 0 = warm-up (not recorded), 1..=runs = run k,
/// anything larger = stop.
#[derive(Debug, Default)]
pub struct Phase {
    /// Current phase.
    pub current: AtomicUsize,
    /// Connections whose first `initialize` succeeded (the controller
    /// starts the clock when all have).
    pub ready: AtomicUsize,
    /// Abort flag.
    pub abort: AtomicBool,
}

enum ConnState {
    Connecting,
    Handshaking,
    Ready,
    Broken,
}

struct Conn {
    tls: Option<SslStream<TcpStream>>,
    tcp: Option<TcpStream>,
    state: ConnState,
    session: Option<String>,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    in_flight: bool,
    sent_at: Instant,
    next_due: Instant,
    initialized: bool,
    counted_ready: bool,
}

fn request(cfg: &LoadConfig, session: Option<&str>, id: u64) -> Vec<u8> {
    request_bytes(&cfg.host, cfg.token.as_deref(), cfg.payload, session, id)
}

/// The next request of a session: `initialize` without a session id, a
/// `tools/call` echoing `payload` bytes with one.
pub(crate) fn request_bytes(
    host: &str,
    token: Option<&str>,
    payload: usize,
    session: Option<&str>,
    id: u64,
) -> Vec<u8> {
    let body = match session {
        None => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"2025-11-25","capabilities":{{}},"clientInfo":{{"name":"dpuproxy-bench","version":"1"}}}}}}"#
        ),
        Some(_) => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
            "x".repeat(payload)
        ),
    };
    let mut h = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        h.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(s) = session {
        h.push_str(&format!(
            "Mcp-Session-Id: {s}\r\nMCP-Protocol-Version: 2025-11-25\r\n"
        ));
    }
    h.push_str("\r\n");
    let mut out = h.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// A latency histogram (µs, 1 µs to 120 s, 3 significant digits).
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// A complete response at the start of `buf`: (status, session id, bytes).
pub(crate) fn parse_response(buf: &[u8]) -> Result<Option<(u16, Option<String>, usize)>, ()> {
    let Some((head, len)) = http::parse_response_head(buf, "POST", 65536, 100).map_err(|_| ())?
    else {
        return Ok(None);
    };
    let sid =
        header(&head.headers, "mcp-session-id").map(|v| String::from_utf8_lossy(v).into_owned());
    match head.framing {
        BodyFraming::None => Ok(Some((head.status, sid, len))),
        BodyFraming::Length(n) => {
            let end = len + n as usize;
            Ok((buf.len() >= end).then_some((head.status, sid, end)))
        }
        BodyFraming::Chunked => {
            let mut d = ChunkedDecoder::new();
            let mut sink = Vec::new();
            let used = d.decode(&buf[len..], &mut sink).map_err(|_| ())?;
            Ok(d.is_done().then_some((head.status, sid, len + used)))
        }
        BodyFraming::UntilClose => Err(()),
    }
}

/// Run one generator thread until the phase passes `runs`. Returns one
/// `RunFigures` per run (index 0 is run 1).
pub fn thread_main(
    cfg: &LoadConfig,
    my_connections: usize,
    runs: usize,
    phase: &Phase,
) -> std::io::Result<Vec<RunFigures>> {
    if let Some(ns) = &cfg.netns {
        ns.enter().map_err(std::io::Error::other)?;
    }
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(256);
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_ciphersuites(&cfg.ciphersuite)?;
    b.set_alpn_protos(b"\x08http/1.1")?;
    let connector = b.build();
    let mut figures: Vec<RunFigures> = (0..runs)
        .map(|_| RunFigures {
            ok: 0,
            errors: 0,
            latency: new_histogram(),
        })
        .collect();
    let interval = cfg
        .rate
        .map(|r| Duration::from_secs_f64(cfg.connections as f64 / r.max(0.001)));
    let start = Instant::now();
    let mut conns: Vec<Conn> = (0..my_connections)
        .map(|i| Conn {
            tls: None,
            tcp: None,
            state: ConnState::Broken,
            session: None,
            out: Vec::new(),
            inbuf: Vec::new(),
            in_flight: false,
            sent_at: start,
            // Spread open-loop schedules over one interval.
            next_due: start
                + interval.map_or(Duration::ZERO, |iv| {
                    iv.mul_f64(i as f64 / my_connections.max(1) as f64)
                }),
            initialized: false,
            counted_ready: false,
        })
        .collect();
    let mut next_id: u64 = 1;
    let mut buf = vec![0u8; 65536];
    loop {
        let ph = phase.current.load(Ordering::Relaxed);
        if ph > runs || phase.abort.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        // (Re)connect broken connections and send due requests.
        for (i, c) in conns.iter_mut().enumerate() {
            if matches!(c.state, ConnState::Broken) {
                c.tls = None;
                c.session = None;
                c.initialized = false;
                c.in_flight = false;
                c.inbuf.clear();
                c.out.clear();
                let mut tcp = TcpStream::connect(cfg.addr)?;
                tcp.set_nodelay(true)?;
                poll.registry().register(
                    &mut tcp,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                c.tcp = Some(tcp);
                c.state = ConnState::Connecting;
            }
            if matches!(c.state, ConnState::Ready) && !c.in_flight && c.out.is_empty() {
                let due = !c.initialized || interval.is_none() || now >= c.next_due;
                if due {
                    c.out = request(cfg, c.session.as_deref(), next_id);
                    next_id += 1;
                    c.in_flight = true;
                    c.sent_at = if c.initialized && interval.is_some() {
                        c.next_due
                    } else {
                        now
                    };
                    if let Some(iv) = interval
                        && c.initialized
                    {
                        c.next_due += iv;
                    }
                }
            }
        }
        // Drive every connection that may make progress.
        let timeout = if interval.is_some() {
            Duration::from_micros(200)
        } else {
            Duration::from_millis(10)
        };
        poll.poll(&mut events, Some(timeout))?;
        let touched: Vec<usize> = events.iter().map(|e| e.token().0).collect();
        let pending: Vec<usize> = conns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.out.is_empty() && matches!(c.state, ConnState::Ready))
            .map(|(i, _)| i)
            .collect();
        for i in touched.into_iter().chain(pending) {
            let Some(c) = conns.get_mut(i) else { continue };
            drive(c, &connector, &mut buf, &mut figures, phase, runs);
        }
    }
    Ok(figures)
}

fn drive(
    c: &mut Conn,
    connector: &SslConnector,
    buf: &mut [u8],
    figures: &mut [RunFigures],
    phase: &Phase,
    runs: usize,
) {
    if matches!(c.state, ConnState::Connecting) {
        let Some(tcp) = c.tcp.as_ref() else { return };
        match (tcp.take_error(), tcp.peer_addr()) {
            (Ok(None), Ok(_)) => {}
            (Ok(None), Err(e)) if e.kind() == std::io::ErrorKind::NotConnected => return,
            _ => {
                c.state = ConnState::Broken;
                return;
            }
        }
        let tcp = c.tcp.take().expect("checked above");
        let ssl = match connector.configure().and_then(|mut cfgd| {
            cfgd.set_verify_hostname(false);
            cfgd.into_ssl("localhost")
        }) {
            Ok(s) => s,
            Err(_) => {
                c.state = ConnState::Broken;
                return;
            }
        };
        match SslStream::new(ssl, tcp) {
            Ok(s) => {
                c.tls = Some(s);
                c.state = ConnState::Handshaking;
            }
            Err(_) => {
                c.state = ConnState::Broken;
                return;
            }
        }
    }
    let Some(tls) = c.tls.as_mut() else { return };
    if matches!(c.state, ConnState::Handshaking) {
        match tls.connect() {
            Ok(()) => c.state = ConnState::Ready,
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => return,
            Err(_) => {
                c.state = ConnState::Broken;
                return;
            }
        }
    }
    // Write.
    while !c.out.is_empty() {
        match tls.ssl_write(&c.out) {
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => break,
            Err(_) => {
                c.state = ConnState::Broken;
                return;
            }
        }
    }
    // Read.
    loop {
        match tls.ssl_read(buf) {
            Ok(0) => {
                c.state = ConnState::Broken;
                break;
            }
            Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => break,
            Err(_) => {
                c.state = ConnState::Broken;
                break;
            }
        }
    }
    while c.in_flight {
        match parse_response(&c.inbuf) {
            Ok(None) => break,
            Ok(Some((status, sid, used))) => {
                c.inbuf.drain(..used);
                c.in_flight = false;
                let ph = phase.current.load(Ordering::Relaxed);
                if !c.initialized {
                    match (status, sid) {
                        (200, Some(s)) => {
                            c.session = Some(s);
                            c.initialized = true;
                            c.next_due = c.next_due.max(Instant::now());
                            if !c.counted_ready {
                                c.counted_ready = true;
                                phase.ready.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            if (1..=runs).contains(&ph) {
                                figures[ph - 1].errors += 1;
                            }
                            c.state = ConnState::Broken;
                        }
                    }
                    continue;
                }
                if (1..=runs).contains(&ph) {
                    let f = &mut figures[ph - 1];
                    if (200..300).contains(&status) {
                        f.ok += 1;
                        let us = c.sent_at.elapsed().as_micros().max(1) as u64;
                        let _ = f.latency.record(us.min(120_000_000));
                    } else {
                        f.errors += 1;
                    }
                }
                if status == 404 {
                    // The session is gone (or was mis-routed): start over.
                    c.state = ConnState::Broken;
                }
            }
            Err(()) => {
                let ph = phase.current.load(Ordering::Relaxed);
                if (1..=runs).contains(&ph) {
                    figures[ph - 1].errors += 1;
                }
                c.state = ConnState::Broken;
                break;
            }
        }
    }
    if matches!(c.state, ConnState::Broken) {
        let ph = phase.current.load(Ordering::Relaxed);
        if c.in_flight && (1..=runs).contains(&ph) {
            figures[ph - 1].errors += 1;
        }
        c.tls = None;
    }
}

/// Drive the load: warm-up, then measurement windows of `duration`, at most
/// `max_windows`. `at_boundary(k)` is called before window `k` (1-based)
/// and once after the last; the caller samples its counters there and
/// returns whether window `k` should run (it may stop early once it has the
/// windows it wants). Returns one `RunFigures` per window run.
pub fn run(
    cfg: &LoadConfig,
    warmup: Duration,
    duration: Duration,
    max_windows: usize,
    mut at_boundary: impl FnMut(usize) -> bool,
) -> anyhow::Result<Vec<RunFigures>> {
    let runs = max_windows;
    let phase = Arc::new(Phase::default());
    let threads = cfg.threads.clamp(1, cfg.connections.max(1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let mine = cfg.connections / threads + usize::from(t < cfg.connections % threads);
        let cfg = cfg.clone();
        let phase = phase.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-load-{t}"))
                .spawn(move || thread_main(&cfg, mine, runs, &phase))?,
        );
    }
    // Every session must be open before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while phase.ready.load(Ordering::Relaxed) < cfg.connections {
        if Instant::now() > deadline || handles.iter().any(|h| h.is_finished()) {
            phase.abort.store(true, Ordering::Relaxed);
            for h in handles {
                let _ = h.join();
            }
            anyhow::bail!(
                "only {}/{} sessions initialized within 30 s",
                phase.ready.load(Ordering::Relaxed),
                cfg.connections
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(warmup);
    let mut windows = 0;
    for k in 1..=runs + 1 {
        if !at_boundary(k) || k > runs {
            break;
        }
        phase.current.store(k, Ordering::Relaxed);
        windows = k;
        std::thread::sleep(duration);
    }
    phase.current.store(runs + 1, Ordering::Relaxed);
    let mut total: Vec<RunFigures> = Vec::new();
    for h in handles {
        let figs = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        if total.is_empty() {
            total = figs;
        } else {
            for (a, b) in total.iter_mut().zip(figs) {
                a.ok += b.ok;
                a.errors += b.errors;
                a.latency.add(&b.latency).expect("same bounds");
            }
        }
    }
    total.truncate(windows);
    Ok(total)
}

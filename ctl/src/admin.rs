//! The admin listener: plain HTTP/1.1 on a separate address, for
//! operators and scrapers. `GET /metrics` (Prometheus text), `GET
//! /sessions` (JSON, id prefixes only), `GET /backends` (JSON),
//! `GET /healthz`.
//!
//! One thread, one request per connection, 2 s socket timeouts: a stuck
//! scraper cannot hold it for long, and it never touches the data path.

use crate::exposition::Exposition;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dpuproxy_bench::background::Background;
use std::time::{Duration, Instant};

use dpuproxy_kernel::{KernelMetrics, KtlsSupport};
use dpuproxy_l7::{ErrorKind, Shared};

/// What the admin endpoint reports on.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// `kernel` or `dpdk`.
    pub mode: &'static str,
    /// L7 state.
    pub shared: Arc<Shared>,
    /// Connection counters of the data path (either mode).
    pub path: Arc<dpuproxy_driver::PathMetrics>,
    /// Reload and drain (`None`: the demo, which has neither).
    pub control: Option<Arc<crate::control::Control>>,
    /// Kernel data-path counters (kernel mode).
    pub kernel: Option<Arc<KernelMetrics>>,
    /// kTLS probe (kernel mode).
    pub ktls: Option<KtlsSupport>,
    /// DPDK data-path counters (dpdk mode).
    pub dpdk: Option<Arc<dpuproxy_engine::DpMetrics>>,
    /// The live mode switch (`--dpdk-switchable`).
    pub switch: Option<Arc<dpuproxy_switch::SwitchBoard>>,
    /// JWT key reloads.
    pub reloads: Arc<crate::keys::ReloadStats>,
}

/// A running admin listener.
#[derive(Debug)]
pub struct Admin {
    thread: Background,
    /// Bound address.
    pub addr: SocketAddr,
}

impl Admin {
    /// Bind and serve in a background thread.
    pub fn start(addr: SocketAddr, state: AdminState) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot bind admin listener {addr}: {e}"))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let thread = Background::spawn("dpuproxy-admin", move |stop| serve(listener, state, stop))?;
        Ok(Self { thread, addr })
    }

    /// Stop serving.
    pub fn shutdown(self) {
        self.thread.shutdown();
    }
}

/// Admin requests served at once; more are answered 503 at once, so a
/// health check never queues behind slow clients.
const MAX_ADMIN_CONNECTIONS: usize = 16;

fn serve(listener: TcpListener, state: AdminState, stop: Arc<AtomicBool>) {
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (mut failures, mut logged) = (0u64, None::<Instant>);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_ADMIN_CONNECTIONS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                    let _ = respond(&mut stream, 503, "text/plain", b"admin busy\n");
                    continue;
                }
                let (state, done) = (state.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("dpuproxy-admin-req".into())
                    .spawn(move || {
                        if let Err(e) = handle(stream, &state) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                // At most one line a second (EMFILE repeats on every try).
                failures += 1;
                if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(error = %e, failures, "admin accept failed");
                    logged = Some(Instant::now());
                    failures = 0;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // One deadline for the whole request: a client dribbling a byte per
    // second must not hold the (single) admin thread.
    let deadline = Instant::now() + Duration::from_secs(2);
    let (method, path) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return respond(&mut stream, 408, "text/plain", b"request timeout\n");
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("/").to_string(),
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < 8192 => continue,
            _ => return respond(&mut stream, 400, "text/plain", b"bad request\n"),
        }
    };
    let (path, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
    match (method.as_str(), path) {
        ("POST", "/reload" | "/drain") => return handle_control(&mut stream, state, path),
        (m @ ("POST" | "GET"), "/switch") => {
            let (status, body) = match &state.switch {
                None => (
                    404,
                    "{\"error\":\"no live mode switch here (run --mode dpdk --dpdk-switchable)\"}"
                        .to_string(),
                ),
                Some(b) if m == "POST" => crate::switch_admin::request(b, query),
                Some(b) => crate::switch_admin::status(b),
            };
            return respond(&mut stream, status, "application/json", body.as_bytes());
        }
        ("GET", _) => {}
        _ => {
            return respond(
                &mut stream,
                405,
                "text/plain",
                b"GET, or POST /reload, /drain and /switch\n",
            );
        }
    }
    match path {
        "/metrics" => {
            let body = render_metrics(state);
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
            )
        }
        "/sessions" => {
            let body = render_sessions(state);
            respond(&mut stream, 200, "application/json", body.as_bytes())
        }
        "/backends" => {
            let body = render_backends(state);
            respond(&mut stream, 200, "application/json", body.as_bytes())
        }
        "/healthz" => match &state.control {
            // A balancer stops sending at once.
            Some(c) if c.is_draining() => respond(&mut stream, 503, "text/plain", b"draining\n"),
            _ => respond(&mut stream, 200, "text/plain", b"ok\n"),
        },
        _ => respond(
            &mut stream,
            404,
            "text/plain",
            b"try /metrics, /sessions, /backends or /healthz\n",
        ),
    }
}

/// `POST /reload` (re-read the backend list and session keys; 200 with
/// what changed, 400 with why nothing did) and `POST /drain` (202).
fn handle_control(stream: &mut TcpStream, state: &AdminState, path: &str) -> std::io::Result<()> {
    let Some(control) = &state.control else {
        return respond(stream, 404, "text/plain", b"not available here\n");
    };
    if path == "/drain" {
        control.start_drain();
        return respond(stream, 202, "text/plain", b"draining\n");
    }
    match control.reload("POST /reload") {
        Ok(summary) => respond(stream, 200, "text/plain", format!("{summary}\n").as_bytes()),
        Err(e) => respond(
            stream,
            400,
            "text/plain",
            format!("refused: {e:#}\n").as_bytes(),
        ),
    }
}

fn respond(stream: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        dpuproxy_l7::http::reason_phrase(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// Picks one per-lcore counter.
type LcoreField = fn(&dpuproxy_engine::LcoreCounters) -> &std::sync::atomic::AtomicU64;

/// The Prometheus text exposition of every counter.
pub fn render_metrics(state: &AdminState) -> String {
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let sh = &state.shared;
    let idle_kernel = KernelMetrics::default();
    let k = state.kernel.as_deref().unwrap_or(&idle_kernel);
    let idle_dpdk = dpuproxy_engine::DpMetrics::default();
    let d = state.dpdk.as_deref().unwrap_or(&idle_dpdk);
    let p = &*state.path;
    let mut o = Exposition::default();
    o.family("dpuproxy_info", "gauge", "Build and mode.");
    let _ = writeln!(
        o.0,
        "dpuproxy_info{{mode=\"{}\",version=\"{}\"}} 1",
        state.mode,
        env!("CARGO_PKG_VERSION")
    );
    // Removed backends leave the per-backend families (a new backend may
    // take the same name).
    let backends = || {
        sh.backends
            .iter()
            .filter(|b| b.state() != dpuproxy_l7::BackendState::Removed)
    };
    o.labelled(
        "dpuproxy_requests_total",
        "counter",
        "Requests forwarded to each backend.",
        "backend",
        backends().map(|b| (&b.name, r(&b.requests))),
    );
    o.labelled(
        "dpuproxy_backend_up",
        "gauge",
        "1 when the backend takes new sessions.",
        "backend",
        backends().map(|b| (&b.name, u8::from(b.is_healthy()))),
    );
    o.labelled(
        "dpuproxy_backend_draining",
        "gauge",
        "1 when the backend keeps its sessions but takes no new ones.",
        "backend",
        backends().map(|b| {
            (
                &b.name,
                u8::from(b.state() == dpuproxy_l7::BackendState::Draining),
            )
        }),
    );
    o.labelled(
        "dpuproxy_backend_outstanding",
        "gauge",
        "Requests in flight per backend.",
        "backend",
        backends().map(|b| (&b.name, b.outstanding())),
    );
    o.labelled(
        "dpuproxy_backend_connect_failures_total",
        "counter",
        "Failed connects per backend.",
        "backend",
        backends().map(|b| (&b.name, r(&b.connect_failures))),
    );
    let m = &sh.metrics;
    let singles: [(&str, &str, &str, u64); 25] = [
        (
            "dpuproxy_client_requests_total",
            "counter",
            "Complete requests received from clients.",
            r(&m.requests),
        ),
        (
            "dpuproxy_local_responses_total",
            "counter",
            "Responses generated by the proxy itself.",
            r(&m.local_responses),
        ),
        (
            "dpuproxy_stateless_requests_total",
            "counter",
            "Stateless (2026-07-28) requests routed.",
            r(&m.stateless_requests),
        ),
        (
            "dpuproxy_sessions_active",
            "gauge",
            "Sessions in the affinity table.",
            sh.affinity.len() as u64,
        ),
        (
            "dpuproxy_sessions_capacity",
            "gauge",
            "Affinity table bound.",
            sh.affinity.capacity() as u64,
        ),
        (
            "dpuproxy_sessions_learned_total",
            "counter",
            "Session bindings learned.",
            r(&sh.affinity.stats.learned),
        ),
        (
            "dpuproxy_sse_streams_active",
            "gauge",
            "SSE streams being relayed.",
            r(&m.sse_active),
        ),
        (
            "dpuproxy_sse_streams_total",
            "counter",
            "SSE streams started.",
            r(&m.sse_total),
        ),
        (
            "dpuproxy_sse_events_total",
            "counter",
            "SSE events relayed.",
            r(&m.sse_events),
        ),
        (
            "dpuproxy_sse_keepalives_total",
            "counter",
            "SSE keepalive comments sent.",
            r(&m.sse_keepalives),
        ),
        (
            "dpuproxy_ktls_available",
            "gauge",
            "1 when the kernel accepts TCP_ULP tls.",
            r(&k.ktls_available),
        ),
        (
            "dpuproxy_tls_handshakes_total",
            "counter",
            "Completed TLS handshakes.",
            r(&p.handshakes),
        ),
        (
            "dpuproxy_tls_handshake_failures_total",
            "counter",
            "Failed or timed-out TLS handshakes.",
            r(&p.handshake_failures),
        ),
        (
            "dpuproxy_tls_errors_total",
            "counter",
            "Client connections ended by a TLS error after the handshake.",
            r(&p.tls_errors),
        ),
        (
            "dpuproxy_connections_accepted_total",
            "counter",
            "Accepted client TCP connections.",
            r(&p.accepted),
        ),
        (
            "dpuproxy_connections_open",
            "gauge",
            "Open client connections.",
            r(&p.open),
        ),
        (
            "dpuproxy_buffered_bytes",
            "gauge",
            "Bytes held for clients outside the TCP buffers (plaintext both ways, TLS records), refreshed each second.",
            r(&p.buffered),
        ),
        (
            "dpuproxy_connections_closed_total",
            "counter",
            "Closed client connections.",
            r(&p.closed),
        ),
        (
            "dpuproxy_connections_aborted_total",
            "counter",
            "Client connections closed abortively (RST, no close_notify).",
            r(&p.aborted),
        ),
        (
            "dpuproxy_connections_shed_total",
            "counter",
            "Connections still in their TLS handshake closed to make room (oldest first).",
            r(&p.shed),
        ),
        (
            "dpuproxy_connections_rejected_total",
            "counter",
            "Connections refused at the per-worker (per-lcore) limit.",
            r(&p.rejected),
        ),
        (
            "dpuproxy_upstream_connects_total",
            "counter",
            "New backend connections.",
            r(&p.upstream_connects),
        ),
        (
            "dpuproxy_upstream_pool_reuses_total",
            "counter",
            "Backend connections reused from the idle pool.",
            r(&p.pool_reuses),
        ),
        (
            "dpuproxy_upstream_pool_expired_total",
            "counter",
            "Idle pooled backend connections closed after pool_idle.",
            r(&p.pool_expired),
        ),
        (
            "dpuproxy_upstream_pool_dead_total",
            "counter",
            "Pooled backend connections found closed or dirty at reuse.",
            r(&p.pool_dead),
        ),
    ];
    for (name, kind, help, v) in singles {
        o.single(name, kind, help, v);
    }
    let st = &sh.affinity.stats;
    o.labelled(
        "dpuproxy_sessions_removed_total",
        "counter",
        "Session bindings removed, by reason.",
        "reason",
        [
            ("deleted", r(&st.deleted)),
            ("dropped", r(&st.dropped)),
            ("expired", r(&st.expired)),
            ("evicted", r(&st.evicted)),
        ],
    );
    o.labelled(
        "dpuproxy_tls_record_path_total",
        "counter",
        "Connections by TLS record path after the handshake.",
        "path",
        [
            ("ktls-tx", r(&k.ktls_tx)),
            ("ktls-rx", r(&k.ktls_rx)),
            ("openssl", r(&k.openssl_records)),
            (
                "userspace",
                if state.dpdk.is_some() {
                    r(&p.handshakes)
                } else {
                    r(&k.ours_records)
                },
            ),
        ],
    );
    if let Some(auth) = &sh.auth {
        use dpuproxy_l7::auth::Rejection;
        o.labelled(
            "dpuproxy_auth_rejections_total",
            "counter",
            "Requests refused by the resource server, by reason.",
            "reason",
            Rejection::ALL.map(|x| (x.label(), auth.stats.rejections(x))),
        );
        o.labelled(
            "dpuproxy_auth_verified_total",
            "counter",
            "Tokens accepted, from the cache or by a signature check.",
            "cache",
            [
                ("hit", r(&auth.stats.cache_hits)),
                ("miss", r(&auth.stats.cache_misses)),
            ],
        );
        o.single(
            "dpuproxy_auth_keys",
            "gauge",
            "Verification keys loaded.",
            auth.key_count(),
        );
        o.labelled(
            "dpuproxy_auth_key_reloads_total",
            "counter",
            "Key reloads by result.",
            "result",
            [
                ("ok", r(&state.reloads.ok)),
                ("error", r(&state.reloads.failed)),
            ],
        );
    }
    if state.dpdk.is_some() {
        let pollers = d.pollers();
        let per_lcore = |f: LcoreField| {
            pollers
                .iter()
                .map(move |c| (r(&c.lcore).to_string(), r(f(c))))
                .collect::<Vec<_>>()
        };
        let lcore_families: [(&str, &str, &str, LcoreField); 19] = [
            (
                "dpuproxy_lcore_busy_cycles_total",
                "counter",
                "TSC cycles in loop turns that did work.",
                |c| &c.busy_cycles,
            ),
            (
                "dpuproxy_lcore_idle_cycles_total",
                "counter",
                "TSC cycles in empty loop turns.",
                |c| &c.idle_cycles,
            ),
            (
                "dpuproxy_lcore_rx_cycles_total",
                "counter",
                "Of the busy cycles: rx bursts and handing frames out (OVS pmd-stats style).",
                |c| &c.rx_cycles,
            ),
            (
                "dpuproxy_lcore_processing_cycles_total",
                "counter",
                "Of the busy cycles: TCP, TLS, L7 and timers.",
                |c| &c.processing_cycles,
            ),
            (
                "dpuproxy_lcore_tx_cycles_total",
                "counter",
                "Of the busy cycles: tx bursts (on af_packet/af_xdp including the kernel work of the send kick).",
                |c| &c.tx_cycles,
            ),
            (
                "dpuproxy_lcore_busy_turns_total",
                "counter",
                "Loop turns that did work.",
                |c| &c.busy_turns,
            ),
            (
                "dpuproxy_lcore_idle_turns_total",
                "counter",
                "Loop turns that found nothing to do.",
                |c| &c.idle_turns,
            ),
            (
                "dpuproxy_lcore_queue",
                "gauge",
                "The rx/tx queue pair the lcore polls.",
                |c| &c.queue,
            ),
            (
                "dpuproxy_lcore_rx_packets_total",
                "counter",
                "Packets the lcore took from its rx queue.",
                |c| &c.rx_packets,
            ),
            (
                "dpuproxy_lcore_accepted_total",
                "counter",
                "Client connections the lcore accepted.",
                |c| &c.accepted,
            ),
            (
                "dpuproxy_lcore_steered_out_total",
                "counter",
                "Packets handed to the lcore that owns their flow.",
                |c| &c.steered_out,
            ),
            (
                "dpuproxy_lcore_steered_in_total",
                "counter",
                "Packets other lcores handed to this one.",
                |c| &c.steered_in,
            ),
            (
                "dpuproxy_lcore_steer_dropped_total",
                "counter",
                "Packets dropped on a full hand-over ring, and ARP copies that found no mbuf or a full ring.",
                |c| &c.steer_dropped,
            ),
            (
                "dpuproxy_lcore_tcp_connections",
                "gauge",
                "The lcore's userspace TCP connections.",
                |c| &c.tcp_connections,
            ),
            (
                "dpuproxy_lcore_syn_evicted_total",
                "counter",
                "SYNs that found the listen backlog full and evicted the oldest half-open connection (its client gets a reset).",
                |c| &c.syn_evicted,
            ),
            (
                "dpuproxy_lcore_syn_dropped_total",
                "counter",
                "SYNs dropped because the listen backlog was full of established connections.",
                |c| &c.syn_dropped,
            ),
            (
                "dpuproxy_lcore_buffered_bytes",
                "gauge",
                "Bytes held for client connections outside the TCP buffers.",
                |c| &c.buffered_bytes,
            ),
            (
                "dpuproxy_lcore_rss_hash_checked_total",
                "counter",
                "Hardware steering: TCP packets whose NIC RSS hash was compared with ours.",
                |c| &c.rss_hash_checked,
            ),
            (
                "dpuproxy_lcore_rss_hash_mismatch_total",
                "counter",
                "Hardware steering: TCP packets whose NIC RSS hash is not ours.",
                |c| &c.rss_hash_mismatch,
            ),
        ];
        for (name, kind, help, f) in lcore_families {
            o.labelled(name, kind, help, "lcore", per_lcore(f));
        }
        o.labelled(
            "dpuproxy_lcore_tsc_hz",
            "gauge",
            "TSC ticks per second.",
            "lcore",
            pollers
                .iter()
                .map(|c| (r(&c.lcore).to_string(), r(&d.tsc_hz))),
        );
        o.single(
            "dpuproxy_dpdk_up",
            "gauge",
            "1 while the DPDK port is up and its lcores poll.",
            u64::from(d.up.load(Ordering::Relaxed)),
        );
        o.labelled(
            "dpuproxy_dpdk_steering",
            "gauge",
            "How packets reach the lcore owning their flow (1 on the mode in use).",
            "mode",
            [
                dpuproxy_engine::SteeringMode::Single,
                dpuproxy_engine::SteeringMode::Hardware,
                dpuproxy_engine::SteeringMode::Software,
            ]
            .map(|m| (m.label(), u64::from(d.steering() == m))),
        );
        let port_families: [(&str, &str, &str, u64); 10] = [
            (
                "dpuproxy_port_rx_packets_total",
                "counter",
                "Packets received by the port.",
                r(&d.port_rx_packets),
            ),
            (
                "dpuproxy_port_tx_packets_total",
                "counter",
                "Packets sent by the port.",
                r(&d.port_tx_packets),
            ),
            (
                "dpuproxy_port_rx_bytes_total",
                "counter",
                "Bytes received by the port.",
                r(&d.port_rx_bytes),
            ),
            (
                "dpuproxy_port_tx_bytes_total",
                "counter",
                "Bytes sent by the port.",
                r(&d.port_tx_bytes),
            ),
            (
                "dpuproxy_port_rx_missed_total",
                "counter",
                "Packets dropped on a full rx queue.",
                r(&d.port_imissed),
            ),
            (
                "dpuproxy_port_rx_errors_total",
                "counter",
                "Erroneous packets received.",
                r(&d.port_ierrors),
            ),
            (
                "dpuproxy_port_tx_errors_total",
                "counter",
                "Failed transmits.",
                r(&d.port_oerrors),
            ),
            (
                "dpuproxy_port_tx_dropped_total",
                "counter",
                "Frames dropped on a full tx ring or with no free mbuf.",
                d.sum(|c| &c.tx_dropped),
            ),
            (
                "dpuproxy_mempool_in_use",
                "gauge",
                "Mbufs out of the pool.",
                r(&d.mempool_in_use),
            ),
            (
                "dpuproxy_mempool_size",
                "gauge",
                "Mbufs in the pool.",
                r(&d.mempool_size),
            ),
        ];
        for (name, kind, help, v) in port_families {
            o.labelled(name, kind, help, "port", [("0", v)]);
        }
        o.single(
            "dpuproxy_tcp_connections",
            "gauge",
            "Userspace TCP connections (clients and backends).",
            d.sum(|c| &c.tcp_connections),
        );
    }
    o.labelled(
        "dpuproxy_errors_total",
        "counter",
        "Errors by kind.",
        "kind",
        ErrorKind::ALL.map(|x| (x.label(), m.errors(x))),
    );
    render_control(&mut o, state);
    if let Some(b) = &state.switch {
        crate::switch_admin::render(&mut o, b);
    }
    o.labelled(
        "dpuproxy_rejected_requests_total",
        "counter",
        "Requests the proxy answered itself with an error, by whose fault.",
        "fault",
        dpuproxy_l7::Fault::ALL.map(|f| (f.label(), m.rejects(f))),
    );
    o.0
}

/// Draining state, reloads, sealed session ids.
fn render_control(o: &mut Exposition, state: &AdminState) {
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    if let Some(c) = &state.control {
        o.single(
            "dpuproxy_draining",
            "gauge",
            "1 while the proxy drains (SIGTERM, POST /drain).",
            u8::from(c.is_draining()),
        );
        o.labelled(
            "dpuproxy_reloads_total",
            "counter",
            "Backend list and session key reloads, by result.",
            "result",
            [
                ("ok", r(&c.stats.reloads_ok)),
                ("error", r(&c.stats.reloads_failed)),
            ],
        );
    }
    if let Some(s) = &state.shared.sealer {
        let st = &s.stats;
        o.labelled(
            "dpuproxy_session_ids_total",
            "counter",
            "Sealed session ids: sealed, opened (current or previous key), refused by reason.",
            "result",
            [
                ("sealed", r(&st.sealed)),
                ("opened", r(&st.opened)),
                ("opened_previous_key", r(&st.opened_previous)),
                ("refused_malformed", r(&st.refused_malformed)),
                ("refused_key", r(&st.refused_key)),
                ("refused_backend", r(&st.refused_backend)),
            ],
        );
    }
}

/// `/sessions`: id prefix → backend, newest scan first, at most 1000.
pub fn render_sessions(state: &AdminState) -> String {
    let now = Instant::now();
    let list = state.shared.affinity.list(now, 1000);
    let sessions: Vec<_> = list
        .iter()
        .map(|s| {
            serde_json::json!({
                "id_prefix": s.id_prefix,
                "backend": state.shared.backends.get(s.backend).addr,
                "idle_ms": s.idle.as_millis() as u64,
            })
        })
        .collect();
    serde_json::json!({
        "count": state.shared.affinity.len(),
        "listed": sessions.len(),
        "sessions": sessions,
    })
    .to_string()
}

/// `/backends`: health and load per backend, plus mode and kTLS status.
pub fn render_backends(state: &AdminState) -> String {
    let list: Vec<_> = state
        .shared
        .backends
        .iter()
        .map(|b| {
            serde_json::json!({
                "name": b.name,
                "addr": b.addr,
                "state": b.state().label(),
                "up": b.is_healthy(),
                "outstanding": b.outstanding(),
                "requests": b.requests.load(Ordering::Relaxed),
            })
        })
        .collect();
    serde_json::json!({
        "mode": state.mode,
        "ktls": state.ktls.as_ref().map(|k| serde_json::json!({"available": k.available, "reason": k.reason})),
        "backends": list,
    })
    .to_string()
}

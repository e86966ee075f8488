//! A client connection's life in the driver: handshake, closes (graceful
//! and abortive), lingering, the backend pool and its settings, the
//! data-path metrics, stale events, slow readers, and moving a connection
//! to another driver mid-stream.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use dpuproxy_driver::{Close, Driver, DriverSettings, Linger, PathMetrics, Phase, Side, Transport};
use dpuproxy_l7::{CoreConfig, ErrorKind};

fn get_stream(session: &str) -> String {
    format!(
        "GET /mcp HTTP/1.1\r\nHost: p\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\n\r\n"
    )
}

/// An HTTP/1.0 client of a close-delimited response whose backend resets
/// mid-body must see a broken connection: RST, and no close_notify that
/// would make the truncated body look complete.
#[test]
fn abortive_close_sends_no_close_notify() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared);
    let req = format!(
        "POST /mcp HTTP/1.0\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{INIT}",
        INIT.len()
    );
    sim.client(&req);
    sim.backend("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"partial\":");
    sim.backend_reset();
    assert!(sim.client_text().contains("{\"partial\":"));
    assert_eq!(sim.client_closed(), Some(false), "reset, not a clean end");
    assert!(
        !sim.t.clients[sim.client].shutdown,
        "close_notify was sent on an abortive close"
    );
    assert_eq!(PathMetrics::get(&sim.metrics().aborted), 1);
}

#[test]
fn graceful_close_flushes_then_close_notify_then_fin() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared);
    // A 400 with Connection: close, to a client that reads 10 bytes at a time.
    sim.fake().window = Some(10);
    sim.client("NOT HTTP AT ALL\r\n\r\n");
    assert!(matches!(
        sim.driver.phase(sim.id),
        Some(Phase::Flushing { .. })
    ));
    assert!(!sim.t.clients[sim.client].shutdown);
    for _ in 0..100 {
        if sim.client_closed().is_some() {
            break;
        }
        sim.fake().window = Some(10);
        sim.pump();
    }
    assert!(sim.t.clients[sim.client].shutdown, "close_notify sent");
    assert_eq!(sim.client_closed(), Some(true));
    let got = sim.client_text();
    assert_eq!(status_of(&got), 400);
    assert!(got.ends_with('}'), "whole response before the close: {got}");
}

#[test]
fn a_client_that_stops_reading_while_closing_is_reset_after_linger_timeout() {
    let shared = shared_with(CoreConfig::default(), 1);
    let settings = DriverSettings {
        linger_timeout: Duration::from_secs(30),
        ..DriverSettings::default()
    };
    let mut sim = Sim::with_settings(shared, settings);
    sim.fake().window = Some(0);
    sim.client("NOT HTTP AT ALL\r\n\r\n");
    sim.advance(Duration::from_secs(29));
    assert_eq!(sim.client_closed(), None);
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.client_closed(), Some(false), "cut: it never got it all");
    assert!(!sim.t.clients[sim.client].shutdown);
}

#[test]
fn lingering_drains_client_input_until_its_end() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared.clone());
    sim.fake().linger = Some(Linger::Drain);
    sim.client("NOT HTTP AT ALL\r\n\r\n");
    assert!(matches!(
        sim.driver.phase(sim.id),
        Some(Phase::Lingering { .. })
    ));
    // What the client still sends is read and dropped, not answered.
    sim.client(&post(INIT, ""));
    assert!(sim.fake().to_proxy.is_empty());
    assert!(sim.t.connects.is_empty());
    assert_eq!(sim.client_closed(), None);
    sim.client_eof();
    assert_eq!(sim.client_closed(), Some(true));
    // Without an end from the client, the drain time bounds it.
    let mut sim = Sim::new(shared);
    sim.fake().linger = Some(Linger::Drain);
    sim.client("NOT HTTP AT ALL\r\n\r\n");
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.client_closed(), None);
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.client_closed(), Some(true));
}

#[test]
fn handshake_that_never_finishes_is_cut_and_counted() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared.clone());
    // A second client that never completes its handshake.
    let c = sim.t.add_client();
    sim.t.clients[c].handshake_left = Some(usize::MAX);
    let id = sim
        .driver
        .accept(&mut sim.t, ClientRef(c), "192.0.2.9".into(), sim.now)
        .unwrap();
    sim.pump();
    assert!(matches!(
        sim.driver.phase(id),
        Some(Phase::Handshaking { .. })
    ));
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.t.clients[c].closed, Some(Close::Abort));
    assert_eq!(shared.metrics.errors(ErrorKind::TlsHandshake), 1);
    assert_eq!(PathMetrics::get(&sim.metrics().handshake_failures), 1);
    // A failed handshake flushes its alert, then closes without close_notify.
    let c = sim.t.add_client();
    sim.t.clients[c].handshake_left = None;
    sim.t.clients[c].held = b"alert".to_vec();
    sim.driver
        .accept(&mut sim.t, ClientRef(c), "192.0.2.9".into(), sim.now)
        .unwrap();
    sim.pump();
    assert_eq!(sim.t.clients[c].received, b"alert");
    assert_eq!(sim.t.clients[c].closed, Some(Close::Graceful));
    assert!(!sim.t.clients[c].shutdown);
    assert_eq!(PathMetrics::get(&sim.metrics().handshake_failures), 2);
}

#[test]
fn tls_error_flushes_the_alert_and_counts_tls_io() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared.clone());
    initialize(&mut sim, "s");
    sim.fake().read_failure = Some(dpuproxy_driver::Failure::Tls);
    sim.fake().held = b"alert".to_vec();
    sim.fake().window = Some(0);
    sim.pump();
    assert_eq!(sim.client_closed(), None, "the alert is still held");
    sim.fake().window = None;
    sim.pump();
    assert!(sim.client_text().ends_with("alert"));
    assert_eq!(sim.client_closed(), Some(true));
    assert!(!sim.t.clients[sim.client].shutdown, "no close_notify");
    assert_eq!(shared.metrics.errors(ErrorKind::TlsIo), 1);
    // A client that just ends is no TLS error.
    let mut sim = sim.sibling();
    sim.client_eof();
    assert_eq!(shared.metrics.errors(ErrorKind::TlsIo), 1);
}

#[test]
fn pool_settings_are_honoured() {
    let shared = shared_with(CoreConfig::default(), 1);
    let settings = DriverSettings {
        pool_idle: Duration::from_millis(1500),
        ..DriverSettings::default()
    };
    let mut sim = Sim::with_settings(shared.clone(), settings);
    initialize(&mut sim, "s");
    let call = post(CALL, "Mcp-Session-Id: s\r\n");
    // Reused within pool_idle ...
    sim.advance(Duration::from_secs(1));
    sim.client(&call);
    assert_eq!(sim.t.connects.last(), Some(&(0, true)));
    sim.backend(&json_response(None, "{}"));
    // ... and expired after it: closed by the driver, a new connection next.
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.driver.pooled(), 0);
    assert_eq!(PathMetrics::get(&sim.metrics().pool_expired), 1);
    sim.client(&call);
    assert_eq!(sim.t.connects.last(), Some(&(0, false)));
    // pool_max_per_backend = 0: nothing is ever kept.
    let settings = DriverSettings {
        pool_max_per_backend: 0,
        ..DriverSettings::default()
    };
    let mut sim = Sim::with_settings(shared, settings);
    initialize(&mut sim, "t");
    assert_eq!(sim.t.releases, vec![false], "closed, not pooled");
    sim.client(&post(CALL, "Mcp-Session-Id: t\r\n"));
    assert_eq!(sim.t.connects, vec![(0, false), (0, false)]);
}

#[test]
fn data_path_metrics_count_both_sides() {
    let shared = shared_with(CoreConfig::default(), 1);
    let settings = DriverSettings {
        max_connections: 1,
        ..DriverSettings::default()
    };
    let mut sim = Sim::with_settings(shared, settings);
    initialize(&mut sim, "s");
    sim.client(&post(CALL, "Mcp-Session-Id: s\r\n"));
    sim.backend(&json_response(None, "{}"));
    let m = sim.metrics();
    assert_eq!(PathMetrics::get(&m.accepted), 1);
    assert_eq!(PathMetrics::get(&m.handshakes), 1);
    assert_eq!(PathMetrics::get(&m.upstream_connects), 1);
    assert_eq!(PathMetrics::get(&m.pool_reuses), 1);
    assert_eq!(PathMetrics::get(&m.open), 1);
    // At the limit, a new client is refused and counted.
    assert!(!sim.driver.admit(&mut sim.t, sim.now));
    assert_eq!(PathMetrics::get(&sim.metrics().rejected), 1);
    sim.client_eof();
    let m = sim.metrics();
    assert_eq!(PathMetrics::get(&m.closed), 1);
    assert_eq!(PathMetrics::get(&m.open), 0);
    assert!(sim.driver.admit(&mut sim.t, sim.now));
}

#[test]
fn a_stale_event_does_not_reach_the_slot_that_reused_its_index() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared);
    let old = sim.id;
    sim.client_eof();
    assert!(sim.driver.is_empty());
    // A new connection takes the freed index.
    let c = sim.t.add_client();
    let new = sim
        .driver
        .accept(&mut sim.t, ClientRef(c), "192.0.2.9".into(), sim.now)
        .unwrap();
    sim.pump();
    assert_eq!(new.index, old.index);
    assert_ne!(new, old);
    assert!(sim.driver.core(old).is_none());
    assert!(sim.driver.core(new).is_some());
    // An event for the old connection is ignored: nothing to drive.
    sim.driver.mark(old, Side::Client);
    sim.driver.mark(old, Side::Backend);
    assert!(!sim.driver.has_work());
    sim.driver.mark(new, Side::Client);
    assert!(sim.driver.has_work());
}

/// Idle means neither side moved: a client that reads slowly while the
/// proxy holds the backend back for it is not cut.
#[test]
fn slow_reader_is_not_cut_by_the_response_timeout() {
    let cfg = CoreConfig {
        response_timeout: Duration::from_secs(10),
        max_downstream_buffer: 64 * 1024,
        ..CoreConfig::default()
    };
    let shared = shared_with(cfg, 1);
    let mut sim = Sim::new(shared.clone());
    initialize(&mut sim, "s");
    sim.client(&post(CALL, "Mcp-Session-Id: s\r\n"));
    let body = "x".repeat(256 * 1024);
    sim.fake().window = Some(0);
    sim.backend(&format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    // 4 KiB every 5 s: 320 s for the whole body, and the proxy reads the
    // backend only every 20 s (it holds it back while 64 KiB wait).
    for _ in 0..200 {
        if sim.client_rx().len() > body.len() {
            break;
        }
        sim.advance(Duration::from_secs(5));
        sim.fake().window = Some(4 * 1024);
        sim.pump();
    }
    assert!(sim.client_text().ends_with(&body[body.len() - 100..]));
    assert_eq!(sim.client_closed(), None);
    assert_eq!(shared.metrics.errors(ErrorKind::UpstreamTimeout), 0);
    // A client that stops reading altogether is cut after the timeout,
    // and it is the client's timeout.
    sim.client(&post(CALL, "Mcp-Session-Id: s\r\n"));
    sim.fake().window = Some(0);
    sim.backend(&format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    sim.advance(Duration::from_secs(9));
    assert_eq!(sim.client_closed(), None);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.client_closed(), Some(false));
    assert_eq!(shared.metrics.errors(ErrorKind::ClientTimeout), 1);
    assert_eq!(shared.metrics.errors(ErrorKind::UpstreamTimeout), 0);
}

/// A connection moves to another driver (and transport) mid-SSE without
/// losing its L7 state: the stream continues, in order, on the new one.
#[test]
fn a_connection_moves_to_another_driver_mid_stream() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared.clone());
    initialize(&mut sim, "s");
    sim.client(&get_stream("s"));
    sim.backend(sse_head());
    sim.backend(&chunk("data: 1\n\n"));
    let conn = sim.t.current.unwrap();
    // Bytes in flight during the move stay in the old sockets.
    sim.t.conns[conn]
        .to_proxy
        .extend(chunk("data: 2\n\n").as_bytes());
    let d = sim.driver.detach(sim.id).expect("live slot");
    assert!(d.core().is_streaming_sse());
    assert!(sim.driver.is_empty());
    // The new data path: its own driver and transport; the sockets move.
    let mut t2 = FakeTransport::default();
    let c2 = t2.add_client();
    std::mem::swap(&mut t2.clients[c2], &mut sim.t.clients[sim.client]);
    t2.conns.push(std::mem::take(&mut sim.t.conns[conn]));
    t2.requests.push(Vec::new());
    let metrics = std::sync::Arc::new(PathMetrics::default());
    let mut d2: Driver<FakeTransport> =
        Driver::new(shared.clone(), DriverSettings::default(), metrics, sim.now);
    let moved = d.with(ClientRef(c2), Some(0usize));
    let id2 = d2.attach(&mut t2, moved, sim.now).expect("attached");
    d2.run(&mut t2, sim.now);
    t2.conns[0].to_proxy.extend(chunk("data: 3\n\n").as_bytes());
    d2.mark(id2, Side::Backend);
    d2.run(&mut t2, sim.now);
    let got = String::from_utf8_lossy(&t2.clients[c2].received).into_owned();
    let order: Vec<usize> = ["data: 1", "data: 2", "data: 3"]
        .iter()
        .map(|e| got.find(e).unwrap_or_else(|| panic!("{e} missing: {got}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{got}");
    assert!(d2.core(id2).unwrap().is_streaming_sse());
    assert_eq!(shared.metrics.sse_active.load(Ordering::Relaxed), 1);
    // Its end is the stream's end, on the new driver.
    t2.conns[0].to_proxy.extend(b"0\r\n\r\n");
    d2.mark(id2, Side::Backend);
    d2.run(&mut t2, sim.now);
    assert_eq!(shared.metrics.sse_active.load(Ordering::Relaxed), 0);
    assert_eq!(t2.clients[c2].closed, None, "keep-alive continues");
    let _ = t2.buffered(&ClientRef(c2));
}

/// Stalled handshakes cannot shut established clients out: at either
/// bound the oldest connection still in its handshake is shed.
#[test]
fn stalled_handshakes_are_shed_oldest_first() {
    let shared = shared_with(CoreConfig::default(), 1);
    let settings = DriverSettings {
        max_connections: 4,
        max_handshaking: 3,
        ..DriverSettings::default()
    };
    let mut sim = Sim::with_settings(shared, settings);
    initialize(&mut sim, "s");
    let mut stalled = Vec::new();
    for _ in 0..3 {
        assert!(sim.driver.admit(&mut sim.t, sim.now));
        let c = sim.t.add_client();
        sim.t.clients[c].handshake_left = Some(usize::MAX);
        sim.driver
            .accept(&mut sim.t, ClientRef(c), "192.0.2.66".into(), sim.now)
            .unwrap();
        stalled.push(c);
        sim.pump();
    }
    // Four connections (the limit) and three handshakes (the bound): a
    // newcomer sheds the oldest stalled handshake, not the working client.
    assert!(sim.driver.admit(&mut sim.t, sim.now));
    assert_eq!(sim.t.clients[stalled[0]].closed, Some(Close::Abort));
    assert_eq!(sim.t.clients[stalled[1]].closed, None);
    assert_eq!(sim.client_closed(), None, "the established client stays");
    assert_eq!(PathMetrics::get(&sim.metrics().shed), 1);
    // With only established clients at the limit, a newcomer is refused.
    let settings = DriverSettings {
        max_connections: 1,
        ..DriverSettings::default()
    };
    let mut sim = Sim::with_settings(shared_with(CoreConfig::default(), 1), settings);
    initialize(&mut sim, "t");
    assert!(!sim.driver.admit(&mut sim.t, sim.now));
    assert_eq!(PathMetrics::get(&sim.metrics().rejected), 1);
}

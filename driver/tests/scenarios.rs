//! The L7 scenarios, through the production driver over the fake
//! transport (moved here from the core's own tests): scripted clients and
//! backends on a fake clock.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use dpuproxy_l7::{CoreConfig, ErrorKind};

#[test]
fn initialize_round_robin_then_affinity() {
    let shared = shared_with(CoreConfig::default(), 3);
    let mut landed = Vec::new();
    for i in 0..3 {
        let mut sim = Sim::new(shared.clone());
        landed.push(initialize(&mut sim, &format!("sess-{i}")));
    }
    let distinct: HashSet<_> = landed.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "round-robin spread: {landed:?}");
    // Later requests with the id go to the learned backend, on any
    // connection (and so on any worker: the table is shared).
    for (i, want) in landed.iter().enumerate() {
        for _ in 0..3 {
            let mut sim = Sim::new(shared.clone());
            sim.client(&post(CALL, &format!("Mcp-Session-Id: sess-{i}\r\n")));
            assert_eq!(sim.t.connects, vec![(*want, false)]);
            let req = sim.last_request();
            assert!(req.starts_with("POST /mcp HTTP/1.1\r\n"), "{req}");
            assert!(req.contains(&format!("Mcp-Session-Id: sess-{i}")));
            assert!(req.contains("X-Forwarded-For: 192.0.2.7"));
        }
    }
    assert_eq!(shared.affinity.len(), 3);
}

#[test]
fn byte_at_a_time_both_directions() {
    let shared = shared_with(CoreConfig::default(), 2);
    let mut sim = Sim::new(shared.clone());
    sim.client_bytewise(&post(INIT, ""));
    assert_eq!(sim.t.connects.len(), 1);
    let sent = sim.last_request();
    assert!(sent.ends_with(INIT), "{sent}");
    let resp = json_response(Some("abc"), r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
    sim.backend_bytewise(&resp);
    let got = sim.take_client();
    assert!(
        got.ends_with(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
        "{got}"
    );
    assert_eq!(sim.t.releases, vec![true]);
    assert_eq!(
        shared.affinity.lookup("abc", sim.now),
        Some(sim.t.connects[0].0)
    );
    // Chunked SSE response, byte by byte, re-chunked to the client.
    sim.client_bytewise(&post(CALL, "Mcp-Session-Id: abc\r\n"));
    let sse = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n1a\r\nevent: message\ndata: one\n\n\r\n0\r\n\r\n";
    sim.backend_bytewise(sse);
    let got = sim.take_client();
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(got.contains("Transfer-Encoding: chunked"));
    let body = got
        .split("\r\n\r\n")
        .skip(1)
        .collect::<Vec<_>>()
        .join("\r\n\r\n");
    // Every byte arrives in its own chunk; decode and compare.
    let mut dec = dpuproxy_l7::http::ChunkedDecoder::new();
    let mut out = Vec::new();
    dec.decode(body.as_bytes(), &mut out).unwrap();
    assert!(dec.is_done());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "event: message\ndata: one\n\n"
    );
    assert_eq!(shared.metrics.sse_events.load(Ordering::Relaxed), 1);
    assert_eq!(shared.metrics.sse_active.load(Ordering::Relaxed), 0);
}

#[test]
fn pipelined_requests_are_routed_one_by_one() {
    let shared = shared_with(CoreConfig::default(), 3);
    let mut a = Sim::new(shared.clone());
    let b0 = initialize(&mut a, "s-a");
    let mut b = a.sibling();
    let b1 = initialize(&mut b, "s-b");
    assert_ne!(b0, b1);
    let mut sim = a.sibling();
    let two = format!(
        "{}{}",
        post(CALL, "Mcp-Session-Id: s-a\r\n"),
        post(CALL, "Mcp-Session-Id: s-b\r\n")
    );
    sim.client(&two);
    // Only the first is forwarded until its response is complete.
    assert_eq!(sim.t.connects, vec![(b0, false)]);
    sim.backend(&json_response(None, r#"{"r":1}"#));
    assert_eq!(sim.t.connects, vec![(b0, false), (b1, false)]);
    sim.backend(&json_response(None, r#"{"r":2}"#));
    let got = sim.take_client();
    let first = got.find(r#"{"r":1}"#).expect("first response");
    let second = got.find(r#"{"r":2}"#).expect("second response");
    assert!(first < second);
    assert_eq!(sim.t.releases, vec![true, true]);
    assert_eq!(sim.client_closed(), None);
}

#[test]
fn backend_death_mid_sse_between_events_ends_stream_cleanly() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared.clone());
    initialize(&mut sim, "s1");
    sim.client(
        "GET /mcp HTTP/1.1\r\nHost: p\r\nAccept: text/event-stream\r\nMcp-Session-Id: s1\r\n\r\n",
    );
    sim.backend(sse_head());
    sim.backend(&chunk("data: a\n\n"));
    assert_eq!(shared.metrics.sse_active.load(Ordering::Relaxed), 1);
    sim.backend_eof();
    let got = sim.take_client();
    assert!(got.ends_with("0\r\n\r\n"), "clean end: {got:?}");
    assert_eq!(sim.client_closed(), Some(true));
    assert_eq!(shared.metrics.sse_active.load(Ordering::Relaxed), 0);
    assert_eq!(shared.metrics.errors(ErrorKind::UpstreamReset), 1);
}

#[test]
fn backend_death_mid_event_cuts_client_hard() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared.clone());
    initialize(&mut sim, "s1");
    sim.client(&post(CALL, "Mcp-Session-Id: s1\r\n"));
    sim.backend(sse_head());
    sim.backend(&chunk("data: partial"));
    sim.backend_eof();
    assert!(!sim.client_text().ends_with("0\r\n\r\n"));
    assert_eq!(
        sim.client_closed(),
        Some(false),
        "no flush: truncated event"
    );
}

#[test]
fn backend_404_drops_binding_and_passes_through() {
    let shared = shared_with(CoreConfig::default(), 2);
    let mut sim = Sim::new(shared.clone());
    let b = initialize(&mut sim, "gone");
    sim.client(&post(CALL, "Mcp-Session-Id: gone\r\n"));
    sim.backend("HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found");
    let got = sim.take_client();
    assert_eq!(status_of(&got), 404);
    assert!(got.ends_with("not found"), "backend body passed: {got}");
    assert_eq!(shared.affinity.lookup("gone", sim.now), None);
    // The next request with that id is answered by the proxy: no connect.
    let before = sim.t.connects.len();
    sim.client(&post(CALL, "Mcp-Session-Id: gone\r\n"));
    assert_eq!(sim.t.connects.len(), before);
    assert_eq!(status_of(&sim.take_client()), 404);
    assert_eq!(shared.backends.get(b).requests.load(Ordering::Relaxed), 2);
}

#[test]
fn delete_is_forwarded_then_binding_dropped() {
    let shared = shared_with(CoreConfig::default(), 2);
    let mut sim = Sim::new(shared.clone());
    let b = initialize(&mut sim, "bye");
    sim.client("DELETE /mcp HTTP/1.1\r\nHost: p\r\nMcp-Session-Id: bye\r\n\r\n");
    // The initialize's connection, from the pool.
    assert_eq!(sim.t.connects.last(), Some(&(b, true)));
    assert!(sim.last_request().starts_with("DELETE /mcp HTTP/1.1"));
    assert_eq!(
        shared.affinity.lookup("bye", sim.now),
        Some(b),
        "kept until answered"
    );
    sim.backend("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(status_of(&sim.take_client()), 200);
    assert_eq!(shared.affinity.lookup("bye", sim.now), None);
    assert_eq!(shared.affinity.stats.deleted.load(Ordering::Relaxed), 1);
    sim.client(&post(CALL, "Mcp-Session-Id: bye\r\n"));
    assert_eq!(status_of(&sim.take_client()), 404);
}

#[test]
fn unknown_session_gets_404_without_a_backend() {
    let shared = shared_with(CoreConfig::default(), 3);
    let mut sim = Sim::new(shared.clone());
    sim.client(&post(CALL, "Mcp-Session-Id: nosuchsession\r\n"));
    assert!(sim.t.connects.is_empty());
    let got = sim.take_client();
    assert_eq!(status_of(&got), 404);
    assert!(got.contains("re-initialize"));
    assert_eq!(sim.client_closed(), None, "keep-alive survives a 404");
    assert_eq!(shared.metrics.errors(ErrorKind::UnknownSession), 1);
    for i in 0..3 {
        assert_eq!(shared.backends.get(i).requests.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn invalid_session_id_is_400() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared.clone());
    // A space and high bytes are valid in a field value but outside the
    // visible ASCII a session id may use: the MCP check answers, and the
    // connection stays open.
    for (i, id) in ["a b", "\u{e9}t\u{e9}"].into_iter().enumerate() {
        sim.client(&post(CALL, &format!("Mcp-Session-Id: {id}\r\n")));
        let got = sim.take_client();
        assert_eq!(status_of(&got), 400, "{id:?}: {got}");
        assert!(got.contains("visible ASCII"), "{id:?}: {got}");
        assert_eq!(
            shared.metrics.errors(ErrorKind::BadMcpHeaders),
            i as u64 + 1
        );
        assert_eq!(sim.client_closed(), None, "{id:?}");
    }
    assert!(sim.t.connects.is_empty());
    // DEL is refused earlier, by the HTTP parser: a 400 and a close.
    let mut sim = Sim::new(shared.clone());
    sim.client(&post(CALL, "Mcp-Session-Id: ab\u{7f}c\r\n"));
    assert_eq!(status_of(&sim.take_client()), 400);
    assert_eq!(sim.client_closed(), Some(true));
    assert_eq!(shared.metrics.errors(ErrorKind::BadRequest), 1);
    assert_eq!(shared.metrics.errors(ErrorKind::BadMcpHeaders), 2);
    assert!(sim.t.connects.is_empty());
}

#[test]
fn smuggling_corpus_is_rejected_and_closed() {
    let corpus = [
        "POST /mcp HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /mcp HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        "POST /mcp HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        "POST /mcp HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        "POST /mcp HTTP/1.1\r\nHost: p\r\nContent-Length: -1\r\n\r\n",
        "POST /mcp HTTP/1.1\r\nHost: p\r\nContent-Length: 1_0\r\n\r\n",
        "POST /mcp HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "POST /mcp HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        "POST /mcp HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        "POST /mcp HTTP/1.1\nHost: p\r\nContent-Length: 0\r\n\r\n",
        "POST /mcp HTTP/1.1\r\nHost: p\nContent-Length: 0\r\n\r\n",
        "POST /mcp HTTP/1.1\r\nHost: p\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        "POST /mcp HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST /mcp HTTP/1.1\r\nHost: p\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "GET /mcp HTTP/1.1\r\n\r\n",
        "GET /mcp HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "NOT HTTP AT ALL\r\n\r\n",
    ];
    for input in corpus {
        let shared = shared_with(CoreConfig::default(), 1);
        let mut sim = Sim::new(shared.clone());
        sim.client(input);
        let got = sim.take_client();
        let status = status_of(&got);
        assert!(
            status == 400 || status == 501,
            "input {input:?} got {got:?}"
        );
        assert!(got.contains("Connection: close"), "{input:?}");
        assert_eq!(sim.client_closed(), Some(true), "{input:?}");
        assert!(sim.t.connects.is_empty(), "{input:?} reached a backend");
        // Nothing after the rejection is processed.
        sim.client(&post(INIT, ""));
        assert!(sim.t.connects.is_empty());
    }
}

#[test]
fn header_and_body_limits_at_the_edge() {
    let cfg = CoreConfig {
        max_header_bytes: 512,
        max_headers: 8,
        max_body_bytes: 100,
        ..CoreConfig::default()
    };
    // Head of exactly 512 bytes passes; 513 is 431.
    let base = "POST /mcp HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\nX-Pad: ";
    let pad = 512 - base.len() - 4;
    let exact = format!("{base}{}\r\n\r\n{{}}", "a".repeat(pad));
    let shared = shared_with(cfg.clone(), 1);
    let mut sim = Sim::new(shared.clone());
    sim.client(&exact);
    assert_eq!(sim.t.connects.len(), 1, "head at the limit is accepted");
    let over = format!("{base}{}\r\n\r\n{{}}", "a".repeat(pad + 1));
    let mut sim = Sim::new(shared.clone());
    sim.client(&over);
    assert_eq!(status_of(&sim.take_client()), 431);
    assert!(sim.t.connects.is_empty());
    // Header count.
    let mut many = String::from("GET /mcp HTTP/1.1\r\nHost: p\r\n");
    for i in 0..8 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut sim = Sim::new(shared.clone());
    sim.client(&many);
    assert_eq!(status_of(&sim.take_client()), 431);
    // Body: 100 bytes ok, 101 is 413 (declared), and 413 for chunked too.
    let body100 = format!("{{\"p\":\"{}\"}}", "x".repeat(92));
    assert_eq!(body100.len(), 100);
    let mut sim = Sim::new(shared.clone());
    sim.client(&post(&body100, ""));
    assert_eq!(sim.t.connects.len(), 1);
    let body101 = format!("{{\"p\":\"{}\"}}", "x".repeat(93));
    let mut sim = Sim::new(shared.clone());
    sim.client(&post(&body101, ""));
    assert_eq!(status_of(&sim.take_client()), 413);
    assert_eq!(sim.client_closed(), Some(true));
    let mut sim = Sim::new(shared.clone());
    sim.client(&format!(
        "POST /mcp HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n{}{}0\r\n\r\n",
        chunk(&"x".repeat(60)),
        chunk(&"y".repeat(41))
    ));
    assert_eq!(status_of(&sim.take_client()), 413);
    assert!(sim.t.connects.is_empty());
    assert_eq!(shared.metrics.errors(ErrorKind::BodyTooLarge), 2);
    assert_eq!(shared.metrics.errors(ErrorKind::HeaderTooLarge), 2);
}

#[test]
fn chunked_request_is_reframed_with_content_length() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared);
    sim.client(&format!(
        "POST /mcp HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\n{}{}0\r\n\r\n",
        chunk(&INIT[..10]),
        chunk(&INIT[10..])
    ));
    let req = sim.last_request();
    assert!(
        req.contains(&format!("Content-Length: {}\r\n", INIT.len())),
        "{req}"
    );
    assert!(!req.to_ascii_lowercase().contains("transfer-encoding"));
    assert!(!req.contains("X-Drop"), "Connection-listed field removed");
    assert!(req.ends_with(INIT));
}

#[test]
fn connect_failure_fails_over_and_marks_down() {
    let shared = shared_with(CoreConfig::default(), 3);
    let mut sim = Sim::new(shared.clone());
    sim.t.down.insert(0);
    sim.t.down.insert(1);
    sim.client(&post(INIT, ""));
    // Round-robin from a fresh set starts at 0; each failure marks its
    // backend down and moves on.
    assert_eq!(sim.t.connects, vec![(0, false), (1, false), (2, false)]);
    assert!(!shared.backends.get(0).is_healthy());
    assert!(!shared.backends.get(1).is_healthy());
    assert!(shared.backends.get(2).is_healthy());
    assert_eq!(shared.metrics.errors(ErrorKind::UpstreamConnect), 2);
    sim.backend(&json_response(Some("x"), "{}"));
    assert_eq!(status_of(&sim.take_client()), 200);
    // Every backend down: 503 with Retry-After.
    let mut sim2 = sim.sibling();
    sim2.t.down.insert(2);
    shared.backends.mark_down(2);
    sim2.client(&post(INIT, ""));
    let got = sim2.take_client();
    assert_eq!(status_of(&got), 503);
    assert!(got.contains("Retry-After: 1"));
    // A probe brings one back.
    shared.backends.mark_up(1);
    sim2.t.down.remove(&1);
    sim2.client(&post(INIT, ""));
    assert_eq!(sim2.t.connects.last().unwrap().0, 1);
}

#[test]
fn session_backend_unreachable_is_404_not_a_guess() {
    let shared = shared_with(CoreConfig::default(), 2);
    let mut sim = Sim::new(shared.clone());
    let b = initialize(&mut sim, "s");
    sim.t.down.insert(b);
    sim.client(&post(CALL, "Mcp-Session-Id: s\r\n"));
    assert_eq!(sim.t.connects.iter().filter(|c| c.0 != b).count(), 0);
    assert_eq!(status_of(&sim.take_client()), 404);
    assert_eq!(shared.affinity.lookup("s", sim.now), None);
}

#[test]
fn stateless_requests_least_outstanding_no_binding() {
    let shared = shared_with(CoreConfig::default(), 3);
    // Two requests in flight on backend 0 and 1 from other connections.
    shared.backends.request_started(0);
    shared.backends.request_started(1);
    let mut sim = Sim::new(shared.clone());
    let hdr = "MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: echo\r\n";
    sim.client(&post(CALL, hdr));
    assert_eq!(sim.t.connects, vec![(2, false)]);
    sim.backend(&json_response(Some("ignored"), "{}"));
    assert_eq!(status_of(&sim.take_client()), 200);
    assert_eq!(shared.affinity.len(), 0, "stateless requests bind nothing");
    // Mismatch and stray session id: 400, connection kept.
    sim.client(&post(
        CALL,
        "MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/list\r\n",
    ));
    assert_eq!(status_of(&sim.take_client()), 400);
    sim.client(&post(
        CALL,
        "MCP-Protocol-Version: 2026-07-28\r\nMcp-Session-Id: abc\r\n",
    ));
    assert_eq!(status_of(&sim.take_client()), 400);
    assert_eq!(sim.client_closed(), None);
    assert_eq!(shared.metrics.errors(ErrorKind::BadMcpHeaders), 2);
}

#[test]
fn sse_stream_of_one_hour_in_virtual_time() {
    let cfg = CoreConfig {
        sse_keepalive_interval: Duration::from_secs(15),
        sse_idle_timeout: Duration::from_secs(600),
        session_idle_timeout: Duration::from_secs(300),
        ..CoreConfig::default()
    };
    let shared = shared_with(cfg, 1);
    let mut sim = Sim::new(shared.clone());
    initialize(&mut sim, "long");
    sim.client(
        "GET /mcp HTTP/1.1\r\nHost: p\r\nAccept: text/event-stream\r\nMcp-Session-Id: long\r\n\r\n",
    );
    sim.backend(sse_head());
    let mut sent = 0;
    // One hour: an event every 40 s (so keepalives fill the gaps).
    let start = sim.now;
    while sim.now < start + Duration::from_secs(3600) {
        sim.run_for(Duration::from_secs(40), Duration::from_secs(5));
        sim.backend(&chunk(&format!("data: tick {sent}\n\n")));
        sent += 1;
    }
    assert!(sim.core().is_streaming_sse(), "stream alive after an hour");
    assert_eq!(sim.client_closed(), None);
    let text = sim.client_text();
    assert_eq!(text.matches("data: tick").count(), sent);
    // Keepalives are not events.
    assert_eq!(
        shared.metrics.sse_events.load(Ordering::Relaxed),
        sent as u64
    );
    let keepalives = shared.metrics.sse_keepalives.load(Ordering::Relaxed);
    assert!(
        keepalives >= 2 * (sent as u64 - 1),
        "keepalives {keepalives}"
    );
    // The session stayed bound though it was "idle" far longer than 300 s
    // in request terms: the stream keeps it alive.
    assert_eq!(shared.affinity.lookup("long", sim.now), Some(0));
    // Then 10 minutes of backend silence ends the stream at an event
    // boundary, cleanly.
    sim.run_for(Duration::from_secs(601), Duration::from_secs(30));
    assert!(sim.driver.core(sim.id).is_none(), "connection closed");
    assert_eq!(sim.client_closed(), Some(true));
    assert!(sim.client_text().ends_with("0\r\n\r\n"));
    assert_eq!(shared.metrics.sse_active.load(Ordering::Relaxed), 0);
}

#[test]
fn client_gone_mid_sse_closes_backend_stream() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared.clone());
    initialize(&mut sim, "s");
    sim.client("GET /mcp HTTP/1.1\r\nHost: p\r\nMcp-Session-Id: s\r\n\r\n");
    sim.backend(sse_head());
    sim.backend(&chunk("data: 1\n\n"));
    let aborts = sim.t.aborts;
    sim.client_eof();
    assert_eq!(sim.t.aborts, aborts + 1);
    assert_eq!(sim.client_closed(), Some(false));
    assert!(!sim.t.clients[sim.client].shutdown, "no close_notify");
    assert_eq!(shared.metrics.sse_active.load(Ordering::Relaxed), 0);
    assert_eq!(shared.backends.get(0).outstanding(), 0);
    // Late inputs after the close reach nothing: the slot is gone, nothing
    // more is sent, aborted, connected or closed, and no timer is left.
    let (rx, connects) = (sim.client_rx().len(), sim.t.connects.len());
    sim.backend("data: late\n\n");
    sim.client("GET /mcp HTTP/1.1\r\nHost: p\r\n\r\n");
    sim.advance(Duration::from_secs(9999));
    assert_eq!(sim.client_rx().len(), rx);
    assert_eq!(sim.t.aborts, aborts + 1);
    assert_eq!(sim.t.connects.len(), connects);
    assert_eq!(sim.client_closed(), Some(false));
    assert!(sim.driver.core(sim.id).is_none());
    assert!(sim.driver.is_empty());
    assert_eq!(shared.backends.get(0).outstanding(), 0);
}

#[test]
fn slow_client_backpressure() {
    let cfg = CoreConfig {
        max_downstream_buffer: 1000,
        ..CoreConfig::default()
    };
    let shared = shared_with(cfg, 1);
    let mut sim = Sim::new(shared);
    initialize(&mut sim, "s");
    sim.client("GET /mcp HTTP/1.1\r\nHost: p\r\nMcp-Session-Id: s\r\n\r\n");
    assert!(sim.core().wants_upstream_read());
    // The client takes nothing; the backend sends more than the limit,
    // then more again.
    sim.fake().window = Some(0);
    sim.backend(sse_head());
    sim.backend(&chunk(&format!("data: {}\n\n", "z".repeat(1200))));
    sim.backend(&chunk("data: later\n\n"));
    assert!(
        !sim.core().wants_upstream_read(),
        "buffer over the limit stops reads"
    );
    let unread = sim.t.conns[sim.t.current.unwrap()].to_proxy.len();
    assert!(
        unread > 0,
        "the driver left the backend's bytes in its socket"
    );
    // The client drains: reads resume and everything arrives.
    sim.fake().window = None;
    sim.pump();
    assert!(sim.core().wants_upstream_read());
    assert_eq!(sim.t.conns[sim.t.current.unwrap()].to_proxy.len(), 0);
    assert!(sim.client_text().contains("data: later"));
}

#[test]
fn pooled_connection_closed_before_response_retries_only_idempotent() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared);
    initialize(&mut sim, "s");
    // A GET stream on a pooled connection that the backend closes just as
    // it is reused: sent again on a fresh connection.
    let pooled = sim.t.current.unwrap();
    sim.t.conns[pooled].eof_on_reuse = true;
    sim.client("GET /mcp HTTP/1.1\r\nHost: p\r\nMcp-Session-Id: s\r\n\r\n");
    let n = sim.t.connects.len();
    assert_eq!(sim.t.connects[n - 2..], [(0, true), (0, false)]);
    assert!(
        sim.last_request().starts_with("GET /mcp"),
        "request re-sent"
    );
    sim.backend(&json_response(None, "{}"));
    assert_eq!(status_of(&sim.take_client()), 200);
    // A POST may already have run: never replayed, 502 instead.
    let pooled = sim.t.current.unwrap();
    sim.t.conns[pooled].eof_on_reuse = true;
    let connects = sim.t.connects.len();
    sim.client(&post(CALL, "Mcp-Session-Id: s\r\n"));
    assert_eq!(sim.t.connects.len(), connects + 1, "no second connect");
    assert_eq!(sim.t.connects.last(), Some(&(0, true)));
    assert_eq!(status_of(&sim.take_client()), 502);
    // A second EOF on a fresh connection is a 502, not another retry.
    sim.client("GET /mcp HTTP/1.1\r\nHost: p\r\nMcp-Session-Id: s\r\n\r\n");
    assert_eq!(sim.t.connects.last(), Some(&(0, false)));
    sim.backend_eof();
    assert_eq!(status_of(&sim.take_client()), 502);
}

#[test]
fn deep_pipelining_of_local_answers_is_iterative_and_bounded() {
    let cfg = CoreConfig {
        max_downstream_buffer: 64 * 1024,
        ..CoreConfig::default()
    };
    let shared = shared_with(cfg, 1);
    let mut sim = Sim::new(shared.clone());
    initialize(&mut sim, "s");
    // One request in flight, then 20 000 pipelined requests that the proxy
    // answers itself (unknown session): no recursion, no unbounded output.
    // The client reads nothing yet.
    sim.fake().window = Some(0);
    sim.client(&post(CALL, "Mcp-Session-Id: s\r\n"));
    let one = "GET /mcp HTTP/1.1\r\nHost: a\r\nMcp-Session-Id: nope\r\n\r\n";
    let many = one.repeat(20_000);
    sim.client(&many);
    let unread = sim.fake().to_proxy.len();
    assert!(unread > 0, "input is bounded while a request is in flight");
    // The response arrives; answers pile up only to the downstream limit.
    sim.backend(&json_response(None, "{}"));
    let pending = sim.core().downstream_pending().len();
    assert!(
        pending < 64 * 1024 + 1024,
        "answers stop piling up at the downstream limit: {pending}"
    );
    assert!(!sim.core().wants_downstream_read());
    assert!(
        !sim.fake().to_proxy.is_empty(),
        "the rest waits in the socket"
    );
    // Now the client reads everything.
    sim.fake().window = None;
    sim.pump();
    assert!(sim.fake().to_proxy.is_empty());
    let answered = sim
        .client_rx()
        .windows(12)
        .filter(|w| w == b"HTTP/1.1 404")
        .count();
    assert_eq!(
        answered, 20_000,
        "every pipelined request answered once, in order"
    );
    assert_eq!(shared.metrics.errors(ErrorKind::UnknownSession), 20_000);
}

#[test]
fn delete_that_fails_keeps_the_binding() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared.clone());
    initialize(&mut sim, "k");
    for status in [
        // 405: the server does not let clients end sessions.
        "405 Method Not Allowed",
        "500 Internal Server Error",
        "429 Too Many Requests",
        "401 Unauthorized",
    ] {
        sim.client("DELETE /mcp HTTP/1.1\r\nHost: p\r\nMcp-Session-Id: k\r\n\r\n");
        sim.backend(&format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n"));
        sim.take_client();
        assert_eq!(shared.affinity.lookup("k", sim.now), Some(0), "{status}");
    }
}

#[test]
fn reset_during_close_delimited_body_is_not_a_clean_end() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared);
    sim.client(&post(INIT, ""));
    sim.backend("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"a\":");
    sim.backend_reset();
    assert!(!sim.client_text().ends_with("0\r\n\r\n"));
    assert_eq!(
        sim.client_closed(),
        Some(false),
        "truncation is visible to the client"
    );
}

#[test]
fn methods_are_case_sensitive_and_allow_listed() {
    let shared = shared_with(CoreConfig::default(), 1);
    for m in ["post", "TRACE", "CONNECT", "BREW"] {
        let mut sim = Sim::new(shared.clone());
        sim.client(&format!(
            "{m} /mcp HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n{{}}"
        ));
        assert_eq!(status_of(&sim.take_client()), 501, "{m}");
        assert!(sim.t.connects.is_empty());
    }
}

#[test]
fn timeouts_request_response_idle() {
    let cfg = CoreConfig {
        request_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(10),
        client_idle_timeout: Duration::from_secs(20),
        ..CoreConfig::default()
    };
    let shared = shared_with(cfg, 1);
    // Slowloris: a partial head gets 408 after request_timeout.
    let mut sim = Sim::new(shared.clone());
    sim.client("POST /mcp HTTP/1.1\r\nHost: p\r\n");
    sim.advance(Duration::from_secs(4));
    assert!(sim.client_rx().is_empty());
    sim.advance(Duration::from_secs(1));
    assert_eq!(status_of(&sim.take_client()), 408);
    assert_eq!(sim.client_closed(), Some(true));
    // A silent backend: 504 after response_timeout, upstream aborted.
    let mut sim = Sim::new(shared.clone());
    sim.client(&post(INIT, ""));
    sim.advance(Duration::from_secs(10));
    assert_eq!(status_of(&sim.take_client()), 504);
    assert_eq!(sim.t.aborts, 1);
    assert_eq!(shared.backends.get(0).outstanding(), 0);
    // An idle keep-alive connection closes quietly.
    sim.advance(Duration::from_secs(20));
    assert_eq!(sim.client_closed(), Some(true));
    assert!(sim.client_rx().is_empty());
}

#[test]
fn expect_continue_is_answered_by_the_proxy() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared);
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        INIT.len()
    );
    sim.client(&head);
    assert_eq!(sim.take_client(), "HTTP/1.1 100 Continue\r\n\r\n");
    sim.client(INIT);
    assert!(!sim.last_request().contains("Expect"));
}

#[test]
fn close_delimited_response_is_rechunked_for_keep_alive() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared);
    sim.client(&post(INIT, ""));
    sim.backend("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"a\":");
    sim.backend("1}");
    sim.backend_eof();
    let got = sim.take_client();
    assert!(got.contains("Transfer-Encoding: chunked"), "{got}");
    assert!(got.ends_with("0\r\n\r\n"));
    assert_eq!(sim.t.releases, vec![false]);
    assert_eq!(sim.client_closed(), None);
}

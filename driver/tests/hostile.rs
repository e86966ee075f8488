//! Hostile input found by trying the proxy as an attacker would, each
//! checked through the production driver: session floods, fields a client
//! nominates as hop-by-hop, `_` spellings of routed fields, odd targets and
//! Hosts, overlong backend session ids, chunk sizes over the limit and
//! HTTP/0.9 request lines.

mod common;

use common::*;
use dpuproxy_l7::{CoreConfig, ErrorKind};

#[test]
fn one_client_cannot_take_every_session() {
    let cfg = CoreConfig {
        max_sessions: 20,
        max_sessions_per_client: 3,
        ..CoreConfig::default()
    };
    let shared = shared_with(cfg, 2);
    let mut sim = Sim::new(shared.clone());
    for i in 0..3 {
        initialize(&mut sim, &format!("mine-{i}"));
    }
    let connects = sim.t.connects.len();
    sim.client(&post(INIT, ""));
    let got = sim.take_client();
    assert_eq!(status_of(&got), 429, "{got}");
    assert!(got.contains("Retry-After: 1"), "{got}");
    assert_eq!(
        sim.t.connects.len(),
        connects,
        "a refused initialize reached a backend"
    );
    assert_eq!(shared.metrics.errors(ErrorKind::TooManySessions), 1);
    // Another client is not affected; a DELETE frees a place.
    let mut other = sim.sibling();
    initialize(&mut other, "theirs");
    sim.client("DELETE /mcp HTTP/1.1\r\nHost: p\r\nMcp-Session-Id: mine-0\r\n\r\n");
    sim.backend("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    sim.take_client();
    initialize(&mut sim, "mine-3");
}

#[test]
fn a_flood_of_initializes_evicts_its_own_sessions_not_ones_in_use() {
    let cfg = CoreConfig {
        max_sessions: 20,
        max_sessions_per_client: 1000,
        ..CoreConfig::default()
    };
    let shared = shared_with(cfg, 1);
    let mut user = Sim::new(shared.clone());
    initialize(&mut user, "in-use");
    user.client(&post(CALL, "Mcp-Session-Id: in-use\r\n"));
    user.backend(&json_response(None, "{}"));
    assert_eq!(status_of(&user.take_client()), 200);
    let mut flood = user.sibling();
    for i in 0..200 {
        initialize(&mut flood, &format!("flood-{i}"));
        assert!(shared.affinity.len() <= 20);
    }
    assert_eq!(
        shared.affinity.capacity(),
        20,
        "the configured bound, exactly"
    );
    user.client(&post(CALL, "Mcp-Session-Id: in-use\r\n"));
    user.backend(&json_response(None, "{}"));
    assert_eq!(
        status_of(&user.take_client()),
        200,
        "the session in use survived"
    );
}

#[test]
fn routed_fields_reach_the_backend_whatever_connection_nominates() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared);
    initialize(&mut sim, "s");
    sim.client(&post(
        CALL,
        "Connection: keep-alive, Host, Mcp-Session-Id, Content-Type\r\nMcp-Session-Id: s\r\nTransfer_Encoding: chunked\r\nMcp_Session_Id: other\r\n",
    ));
    let req = sim.last_request();
    assert!(req.contains("Host: proxy\r\n"), "{req}");
    assert!(req.contains("Mcp-Session-Id: s\r\n"), "{req}");
    assert!(req.contains("Content-Type: application/json\r\n"), "{req}");
    assert!(
        !req.contains("Transfer_Encoding") && !req.contains("Mcp_Session_Id"),
        "{req}"
    );
}

#[test]
fn targets_and_hosts_are_normalized_or_refused() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared.clone());
    sim.client(&format!(
        "POST http://evil.example/admin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{INIT}",
        INIT.len()
    ));
    let req = sim.last_request();
    assert!(req.starts_with("POST /admin HTTP/1.1\r\n"), "{req}");
    assert!(
        req.contains("Host: evil.example\r\n") && !req.contains("Host: x"),
        "{req}"
    );
    for bad in [
        "GET /mcp HTTP/1.1\r\nHost: a b@c\r\n\r\n",
        "GET mcp HTTP/1.1\r\nHost: p\r\n\r\n",
        "GET ftp://h/x HTTP/1.1\r\nHost: p\r\n\r\n",
    ] {
        let mut sim = Sim::new(shared.clone());
        sim.client(bad);
        assert_eq!(status_of(&sim.take_client()), 400, "{bad:?}");
        assert_eq!(sim.client_closed(), Some(true));
        assert!(sim.t.connects.is_empty());
    }
}

#[test]
fn backend_session_ids_must_be_sendable_back() {
    let shared = shared_with(CoreConfig::default(), 1);
    for (id, why) in [
        ("x".repeat(300), "too long"),
        ("with\ttab".to_string(), "a tab"),
    ] {
        let mut sim = Sim::new(shared.clone());
        sim.client(&post(INIT, ""));
        sim.backend(&json_response(Some(&id), "{}"));
        let got = sim.take_client();
        assert_eq!(status_of(&got), 502, "{why}: {got}");
        assert!(!got.contains(&id), "{why}: the id was passed on");
    }
    assert_eq!(shared.affinity.len(), 0, "nothing bound");
    assert_eq!(shared.metrics.errors(ErrorKind::UpstreamProtocol), 2);
}

#[test]
fn a_chunk_over_the_body_limit_is_refused_at_once() {
    let shared = shared_with(CoreConfig::default(), 1);
    let mut sim = Sim::new(shared);
    sim.client(
        "POST /mcp HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\nab",
    );
    assert_eq!(status_of(&sim.take_client()), 413);
    assert_eq!(sim.client_closed(), Some(true));
    assert!(sim.t.connects.is_empty());
}

#[test]
fn an_http09_request_line_gets_400_without_waiting() {
    let shared = shared_with(CoreConfig::default(), 1);
    for line in ["GET /\r\n", "GET / HTTP/2.0\r\n", "GET  / HTTP/1.1\r\n"] {
        let mut sim = Sim::new(shared.clone());
        sim.client(line);
        let got = sim.take_client();
        assert_eq!(status_of(&got), 400, "{line:?}: {got}");
        assert_eq!(sim.client_closed(), Some(true));
    }
    // A request line that is fine waits for the rest of its head.
    let mut sim = Sim::new(shared);
    sim.client("GET / HTTP/1.1\r\nHost: p\r\n");
    assert!(sim.client_rx().is_empty());
}

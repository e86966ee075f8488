//! Many proxies, no shared store: sealed session ids, backend reloads and
//! the graceful drain, through the production driver over the fake
//! transport.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::*;
use dpuproxy_driver::Phase;
use dpuproxy_l7::seal::Sealer;
use dpuproxy_l7::{BackendSpec, CoreConfig, ErrorKind, Shared};

const KEY_A: &[u8] = b"fleet secret number one, 32 byte";
const KEY_B: &[u8] = b"fleet secret number two, 32 byte";

fn spec(name: &str, i: u8) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        ..BackendSpec::from_addr(format!("10.0.0.{i}:9000"))
    }
}

/// A proxy of the fleet: its own backend list (in its own order) and the
/// fleet's key.
fn proxy(names: &[&str], keys: &[&[u8]]) -> Arc<Shared> {
    let specs = names.iter().map(|n| {
        let i = n.trim_start_matches('b').parse().unwrap();
        spec(n, i)
    });
    let secrets: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    Arc::new(Shared::new(CoreConfig::default(), specs).with_sealer(Sealer::new(&secrets).unwrap()))
}

fn session_header(resp: &str) -> String {
    resp.lines()
        .find_map(|l| l.strip_prefix("mcp-session-id: "))
        .expect("a session id in the response")
        .to_string()
}

/// Initialize through `sim`; the backend mints `inner`. Returns the id the
/// client got and the backend's name.
fn sealed_initialize(sim: &mut Sim, inner: &str) -> (String, String) {
    sim.client(&post(INIT, ""));
    let (b, _) = *sim.t.connects.last().unwrap();
    sim.backend(&json_response(Some(inner), "{}"));
    let resp = sim.take_client();
    assert_eq!(status_of(&resp), 200, "{resp}");
    let id = session_header(&resp);
    assert!(id.starts_with("s1."), "{id}");
    assert!(!resp.contains(inner), "the backend's own id leaked: {resp}");
    (id, sim.shared.backends.get(b).name.clone())
}

#[test]
fn any_proxy_with_the_key_routes_any_session() {
    let a = proxy(&["b1", "b2", "b3"], &[KEY_A]);
    // Another proxy lists the backends in another order: names route.
    let b = proxy(&["b3", "b1", "b2"], &[KEY_A]);
    let mut on_a = Sim::new(a.clone());
    let (id, name) = sealed_initialize(&mut on_a, "inner-7");
    let mut on_b = Sim::new(b.clone());
    on_b.client(&post(CALL, &format!("Mcp-Session-Id: {id}\r\n")));
    let (idx, _) = *on_b.t.connects.last().expect("routed to a backend");
    assert_eq!(b.backends.get(idx).name, name);
    let req = on_b.last_request();
    assert!(req.contains("Mcp-Session-Id: inner-7\r\n"), "{req}");
    assert!(
        !req.contains("s1."),
        "the sealed id reached the backend: {req}"
    );
    // The backend echoes its own id; the client keeps seeing the sealed one.
    on_b.backend(&json_response(Some("inner-7"), "{}"));
    let resp = on_b.take_client();
    assert_eq!(session_header(&resp), id);
    // DELETE through a third proxy, then 404 from the backend passes on.
    let mut on_c = Sim::new(proxy(&["b2", "b3", "b1"], &[KEY_A]));
    on_c.client(&format!(
        "DELETE /mcp HTTP/1.1\r\nHost: p\r\nMcp-Session-Id: {id}\r\n\r\n"
    ));
    assert!(on_c.last_request().starts_with("DELETE /mcp"));
    on_c.backend("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(status_of(&on_c.take_client()), 200);
    on_a.client(&post(CALL, &format!("Mcp-Session-Id: {id}\r\n")));
    on_a.backend("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(status_of(&on_a.take_client()), 404);
    assert_eq!(
        a.sealer
            .as_ref()
            .unwrap()
            .stats
            .sealed
            .load(Ordering::Relaxed),
        1
    );
}

#[test]
fn ids_that_do_not_open_get_404_and_touch_no_backend() {
    let a = proxy(&["b1", "b2"], &[KEY_A]);
    let mut sim = Sim::new(a.clone());
    let (id, _) = sealed_initialize(&mut sim, "inner-1");
    let connects = sim.t.connects.len();
    let mut tampered = id.clone().into_bytes();
    let last = tampered.len() - 4;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let foreign = {
        let mut f = Sim::new(proxy(&["b1", "b2"], &[KEY_B]));
        sealed_initialize(&mut f, "inner-2").0
    };
    for bad in [
        tampered.as_str(),
        &id[..id.len() - 6],
        foreign.as_str(),
        "inner-1",
    ] {
        sim.client(&post(CALL, &format!("Mcp-Session-Id: {bad}\r\n")));
        let resp = sim.take_client();
        assert_eq!(status_of(&resp), 404, "{bad}: {resp}");
        assert_eq!(sim.client_closed(), None, "keep-alive survives");
    }
    assert_eq!(sim.t.connects.len(), connects, "no backend was touched");
    let st = &a.sealer.as_ref().unwrap().stats;
    let refused =
        st.refused_key.load(Ordering::Relaxed) + st.refused_malformed.load(Ordering::Relaxed);
    assert_eq!(refused, 4);
    assert_eq!(a.metrics.errors(ErrorKind::UnknownSession), 4);
}

#[test]
fn rotation_keeps_sessions_until_the_old_key_is_rotated_out() {
    let a = proxy(&["b1"], &[KEY_A]);
    let mut sim = Sim::new(a.clone());
    let (old, _) = sealed_initialize(&mut sim, "inner-1");
    let sealer = a.sealer.as_ref().unwrap();
    sealer.rotate(&[KEY_B.to_vec(), KEY_A.to_vec()]).unwrap();
    sim.client(&post(CALL, &format!("Mcp-Session-Id: {old}\r\n")));
    sim.backend(&json_response(None, "{}"));
    assert_eq!(
        status_of(&sim.take_client()),
        200,
        "sealed under the previous key"
    );
    assert_eq!(sealer.stats.opened_previous.load(Ordering::Relaxed), 1);
    sealer
        .rotate(&[b"fleet secret number three, 32 by".to_vec(), KEY_B.to_vec()])
        .unwrap();
    let connects = sim.t.connects.len();
    sim.client(&post(CALL, &format!("Mcp-Session-Id: {old}\r\n")));
    assert_eq!(status_of(&sim.take_client()), 404, "rotated out");
    assert_eq!(sim.t.connects.len(), connects);
}

#[test]
fn reload_removes_and_drains_backends() {
    let a = proxy(&["b1", "b2"], &[KEY_A]);
    let mut s1 = Sim::new(a.clone());
    let (id1, n1) = sealed_initialize(&mut s1, "inner-1");
    let mut s2 = s1.sibling();
    let (id2, n2) = sealed_initialize(&mut s2, "inner-2");
    assert_ne!(n1, n2, "round-robin");
    // n1 drains, n2 goes, b3 comes.
    let mut next = vec![spec("b3", 3)];
    next.push(BackendSpec {
        drain: true,
        ..spec(&n1, n1[1..].parse().unwrap())
    });
    a.backends.apply(&next).unwrap();
    // The draining backend keeps its session ...
    s1.client(&post(CALL, &format!("Mcp-Session-Id: {id1}\r\n")));
    let (b, _) = *s1.t.connects.last().unwrap();
    assert_eq!(a.backends.get(b).name, n1);
    s1.backend(&json_response(None, "{}"));
    assert_eq!(status_of(&s1.take_client()), 200);
    // ... the removed one's session ends with 404, no backend touched ...
    let connects = s2.t.connects.len();
    s2.client(&post(CALL, &format!("Mcp-Session-Id: {id2}\r\n")));
    assert_eq!(status_of(&s2.take_client()), 404);
    assert_eq!(s2.t.connects.len(), connects);
    // ... and new sessions go to the active one only.
    for _ in 0..3 {
        let mut s = s1.sibling();
        let (_, name) = sealed_initialize(&mut s, "inner-n");
        assert_eq!(name, "b3");
    }
}

#[test]
fn drain_answers_in_flight_requests_and_ends_streams_at_event_boundaries() {
    let shared = shared_with(CoreConfig::default(), 1);
    // An idle keep-alive connection closes at once.
    let mut idle = Sim::new(shared.clone());
    initialize(&mut idle, "s");
    // A request in flight is answered, with Connection: close, then closed.
    let mut busy = idle.sibling();
    busy.client(&post(CALL, "Mcp-Session-Id: s\r\n"));
    // A GET event stream mid-event ends after that event.
    let mut get = idle.sibling();
    get.client(
        "GET /mcp HTTP/1.1\r\nHost: p\r\nAccept: text/event-stream\r\nMcp-Session-Id: s\r\n\r\n",
    );
    get.backend(sse_head());
    get.backend(&chunk("data: one\n\n"));
    get.backend(&chunk("data: tw"));
    // A POST whose answer comes as SSE is an answer in flight: it runs on.
    let mut answer = idle.sibling();
    answer.client(&post(CALL, "Mcp-Session-Id: s\r\n"));
    answer.backend(sse_head());
    answer.backend(&chunk("data: progress 1\n\n"));
    for s in [&mut idle, &mut busy, &mut get, &mut answer] {
        s.driver.drain(&mut s.t, s.now);
        s.pump();
    }
    assert_eq!(idle.client_closed(), Some(true));
    assert!(
        !idle.driver.admit(&mut idle.t, idle.now),
        "no new client while draining"
    );
    assert_eq!(busy.client_closed(), None);
    busy.backend(&json_response(None, r#"{"answered":1}"#));
    let got = busy.take_client();
    assert!(got.contains("Connection: close"), "{got}");
    assert!(got.ends_with(r#"{"answered":1}"#), "{got}");
    assert_eq!(busy.client_closed(), Some(true));
    assert!(matches!(get.driver.phase(get.id), Some(Phase::Open)));
    get.backend(&chunk("o\n\n"));
    assert_eq!(sse_events(&get.client_text()), "data: one\n\ndata: two\n\n");
    assert_eq!(get.client_closed(), Some(true));
    // The answer goes on until the drain's time is nearly up, then ends at
    // its next boundary too.
    answer.backend(&chunk("data: progress 2\n\n"));
    assert_eq!(answer.client_closed(), None);
    answer.backend(&chunk("data: prog"));
    answer.driver.drain_streams(answer.now);
    answer.pump();
    assert_eq!(answer.client_closed(), None, "mid-event");
    answer.backend(&chunk("ress 3\n\n"));
    assert_eq!(
        sse_events(&answer.client_text()),
        "data: progress 1\n\ndata: progress 2\n\ndata: progress 3\n\n"
    );
    assert_eq!(answer.client_closed(), Some(true));
    assert_eq!(shared.metrics.sse_active.load(Ordering::Relaxed), 0);
    assert_eq!(shared.backends.get(0).outstanding(), 0);
}

/// The events of a whole, cleanly ended, re-chunked SSE response.
fn sse_events(got: &str) -> String {
    let body = got.split_once("\r\n\r\n").unwrap().1;
    let mut dec = dpuproxy_l7::http::ChunkedDecoder::new();
    let mut events = Vec::new();
    dec.decode(body.as_bytes(), &mut events).unwrap();
    assert!(dec.is_done(), "clean end (terminating chunk): {got}");
    String::from_utf8(events).unwrap()
}

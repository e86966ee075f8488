//! Criterion micro-benchmarks of the core's hot paths:
//! `cargo bench -p dpuproxy-l7 --bench hot_paths`.
//! Figures only; nothing here is asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Kind, TestKey, jwks};
use criterion::{Criterion, criterion_group, criterion_main};
use dpuproxy_l7::auth::{AuthConfig, Authenticator, KeyEntry};
use dpuproxy_l7::{Action, AffinityTable, Connection, CoreConfig, Shared, http};
use jsonwebtoken::Algorithm;

const NOW: u64 = 1_800_000_000;

fn jwt(c: &mut Criterion) {
    let key = TestKey::new(Kind::Rsa);
    let keys = KeyEntry::from_jwks(&jwks(&[key.jwk("k1", Some("RS256"))]), "bench").unwrap();
    let auth = Authenticator::new(
        AuthConfig {
            issuers: vec!["https://issuer".into()],
            audiences: vec!["mcp-proxy".into()],
            ..AuthConfig::default()
        },
        keys,
    );
    let token = key.sign(
        Algorithm::RS256,
        Some("k1"),
        &serde_json::json!({"iss":"https://issuer","aud":"mcp-proxy","sub":"alice","exp":NOW+3600,"scope":"mcp:read"}),
    );
    let header = format!("Bearer {token}");
    c.bench_function("jwt_rs256_cold", |b| {
        b.iter(|| auth.verify_cold(black_box(&token), NOW).unwrap())
    });
    auth.authorize(Some(header.as_bytes()), NOW).unwrap();
    c.bench_function("jwt_rs256_cached", |b| {
        b.iter(|| {
            auth.authorize(Some(black_box(header.as_bytes())), NOW)
                .unwrap()
        })
    });
    // A keep-alive connection presenting the token it presented last.
    let mut memo = dpuproxy_l7::auth::AuthMemo::default();
    c.bench_function("jwt_rs256_connection_memo", |b| {
        b.iter(|| {
            auth.authorize_memo(&mut memo, Some(black_box(header.as_bytes())), NOW)
                .unwrap()
        })
    });
}

fn head_parse(c: &mut Criterion) {
    let req = b"POST /mcp HTTP/1.1\r\nHost: proxy.example:8443\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: 3f2a9c0d5b7e4e1c8a6b2d4f0e9c7a15\r\nMCP-Protocol-Version: 2025-11-25\r\nUser-Agent: python-httpx/2\r\nContent-Length: 92\r\n\r\n";
    c.bench_function("http_request_head_parse", |b| {
        b.iter(|| http::parse_request_head(black_box(req), 16384, 64).unwrap())
    });
    // As the bench's load sends it: a ~600-byte RS256 bearer token.
    let with_token = format!(
        "POST /mcp HTTP/1.1\r\nHost: proxy.example:8443\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 92\r\nAuthorization: Bearer {}.{}.{}\r\nMcp-Session-Id: 3f2a9c0d5b7e4e1c8a6b2d4f0e9c7a15\r\nMCP-Protocol-Version: 2025-11-25\r\n\r\n",
        "e".repeat(36),
        "p".repeat(180),
        "s".repeat(342)
    );
    c.bench_function("http_request_head_parse_with_token", |b| {
        b.iter(|| http::parse_request_head(black_box(with_token.as_bytes()), 16384, 64).unwrap())
    });
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: 3f2a9c0d5b7e4e1c8a6b2d4f0e9c7a15\r\nDate: Sat, 05 Dec 2026 18:00:00 GMT\r\nContent-Length: 120\r\n\r\n";
    c.bench_function("http_response_head_parse", |b| {
        b.iter(|| http::parse_response_head(black_box(resp), "POST", 16384, 64).unwrap())
    });
}

fn affinity(c: &mut Criterion) {
    let t = AffinityTable::new(100_000, 10_000, Duration::from_secs(1800));
    let now = Instant::now();
    let ids: Vec<String> = (0..100_000).map(|i| format!("{i:032x}")).collect();
    for (i, id) in ids.iter().enumerate() {
        t.bind(id, i % 3, now);
    }
    let mut i = 0;
    c.bench_function("affinity_lookup_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            t.lookup(black_box(&ids[i]), now)
        })
    });
}

fn sse_relay(c: &mut Criterion) {
    let shared = Arc::new(Shared::new(
        CoreConfig::default(),
        vec!["10.0.0.1:9001".to_string()],
    ));
    let now = Instant::now();
    let mut conn = Connection::new(shared, "192.0.2.1", now);
    conn.handle_downstream_data(
        now,
        b"GET /mcp HTTP/1.1\r\nHost: p\r\nAccept: text/event-stream\r\n\r\n",
    );
    while let Some(a) = conn.poll_action() {
        if let Action::ConnectUpstream { .. } = a {
            conn.handle_upstream_connected(now, false);
        }
    }
    let n = conn.upstream_pending().len();
    conn.upstream_consumed(n);
    conn.handle_upstream_data(
        now,
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    let event = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1,\"total\":3}}\r\n\r\n";
    let chunk = [format!("{:x}\r\n", event.len()).as_bytes(), event, b"\r\n"].concat();
    c.bench_function("sse_event_relay", |b| {
        b.iter(|| {
            conn.handle_upstream_data(now, black_box(&chunk));
            let n = conn.downstream_pending().len();
            conn.downstream_consumed(now, n);
        })
    });
}

fn body_sniff(c: &mut Criterion) {
    let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}}"#;
    c.bench_function("mcp_jsonrpc_calls", |b| {
        b.iter(|| dpuproxy_l7::mcp::jsonrpc_calls(black_box(body)).unwrap())
    });
}

criterion_group!(benches, jwt, head_parse, affinity, sse_relay, body_sniff);
criterion_main!(benches);

//! The resource server inside the core: every verdict with its exact HTTP
//! status, and proof that a rejected request never reaches a backend.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Kind, TestKey, b64, jwks};
use dpuproxy_l7::auth::{AuthConfig, AuthMemo, Authenticator, KeyEntry, Rejection, ScopeRule};
use dpuproxy_l7::{Action, Connection, CoreConfig, Shared};
use jsonwebtoken::Algorithm;
use serde_json::json;

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://issuer.test";
const AUD: &str = "mcp-proxy";

struct Keys {
    rsa: TestKey,
    p256: TestKey,
    p384: TestKey,
    ed: TestKey,
}

fn keys() -> &'static Keys {
    static K: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    K.get_or_init(|| Keys {
        rsa: TestKey::new(Kind::Rsa),
        p256: TestKey::new(Kind::P256),
        p384: TestKey::new(Kind::P384),
        ed: TestKey::new(Kind::Ed25519),
    })
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": NOW + 600, "iat": NOW - 5, "scope": "mcp:read mcp:echo"})
}

/// A token signed by the test RSA key as JWK `rsa1` with RS256.
fn rs256(claims: &serde_json::Value) -> String {
    keys().rsa.sign(Algorithm::RS256, Some("rsa1"), claims)
}

fn key_set() -> Vec<KeyEntry> {
    let k = keys();
    let mut set = KeyEntry::from_jwks(
        &jwks(&[
            k.rsa.jwk("rsa1", None),
            k.p256.jwk("ec1", Some("ES256")),
            k.ed.jwk("ed1", None),
        ]),
        "test.jwks",
    )
    .unwrap();
    set.push(KeyEntry::from_pem(&k.p384.public_pem(), "p384.pem", None, None).unwrap());
    set
}

fn auth_config() -> AuthConfig {
    AuthConfig {
        issuers: vec![ISS.into()],
        audiences: vec![AUD.into()],
        scope_rules: vec![ScopeRule::parse("tools/call:echo=mcp:echo").unwrap()],
        authorization_servers: vec!["https://auth.test".into()],
        subject_header: true,
        ..AuthConfig::default()
    }
}

fn shared() -> (Arc<Shared>, Instant) {
    shared_with(auth_config(), key_set())
}

/// Proxy state with auth on, its wall clock anchored at `NOW`.
fn shared_with(cfg: AuthConfig, keys: Vec<KeyEntry>) -> (Arc<Shared>, Instant) {
    let t0 = Instant::now();
    let s = Shared::new(CoreConfig::default(), vec!["10.0.0.1:9001".to_string()])
        .with_auth(Authenticator::new(cfg, keys));
    s.wall.set(t0, NOW * 1000);
    (Arc::new(s), t0)
}

struct Outcome {
    status: u16,
    text: String,
    upstream: Vec<u8>,
    connected: bool,
}

fn send(shared: &Arc<Shared>, t0: Instant, request: &str) -> Outcome {
    let mut c = Connection::new(shared.clone(), "192.0.2.1", t0);
    c.handle_downstream_data(t0, request.as_bytes());
    let mut connected = false;
    while let Some(a) = c.poll_action() {
        if let Action::ConnectUpstream { .. } = a {
            connected = true;
            c.handle_upstream_connected(t0, false);
        }
    }
    let upstream = c.upstream_pending().to_vec();
    let text = String::from_utf8_lossy(c.downstream_pending()).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Outcome {
        status,
        text,
        upstream,
        connected,
    }
}

fn call(token: Option<&str>, tool: &str) -> String {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
    );
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /mcp HTTP/1.1\r\nHost: proxy.test:8443\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn expect_reject(token: Option<&str>, status: u16, reason: Rejection) -> Outcome {
    let (sh, t0) = shared();
    let o = send(&sh, t0, &call(token, "whoami"));
    assert_eq!(o.status, status, "token {token:?}: {}", o.text);
    assert!(!o.connected, "a rejected request must not reach a backend");
    assert!(o.upstream.is_empty());
    let auth = sh.auth.as_ref().unwrap();
    assert_eq!(
        auth.stats.rejections(reason),
        1,
        "reason {reason:?}: {}",
        o.text
    );
    assert!(
        o.text.contains(
            "resource_metadata=\"https://proxy.test:8443/.well-known/oauth-protected-resource\""
        ),
        "{}",
        o.text
    );
    assert_eq!(sh.backends.get(0).requests.load(Ordering::Relaxed), 0);
    o
}

#[test]
fn valid_token_for_each_algorithm() {
    let k = keys();
    let cases: Vec<(&TestKey, Algorithm, Option<&str>)> = vec![
        (&k.rsa, Algorithm::RS256, Some("rsa1")),
        (&k.rsa, Algorithm::RS384, Some("rsa1")),
        (&k.rsa, Algorithm::RS512, Some("rsa1")),
        (&k.rsa, Algorithm::PS256, Some("rsa1")),
        (&k.p256, Algorithm::ES256, Some("ec1")),
        (&k.p384, Algorithm::ES384, None),
        (&k.ed, Algorithm::EdDSA, Some("ed1")),
    ];
    for (key, alg, kid) in cases {
        let (sh, t0) = shared();
        let token = key.sign(alg, kid, &claims());
        let o = send(&sh, t0, &call(Some(&token), "whoami"));
        assert!(o.connected, "{alg:?} must be accepted: {}", o.text);
        let fwd = String::from_utf8_lossy(&o.upstream);
        assert!(
            !fwd.contains("Authorization"),
            "token not forwarded by default"
        );
        assert!(fwd.contains("X-Authenticated-Subject: alice\r\n"), "{fwd}");
    }
}

#[test]
fn time_and_identity_claims() {
    let mut c = claims();
    c["exp"] = json!(NOW - 31);
    expect_reject(Some(&rs256(&c)), 401, Rejection::Expired);
    // Within leeway (30 s) still fine.
    let mut c = claims();
    c["exp"] = json!(NOW - 29);
    let (sh, t0) = shared();
    assert!(send(&sh, t0, &call(Some(&rs256(&c)), "x")).connected);
    let mut c = claims();
    c["nbf"] = json!(NOW + 31);
    expect_reject(Some(&rs256(&c)), 401, Rejection::NotYetValid);
    let mut c = claims();
    c["iat"] = json!(NOW + 3600);
    expect_reject(Some(&rs256(&c)), 401, Rejection::IssuedInFuture);
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    expect_reject(Some(&rs256(&c)), 401, Rejection::WrongIssuer);
    let mut c = claims();
    c["aud"] = json!(["other", "another"]);
    expect_reject(Some(&rs256(&c)), 401, Rejection::WrongAudience);
    // An audience array containing ours is fine.
    let mut c = claims();
    c["aud"] = json!(["other", AUD]);
    let (sh, t0) = shared();
    assert!(send(&sh, t0, &call(Some(&rs256(&c)), "x")).connected);
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    expect_reject(Some(&rs256(&c)), 401, Rejection::Malformed);
}

#[test]
fn tampered_and_truncated() {
    let token = rs256(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut evil = claims();
    evil["sub"] = json!("mallory");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(evil.to_string().as_bytes()),
        parts[2]
    );
    let o = expect_reject(Some(&tampered), 401, Rejection::BadSignature);
    assert!(o.text.contains("error=\"invalid_token\""));
    let truncated = &token[..token.len() - 12];
    expect_reject(Some(truncated), 401, Rejection::BadSignature);
}

#[test]
fn alg_none_and_hs256_with_the_rsa_public_key() {
    let k = keys();
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims().to_string().as_bytes())
    );
    expect_reject(Some(&none), 401, Rejection::Malformed);
    // The classic confusion: HMAC keyed with the RSA public key bytes.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("rsa1".into()),
            ..jsonwebtoken::Header::new(Algorithm::HS256)
        },
        &claims(),
        &jsonwebtoken::EncodingKey::from_secret(&k.rsa.public_pem()),
    )
    .unwrap();
    expect_reject(Some(&hs), 401, Rejection::AlgNotAllowed);
    // RS256 presented for the ES256-only JWK.
    let wrong = k.rsa.sign(Algorithm::RS256, Some("ec1"), &claims());
    expect_reject(Some(&wrong), 401, Rejection::AlgNotAllowed);
}

#[test]
fn hs256_only_with_an_explicit_secret() {
    let secret = b"a shared secret of enough length!";
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap();
    let (sh, t0) = shared();
    assert_eq!(send(&sh, t0, &call(Some(&token), "x")).status, 401);
    let (s, t0) = shared_with(
        auth_config(),
        vec![KeyEntry::hs256_secret(secret, "secret-file")],
    );
    assert!(send(&s, t0, &call(Some(&token), "x")).connected);
    // A symmetric key in a JWKS is refused outright.
    let oct = jwks(&[json!({"kty":"oct","k":b64(secret),"kid":"h"})]);
    assert!(KeyEntry::from_jwks(&oct, "x.jwks").is_err());
}

#[test]
fn unknown_kid_garbage_empty_huge_non_ascii() {
    let k = keys();
    let unknown = k.rsa.sign(Algorithm::RS256, Some("nope"), &claims());
    let (sh, t0) = shared();
    let o = send(&sh, t0, &call(Some(&unknown), "x"));
    assert_eq!(o.status, 401);
    let auth = sh.auth.as_ref().unwrap();
    assert_eq!(auth.stats.rejections(Rejection::UnknownKid), 1);
    assert!(
        auth.take_unknown_kid_signal(),
        "loader is told to re-read keys"
    );
    assert!(!auth.take_unknown_kid_signal(), "signal is consumed");

    expect_reject(None, 401, Rejection::Missing);
    let o = expect_reject(Some("garbage"), 401, Rejection::Malformed);
    assert!(o.text.contains("error=\"invalid_token\""));
    expect_reject(Some("a.b.c"), 401, Rejection::Malformed);
    expect_reject(Some(""), 401, Rejection::Malformed);
    expect_reject(Some("t\u{f6}k\u{e9}n.x.y"), 401, Rejection::Malformed);
    // Above the token limit (8 KiB) but within the head limit: 401.
    expect_reject(Some(&"a".repeat(9000)), 401, Rejection::TooLarge);
    // 70 KB: the whole head is over its limit first, 431, still no backend.
    let (sh, t0) = shared();
    let o = send(&sh, t0, &call(Some(&"a".repeat(70_000)), "x"));
    assert_eq!(o.status, 431);
    assert!(!o.connected);
    // Missing token: the challenge has no error attribute.
    let (sh, t0) = shared();
    let o = send(&sh, t0, &call(None, "x"));
    assert!(o.text.contains(
        "WWW-Authenticate: Bearer resource_metadata=\"https://proxy.test:8443/.well-known/oauth-protected-resource\"\r\n"
    ));
    // Two Authorization headers: malformed.
    let req = call(Some("x.y.z"), "x").replace(
        "Authorization:",
        "Authorization: Bearer a.b.c\r\nAuthorization:",
    );
    let o = send(&sh, t0, &req);
    assert_eq!(o.status, 400, "{}", o.text);
    assert!(o.text.contains("error=\"invalid_request\""));
    // Another scheme is no token at all: the plain challenge.
    let req = call(None, "x").replace(
        "Content-Type",
        "Authorization: Basic dXNlcjpwYXNz\r\nContent-Type",
    );
    let o = send(&sh, t0, &req);
    assert_eq!(o.status, 401);
    assert!(!o.text.contains("error="), "{}", o.text);
}

#[test]
fn scopes_per_method_and_name() {
    let mut c = claims();
    c["scope"] = json!("mcp:read");
    let token = rs256(&c);
    let (sh, t0) = shared();
    let o = send(&sh, t0, &call(Some(&token), "echo"));
    assert_eq!(o.status, 403, "{}", o.text);
    assert!(
        o.text
            .contains("error=\"insufficient_scope\", scope=\"mcp:echo\"")
    );
    assert!(!o.connected);
    assert!(send(&sh, t0, &call(Some(&token), "whoami")).connected);
    // A batch cannot smuggle a guarded call behind an allowed one.
    let body = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}]"#;
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(send(&sh, t0, &req).status, 403);
    // Duplicate keys: serde and the backend's parser could disagree on which
    // one wins, so such a body is refused when scope rules apply.
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","name":"echo"}}"#;
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let o = send(&sh, t0, &req);
    assert_eq!(o.status, 400, "{}", o.text);
    assert!(!o.connected);
    // 2026-07-28 requests are matched on Mcp-Method / Mcp-Name.
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {token}\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: echo\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(send(&sh, t0, &req).status, 403);
    // scp as an array works too.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["mcp:echo"]);
    let token = rs256(&c);
    assert!(send(&sh, t0, &call(Some(&token), "echo")).connected);
    assert!(ScopeRule::parse("=x").is_err());
    assert!(ScopeRule::parse("tools/call:=x").is_err());
    assert!(ScopeRule::parse("tools/call=").is_err());
}

#[test]
fn metadata_served_without_a_token() {
    let (sh, t0) = shared();
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let o = send(
            &sh,
            t0,
            &format!("GET {path} HTTP/1.1\r\nHost: proxy.test:8443\r\n\r\n"),
        );
        assert_eq!(o.status, 200, "{}", o.text);
        let body = o.text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["resource"], "https://proxy.test:8443/mcp");
        assert_eq!(v["authorization_servers"], json!(["https://auth.test"]));
        assert_eq!(v["scopes_supported"], json!(["mcp:echo"]));
        assert!(!o.connected);
    }
}

#[test]
fn cache_hits_skip_the_signature_and_expire_with_the_token() {
    let mut c = claims();
    c["exp"] = json!(NOW + 60);
    let token = rs256(&c);
    let (sh, t0) = shared();
    let auth = sh.auth.as_ref().unwrap();
    for _ in 0..5 {
        assert!(send(&sh, t0, &call(Some(&token), "x")).connected);
    }
    assert_eq!(auth.stats.cache_misses.load(Ordering::Relaxed), 1);
    assert_eq!(auth.stats.cache_hits.load(Ordering::Relaxed), 4);
    // 60 s + 30 s leeway later the cached entry is gone and the token fails.
    let later = t0 + Duration::from_secs(91);
    let o = send(&sh, later, &call(Some(&token), "x"));
    assert_eq!(o.status, 401);
    assert_eq!(auth.stats.rejections(Rejection::Expired), 1);
}

#[test]
fn forward_token_when_asked() {
    let cfg = AuthConfig {
        forward_token: true,
        ..auth_config()
    };
    let (s, t0) = shared_with(cfg, key_set());
    let token = rs256(&claims());
    let req = call(Some(&token), "x").replace(
        "Content-Type",
        "X-Authenticated-Subject: mallory\r\nContent-Type",
    );
    let o = send(&s, t0, &req);
    let fwd = String::from_utf8_lossy(&o.upstream);
    assert!(fwd.contains(&format!("Authorization: Bearer {token}")));
    assert!(
        !fwd.contains("mallory"),
        "client-sent subject is stripped: {fwd}"
    );
    assert!(fwd.contains("X-Authenticated-Subject: alice"));
}

#[test]
fn jwks_rotation() {
    let new_rsa = TestKey::new(Kind::Rsa);
    let (sh, t0) = shared();
    let auth = sh.auth.as_ref().unwrap();
    let old = rs256(&claims());
    let new = new_rsa.sign(Algorithm::RS256, Some("rsa2"), &claims());
    assert!(send(&sh, t0, &call(Some(&old), "x")).connected);
    assert_eq!(send(&sh, t0, &call(Some(&new), "x")).status, 401);
    // Rotate: rsa2 in, rsa1 out. The cached verification of rsa1 dies too.
    let rotated =
        KeyEntry::from_jwks(&jwks(&[new_rsa.jwk("rsa2", Some("RS256"))]), "test.jwks").unwrap();
    auth.replace_keys(rotated);
    assert_eq!(auth.key_count(), 1);
    assert!(send(&sh, t0, &call(Some(&new), "x")).connected);
    let o = send(&sh, t0, &call(Some(&old), "x"));
    assert_eq!(o.status, 401);
    assert_eq!(auth.stats.rejections(Rejection::UnknownKid), 2);
    // The alg on the JWK restricts it.
    let ps = new_rsa.sign(Algorithm::PS256, Some("rsa2"), &claims());
    assert_eq!(send(&sh, t0, &call(Some(&ps), "x")).status, 401);
}

#[test]
fn auth_off_passes_authorization_through() {
    let t0 = Instant::now();
    let s = Arc::new(Shared::new(
        CoreConfig::default(),
        vec!["10.0.0.1:9001".to_string()],
    ));
    let o = send(&s, t0, &call(Some("opaque-backend-token"), "x"));
    assert!(o.connected);
    assert!(
        String::from_utf8_lossy(&o.upstream).contains("Authorization: Bearer opaque-backend-token")
    );
}

#[test]
fn a_connection_memo_authorizes_its_repeated_token_until_expiry_or_rotation() {
    let mut c = claims();
    c["exp"] = json!(NOW + 60);
    let token = rs256(&c);
    let value = format!("Bearer {token}");
    let (sh, _) = shared();
    let auth = sh.auth.as_ref().unwrap();
    let hits = || auth.stats.cache_hits.load(Ordering::Relaxed);
    let misses = || auth.stats.cache_misses.load(Ordering::Relaxed);
    let mut memo = AuthMemo::default();
    let p = auth
        .authorize_memo(&mut memo, Some(value.as_bytes()), NOW)
        .expect("valid");
    assert_eq!(p.subject.as_deref(), Some("alice"));
    assert_eq!((misses(), hits()), (1, 0));
    for _ in 0..3 {
        auth.authorize_memo(&mut memo, Some(value.as_bytes()), NOW + 10)
            .expect("memo hit");
    }
    assert_eq!((misses(), hits()), (1, 3));
    // Other bytes (one more space) are not the memo's: the shared cache
    // answers, and the memo now holds them.
    let spaced = format!("Bearer  {token}");
    auth.authorize_memo(&mut memo, Some(spaced.as_bytes()), NOW + 10)
        .expect("same token");
    assert_eq!((misses(), hits()), (1, 4));
    // No header, or a bad token: refused, and the memo is emptied.
    assert_eq!(
        auth.authorize_memo(&mut memo, None, NOW + 10).unwrap_err(),
        Rejection::Missing
    );
    auth.authorize_memo(&mut memo, Some(value.as_bytes()), NOW + 10)
        .expect("valid again");
    assert_eq!((misses(), hits()), (1, 5), "from the shared cache");
    // Past exp + leeway (30 s) the memo does not answer: expired.
    assert_eq!(
        auth.authorize_memo(&mut memo, Some(value.as_bytes()), NOW + 91)
            .unwrap_err(),
        Rejection::Expired
    );
    // A key rotation stales the memo at once: rsa1 is gone.
    auth.authorize_memo(&mut memo, Some(value.as_bytes()), NOW + 10)
        .expect("valid");
    let other = TestKey::new(Kind::Rsa);
    auth.replace_keys(
        KeyEntry::from_jwks(&jwks(&[other.jwk("rsa2", Some("RS256"))]), "t.jwks").unwrap(),
    );
    assert_eq!(
        auth.authorize_memo(&mut memo, Some(value.as_bytes()), NOW + 10)
            .unwrap_err(),
        Rejection::UnknownKid
    );
}

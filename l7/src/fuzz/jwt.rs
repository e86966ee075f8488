//! Fuzz target for bearer-token checks ([`Authenticator::authorize`]),
//! the part that runs before and around signature work.
//!
//! Input: the whole input is the `Authorization` value (an empty input: no
//! header at all). The resource server is fixed ([`authenticator`]): two
//! HS256 secrets, one without a `kid` and one with `kid` `k2`, an issuer
//! and an audience, a 1 KiB token limit, the clock at [`NOW`].
//!
//! Invariants (a violation is a finding):
//! - only a known valid token ([`valid_tokens`], each a seed) is accepted,
//!   and only as `Bearer <token>` (scheme in any case, spaces around);
//!   a fuzzer cannot forge an HMAC, and base64url here is canonical;
//! - a second look gives the same verdict (then served from the cache),
//!   and that verdict is the cold verification's for every token that
//!   passes the cheap checks (size, alphabet);
//! - a token whose header is not base64url JSON naming a known `alg` is
//!   `Malformed`, and one whose `alg` no key allows is refused for the
//!   algorithm or the `kid`, never after signature or claim checks.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::Seed;
use crate::auth::{AuthConfig, Authenticator, KeyEntry, Principal, Rejection};

/// The fuzz clock (unix seconds).
pub const NOW: u64 = 1_700_000_000;
/// The secret of the key without a `kid`.
pub const SECRET_A: &[u8] = b"fuzz secret A, thirty-two bytes!";
/// The secret of the key with `kid` `k2`.
pub const SECRET_B: &[u8] = b"fuzz secret B, thirty-two bytes!";
/// A secret no key holds.
const SECRET_X: &[u8] = b"fuzz secret X, not configured!!!";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "mcp-fuzz";
const MAX_TOKEN: usize = 1024;

/// What a run saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOutcome {
    /// The verdict.
    pub verdict: Result<Arc<Principal>, Rejection>,
}

/// The fixed resource server (a fresh one per run: the cache must not
/// carry state from one input to the next).
pub fn authenticator() -> Authenticator {
    let config = AuthConfig {
        issuers: vec![ISSUER.to_string()],
        audiences: vec![AUDIENCE.to_string()],
        leeway: Duration::from_secs(30),
        max_token_bytes: MAX_TOKEN,
        cache_capacity: 8,
        ..AuthConfig::default()
    };
    let mut keyed = KeyEntry::hs256_secret(SECRET_B, "fuzz-b");
    keyed.kid = Some("k2".to_string());
    Authenticator::new(
        config,
        vec![KeyEntry::hs256_secret(SECRET_A, "fuzz-a"), keyed],
    )
}

/// The fuzz target. Panics on a finding.
pub fn jwt(data: &[u8]) -> JwtOutcome {
    let auth = authenticator();
    let header = (!data.is_empty()).then_some(data);
    let verdict = auth.authorize(header, NOW);
    if verdict.is_ok() {
        assert!(is_valid_seed_token(data), "accepted an unknown token");
    }
    assert_eq!(auth.authorize(header, NOW), verdict, "second look differs");
    if let Some(token) = bearer_token(data) {
        check_token(&auth, token, &verdict);
    }
    JwtOutcome { verdict }
}

/// The token of a `Bearer` value, split the way RFC 6750 §2.1 writes it.
fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn check_token(auth: &Authenticator, token: &str, verdict: &Result<Arc<Principal>, Rejection>) {
    let cheap_ok = !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='));
    if !cheap_ok {
        assert!(
            matches!(verdict, Err(Rejection::Malformed | Rejection::TooLarge)),
            "{verdict:?} for a token failing the cheap checks"
        );
        return;
    }
    let cold = auth.verify_cold(token, NOW);
    assert_eq!(
        verdict.as_deref().map_err(|r| *r),
        cold.as_ref().map_err(|r| *r),
        "cached path and cold verification differ"
    );
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        assert_eq!(cold, Err(Rejection::Malformed), "not three parts");
        return;
    }
    match header_alg(parts[0]) {
        None => assert_eq!(cold, Err(Rejection::Malformed), "undecodable header"),
        Some(alg) if alg != "HS256" => assert!(
            matches!(
                cold,
                Err(Rejection::AlgNotAllowed | Rejection::UnknownKid | Rejection::Malformed)
            ),
            "{cold:?} for alg {alg}, which no key allows"
        ),
        Some(_) => {}
    }
}

/// The `alg` of a base64url JSON header, when it names an algorithm
/// jsonwebtoken knows.
fn header_alg(part: &str) -> Option<String> {
    let json: Value = serde_json::from_slice(&B64.decode(part).ok()?).ok()?;
    let alg = json.as_object()?.get("alg")?.as_str()?;
    alg.parse::<Algorithm>().ok()?;
    Some(alg.to_string())
}

/// Whether `value` is `Bearer <t>` for a known valid token `t`, in the
/// forms the parser allows (any case, spaces around).
fn is_valid_seed_token(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let value = value.trim();
    valid_tokens().iter().any(|t| {
        value.strip_suffix(t.as_str()).is_some_and(|rest| {
            rest.len() > 6
                && rest[..6].eq_ignore_ascii_case("bearer")
                && rest.as_bytes()[6] == b' '
                && rest[6..].trim().is_empty()
        })
    })
}

fn sign(kid: Option<&str>, secret: &[u8], claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).expect("HS256 signs")
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "fuzz-user",
        "exp": NOW + 3600,
        "iat": NOW - 60,
        "scope": "mcp:read mcp:write",
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        match v {
            Value::Null => c.as_object_mut().map(|m| m.remove(k)),
            v => c.as_object_mut().map(|m| m.insert(k.clone(), v.clone())),
        };
    }
    c
}

/// The tokens the fixed resource server accepts at [`NOW`], named.
fn valid_named() -> Vec<(&'static str, String)> {
    vec![
        ("valid", sign(None, SECRET_A, &claims(json!({})))),
        (
            "valid-kid-k2",
            sign(Some("k2"), SECRET_B, &claims(json!({}))),
        ),
        // A token without a kid is tried with every key that allows its alg.
        (
            "valid-no-kid-keyed-secret",
            sign(None, SECRET_B, &claims(json!({}))),
        ),
        (
            "valid-unknown-kid-unkeyed-secret",
            sign(Some("zz"), SECRET_A, &claims(json!({}))),
        ),
        (
            "valid-within-leeway",
            sign(
                None,
                SECRET_A,
                &claims(json!({"exp": NOW - 10, "nbf": NOW + 10})),
            ),
        ),
        (
            "valid-float-exp-scp-list",
            sign(
                None,
                SECRET_A,
                &claims(json!({"exp": (NOW + 100) as f64 + 0.5, "scp": ["a", "b"], "scope": null})),
            ),
        ),
        (
            "valid-aud-list",
            sign(None, SECRET_A, &claims(json!({"aud": ["other", AUDIENCE]}))),
        ),
    ]
}

/// The tokens the fixed resource server accepts (made once).
pub fn valid_tokens() -> &'static [String] {
    static TOKENS: OnceLock<Vec<String>> = OnceLock::new();
    TOKENS.get_or_init(|| valid_named().into_iter().map(|(_, t)| t).collect())
}

/// A token with a hand-made header and payload and no valid signature.
fn crafted(header: &str, payload: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        B64.encode(header),
        B64.encode(payload.to_string())
    )
}

/// The committed seeds: valid tokens, every rejection reason, and
/// values that are not bearer tokens at all.
pub fn seeds() -> Vec<Seed> {
    let bearer = |name: &str, token: &str| Seed::new(name, format!("Bearer {token}"));
    let mut seeds: Vec<Seed> = valid_named()
        .iter()
        .map(|(name, t)| bearer(name, t))
        .collect();
    let valid = &valid_tokens()[0];
    let signed = |extra: Value| sign(None, SECRET_A, &claims(extra));
    let mut tampered = valid.clone();
    let last = if tampered.ends_with('A') { "B" } else { "A" };
    tampered.replace_range(tampered.len() - 1.., last);
    let body = claims(json!({}));
    seeds.extend([
        Seed::new("valid-odd-spacing", format!("  bEaReR   {valid} ")),
        bearer("expired", &signed(json!({"exp": NOW - 100}))),
        bearer("not-yet-valid", &signed(json!({"nbf": NOW + 1000}))),
        bearer("issued-in-future", &signed(json!({"iat": NOW + 1000}))),
        bearer("no-exp", &signed(json!({"exp": null}))),
        bearer("exp-string", &signed(json!({"exp": "soon"}))),
        bearer("wrong-issuer", &signed(json!({"iss": "https://evil.test"}))),
        bearer("no-issuer", &signed(json!({"iss": null}))),
        bearer("wrong-audience", &signed(json!({"aud": "other"}))),
        bearer("wrong-secret", &sign(None, SECRET_X, &body)),
        bearer("kid-k2-wrong-secret", &sign(Some("k2"), SECRET_A, &body)),
        bearer("bad-signature", &tampered),
        bearer(
            "alg-none",
            &crafted(r#"{"alg":"none","typ":"JWT"}"#, &body, ""),
        ),
        bearer("alg-rs256", &crafted(r#"{"alg":"RS256"}"#, &body, "c2ln")),
        bearer(
            "alg-unknown-kid",
            &crafted(r#"{"alg":"ES256","kid":"zz"}"#, &body, "c2ln"),
        ),
        bearer("header-array", &crafted(r#"["HS256"]"#, &body, "c2ln")),
        bearer(
            "header-not-json",
            &format!("{}.e30.c2ln", B64.encode("alg")),
        ),
        bearer("two-parts", "eyJhbGciOiJIUzI1NiJ9.e30"),
        bearer("padded", &format!("{valid}==")),
        bearer("plus-sign", "a+b.c.d"),
        Seed::new("too-large", format!("Bearer {}", "a".repeat(MAX_TOKEN + 1))),
        Seed::new("basic-scheme", "Basic dXNlcjpwYXNz"),
        Seed::new("bearer-no-token", "Bearer "),
        Seed::new("bearer-tab", format!("Bearer\t{valid}")),
        Seed::new("not-utf8", b"Bearer \xff\xfe".to_vec()),
        Seed::new("garbage", "Bearer !!!"),
    ]);
    seeds
}

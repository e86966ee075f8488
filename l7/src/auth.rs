//! OAuth2 resource-server checks at the edge: bearer JWT validation, scopes,
//! the RFC 9728 protected-resource metadata and the RFC 6750 challenges.
//!
//! Contract:
//! - CPU only. Keys come in as bytes (PEM, JWKS JSON, a shared secret);
//!   reading files and deciding when to reload them is the caller's job
//!   ([`Authenticator::replace_keys`] swaps the whole key set atomically and
//!   flushes the token cache).
//! - Time comes in as `now_unix` (seconds). `exp`, `nbf` and `iat` are
//!   checked here with the configured leeway; jsonwebtoken is used with its
//!   own clock checks switched off, for signatures, `iss` and `aud`.
//! - Every key carries an algorithm allow-list. A token whose `alg` is not
//!   on the list of the key that would verify it is rejected before any
//!   signature work, which closes the HS/RS confusion and `alg: none`.
//! - Verified tokens are cached by a keyed hash, with the full token
//!   compared on a hit; an entry lives until the token's `exp` (+ leeway)
//!   and the cache is bounded.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::mcp::Call;

/// Why a request was refused. Each has a metric label and a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `Authorization` header, or one with another scheme than Bearer.
    Missing,
    /// A request that cannot carry a token unambiguously (several
    /// `Authorization` fields): 400 `invalid_request`.
    InvalidRequest,
    /// Not a JWT: bad base64/JSON, missing `exp`, non-ASCII, …
    Malformed,
    /// Longer than `max_token_bytes`.
    TooLarge,
    /// The signature does not verify with the selected key.
    BadSignature,
    /// `alg` is not allowed for any key that could verify it.
    AlgNotAllowed,
    /// `kid` names no known key.
    UnknownKid,
    /// `exp` is past (beyond leeway).
    Expired,
    /// `nbf` is in the future (beyond leeway).
    NotYetValid,
    /// `iat` is in the future (beyond leeway).
    IssuedInFuture,
    /// `iss` is not an accepted issuer.
    WrongIssuer,
    /// `aud` does not name an accepted audience.
    WrongAudience,
    /// Valid token, but without a scope this request needs (403).
    InsufficientScope,
}

impl Rejection {
    /// Every reason, in label order.
    pub const ALL: [Rejection; 13] = [
        Rejection::Missing,
        Rejection::InvalidRequest,
        Rejection::Malformed,
        Rejection::TooLarge,
        Rejection::BadSignature,
        Rejection::AlgNotAllowed,
        Rejection::UnknownKid,
        Rejection::Expired,
        Rejection::NotYetValid,
        Rejection::IssuedInFuture,
        Rejection::WrongIssuer,
        Rejection::WrongAudience,
        Rejection::InsufficientScope,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::InvalidRequest => "invalid_request",
            Rejection::Malformed => "malformed",
            Rejection::TooLarge => "too_large",
            Rejection::BadSignature => "bad_signature",
            Rejection::AlgNotAllowed => "alg_not_allowed",
            Rejection::UnknownKid => "unknown_kid",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::IssuedInFuture => "issued_in_future",
            Rejection::WrongIssuer => "wrong_issuer",
            Rejection::WrongAudience => "wrong_audience",
            Rejection::InsufficientScope => "insufficient_scope",
        }
    }

    /// HTTP status: 403 for scope, 400 for an invalid request, 401 for
    /// everything else (RFC 6750 §3.1).
    pub fn status(self) -> u16 {
        match self {
            Rejection::InsufficientScope => 403,
            Rejection::InvalidRequest => 400,
            _ => 401,
        }
    }

    /// Text for `error_description` (no token content is ever echoed).
    pub fn description(self) -> &'static str {
        match self {
            Rejection::Missing => "no bearer token",
            Rejection::InvalidRequest => "more than one Authorization field",
            Rejection::Malformed => "malformed token",
            Rejection::TooLarge => "token too large",
            Rejection::BadSignature => "signature does not verify",
            Rejection::AlgNotAllowed => "algorithm not allowed for the key",
            Rejection::UnknownKid => "unknown key id",
            Rejection::Expired => "token expired",
            Rejection::NotYetValid => "token not yet valid",
            Rejection::IssuedInFuture => "token issued in the future",
            Rejection::WrongIssuer => "issuer not accepted",
            Rejection::WrongAudience => "audience not accepted",
            Rejection::InsufficientScope => "insufficient scope",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|r| *r == self)
            .expect("ALL lists every reason")
    }
}

/// A key could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// PEM that is not an RSA, EC or Ed25519 public key.
    #[error("{0}: not an RSA, EC (P-256/P-384) or Ed25519 public key in PEM")]
    Pem(String),
    /// JWKS that does not parse, or a key in it that cannot be used.
    #[error("{source_name}: {message}")]
    Jwks {
        /// File or origin name.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// An algorithm on an allow-list that does not fit the key type.
    #[error("{0}: algorithm {1:?} does not fit this key type")]
    AlgMismatch(String, Algorithm),
}

/// One verification key with its allow-list.
#[derive(Clone)]
pub struct KeyEntry {
    /// `kid` the key answers to (JWKS keys have one; PEM keys may not).
    pub kid: Option<String>,
    /// Algorithms this key may verify.
    pub algorithms: Vec<Algorithm>,
    /// Where it came from (for logs).
    pub source: String,
    key: DecodingKey,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .field("source", &self.source)
            .finish()
    }
}

const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC_ALGS: [Algorithm; 2] = [Algorithm::ES256, Algorithm::ES384];

fn restrict(
    source: &str,
    family: &[Algorithm],
    only: Option<&[Algorithm]>,
) -> Result<Vec<Algorithm>, KeyError> {
    match only {
        None => Ok(family.to_vec()),
        Some(list) => {
            for a in list {
                if !family.contains(a) {
                    return Err(KeyError::AlgMismatch(source.to_string(), *a));
                }
            }
            Ok(list.to_vec())
        }
    }
}

impl KeyEntry {
    /// A PEM public key (RSA, EC or Ed25519). `only` narrows the
    /// algorithms; by default every algorithm of the key's family.
    pub fn from_pem(
        pem: &[u8],
        source: &str,
        kid: Option<String>,
        only: Option<&[Algorithm]>,
    ) -> Result<Self, KeyError> {
        let (key, family): (DecodingKey, &[Algorithm]) =
            if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                (k, &RSA_ALGS)
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                (k, &EC_ALGS)
            } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
                (k, &[Algorithm::EdDSA])
            } else {
                return Err(KeyError::Pem(source.to_string()));
            };
        Ok(Self {
            kid,
            algorithms: restrict(source, family, only)?,
            source: source.to_string(),
            key,
        })
    }

    /// A shared secret for HS256 (the only way HMAC tokens are accepted).
    pub fn hs256_secret(secret: &[u8], source: &str) -> Self {
        Self {
            kid: None,
            algorithms: vec![Algorithm::HS256],
            source: source.to_string(),
            key: DecodingKey::from_secret(secret),
        }
    }

    /// Every usable key of a JWKS document. Keys for encryption
    /// (`use: enc`) and symmetric keys are refused: a JWKS must not be a
    /// way to turn on HMAC.
    pub fn from_jwks(json: &[u8], source: &str) -> Result<Vec<Self>, KeyError> {
        let err = |m: String| KeyError::Jwks {
            source_name: source.to_string(),
            message: m,
        };
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| err(format!("invalid JWKS: {e}")))?;
        let mut out = Vec::new();
        for jwk in &set.keys {
            use jsonwebtoken::jwk::{AlgorithmParameters, PublicKeyUse};
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let family: &[Algorithm] = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => &RSA_ALGS,
                AlgorithmParameters::EllipticCurve(_) => &EC_ALGS,
                AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
                AlgorithmParameters::OctetKey(_) => {
                    return Err(err(
                        "symmetric (kty oct) keys are not accepted from a JWKS".into()
                    ));
                }
                _ => {
                    return Err(err(format!(
                        "key {:?}: unsupported key type",
                        jwk.common.key_id
                    )));
                }
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| err(format!("key {:?}: {e}", jwk.common.key_id)))?;
            let only = match jwk.common.key_algorithm {
                None => None,
                Some(ka) => {
                    let alg: Algorithm = ka.to_string().parse().map_err(|_| {
                        err(format!("key {:?}: unusable alg {ka}", jwk.common.key_id))
                    })?;
                    Some(vec![alg])
                }
            };
            out.push(Self {
                kid: jwk.common.key_id.clone(),
                algorithms: restrict(source, family, only.as_deref())?,
                source: source.to_string(),
                key,
            });
        }
        Ok(out)
    }
}

/// A scope requirement. All rules whose selector matches a request apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRule {
    /// JSON-RPC method (`Mcp-Method` or the body's `method`); `None` = any.
    pub method: Option<String>,
    /// Tool/prompt name (`Mcp-Name` or the body's `params.name`); `None` = any.
    pub name: Option<String>,
    /// Every scope listed is required.
    pub scopes: Vec<String>,
}

impl ScopeRule {
    /// Parse `SCOPES`, `METHOD=SCOPES` or `METHOD:NAME=SCOPES`, where
    /// SCOPES is a comma-separated list.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (selector, scopes) = match s.split_once('=') {
            Some((sel, sc)) => (Some(sel.trim()), sc),
            None => (None, s),
        };
        let scopes: Vec<String> = scopes
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect();
        if scopes.is_empty() {
            return Err(format!("scope rule {s:?} lists no scope"));
        }
        if scopes.iter().any(|x| x.contains(' ')) {
            return Err(format!("scope rule {s:?}: scopes cannot contain spaces"));
        }
        let (method, name) = match selector {
            None => (None, None),
            Some(sel) => match sel.split_once(':') {
                Some((m, n)) if !m.is_empty() && !n.is_empty() => {
                    (Some(m.to_string()), Some(n.to_string()))
                }
                Some(_) => {
                    return Err(format!(
                        "scope rule {s:?}: selector must be METHOD or METHOD:NAME"
                    ));
                }
                None if sel.is_empty() => return Err(format!("scope rule {s:?}: empty method")),
                None => (Some(sel.to_string()), None),
            },
        };
        Ok(Self {
            method,
            name,
            scopes,
        })
    }

    fn matches(&self, method: Option<&str>, name: Option<&str>) -> bool {
        let m = match &self.method {
            None => true,
            Some(want) => method == Some(want.as_str()),
        };
        let n = match &self.name {
            None => true,
            Some(want) => name == Some(want.as_str()),
        };
        m && n
    }
}

/// Settings of the resource server.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Accepted `iss` values (empty: `iss` not checked).
    pub issuers: Vec<String>,
    /// Accepted audiences (empty: `aud` not checked).
    pub audiences: Vec<String>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Longest token accepted.
    pub max_token_bytes: usize,
    /// Scope requirements.
    pub scope_rules: Vec<ScopeRule>,
    /// Pass `Authorization` on to backends.
    pub forward_token: bool,
    /// Add `X-Authenticated-Subject: <sub>` to backend requests.
    pub subject_header: bool,
    /// `authorization_servers` in the protected-resource metadata.
    pub authorization_servers: Vec<String>,
    /// `resource` in the metadata; default `https://<Host>/mcp`.
    pub resource: Option<String>,
    /// Most cached verified tokens.
    pub cache_capacity: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(30),
            max_token_bytes: 8 * 1024,
            scope_rules: Vec::new(),
            forward_token: false,
            subject_header: false,
            authorization_servers: Vec::new(),
            resource: None,
            cache_capacity: 16 * 1024,
        }
    }
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub`, if any.
    pub subject: Option<String>,
    /// Granted scopes (`scope` or `scp`).
    pub scopes: Vec<String>,
    /// `exp` (unix seconds).
    pub expires: u64,
}

/// Counters for the admin endpoint.
#[derive(Debug, Default)]
pub struct AuthStats {
    rejections: [AtomicU64; 13],
    /// Verified from the cache.
    pub cache_hits: AtomicU64,
    /// Verified by a signature check.
    pub cache_misses: AtomicU64,
}

impl AuthStats {
    /// Rejections for this reason so far.
    pub fn rejections(&self, r: Rejection) -> u64 {
        self.rejections[r.index()].load(Ordering::Relaxed)
    }

    /// Count one rejection.
    pub fn reject(&self, r: Rejection) {
        self.rejections[r.index()].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Cached {
    token: Box<str>,
    principal: Arc<Principal>,
    valid_until: u64,
    /// Key-set generation the token was verified under.
    generation: u64,
}

const CACHE_SHARDS: usize = 16;

#[derive(Debug)]
struct TokenCache {
    shards: Vec<Mutex<HashMap<u64, Cached>>>,
    hasher: RandomState,
    per_shard: usize,
}

impl TokenCache {
    fn new(capacity: usize) -> Self {
        Self {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            // Keyed SipHash: an attacker cannot aim for collisions, and a
            // hit still compares the whole token.
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(CACHE_SHARDS).max(1),
        }
    }

    fn shard(&self, h: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Cached>> {
        self.shards[(h as usize) % CACHE_SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, token: &str, now: u64, generation: u64) -> Option<Arc<Principal>> {
        let h = self.hasher.hash_one(token);
        let mut s = self.shard(h);
        let hit = s.get(&h)?;
        if &*hit.token != token {
            return None;
        }
        if now > hit.valid_until || hit.generation != generation {
            s.remove(&h);
            return None;
        }
        Some(hit.principal.clone())
    }

    fn put(
        &self,
        token: &str,
        principal: Arc<Principal>,
        valid_until: u64,
        now: u64,
        generation: u64,
    ) {
        let h = self.hasher.hash_one(token);
        let mut s = self.shard(h);
        if s.len() >= self.per_shard && !s.contains_key(&h) {
            s.retain(|_, c| c.valid_until >= now);
            if s.len() >= self.per_shard {
                // Still full of live tokens: drop the one expiring first.
                if let Some(k) = s.iter().min_by_key(|(_, c)| c.valid_until).map(|(k, _)| *k) {
                    s.remove(&k);
                }
            }
        }
        s.insert(
            h,
            Cached {
                token: token.into(),
                principal,
                valid_until,
                generation,
            },
        );
    }

    fn clear(&self) {
        for s in &self.shards {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(serde::Deserialize)]
struct Claims {
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    sub: Option<String>,
    scope: Option<String>,
    scp: Option<StringOrList>,
}

/// The refusal a jsonwebtoken error stands for.
fn rejection_of(e: &jsonwebtoken::errors::Error) -> Rejection {
    match e.kind() {
        // jsonwebtoken checks the signature before it decodes the payload,
        // so a base64 error here is the signature's (the header already
        // decoded).
        JwtErrorKind::InvalidSignature
        | JwtErrorKind::Base64(_)
        | JwtErrorKind::InvalidEcdsaKey
        | JwtErrorKind::InvalidEddsaKey
        | JwtErrorKind::InvalidRsaKey(_)
        | JwtErrorKind::InvalidKeyFormat => Rejection::BadSignature,
        JwtErrorKind::InvalidAlgorithm | JwtErrorKind::UnsupportedAlgorithm => {
            Rejection::AlgNotAllowed
        }
        JwtErrorKind::InvalidIssuer => Rejection::WrongIssuer,
        JwtErrorKind::InvalidAudience => Rejection::WrongAudience,
        JwtErrorKind::MissingRequiredClaim(c) if c == "iss" => Rejection::WrongIssuer,
        JwtErrorKind::MissingRequiredClaim(c) if c == "aud" => Rejection::WrongAudience,
        _ => Rejection::Malformed,
    }
}

fn numeric_date(v: &Option<serde_json::Value>) -> Result<Option<u64>, Rejection> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(Rejection::Malformed),
        Some(_) => Err(Rejection::Malformed),
    }
}

/// One connection's last verified `Authorization` value (see
/// [`Authenticator::authorize_memo`]).
#[derive(Debug, Default)]
pub struct AuthMemo(Option<MemoEntry>);

#[derive(Debug)]
struct MemoEntry {
    value: Box<[u8]>,
    principal: Arc<Principal>,
    valid_until: u64,
    generation: u64,
}

/// The resource server: keys, cache and counters. Shared by all workers.
#[derive(Debug)]
pub struct Authenticator {
    /// Settings.
    pub config: AuthConfig,
    keys: RwLock<Arc<Vec<KeyEntry>>>,
    cache: TokenCache,
    /// Counters.
    pub stats: AuthStats,
    unknown_kid: AtomicBool,
    /// Key-set replacements so far (tags cache entries).
    key_generation: AtomicU64,
}

impl Authenticator {
    /// A resource server with these keys.
    pub fn new(config: AuthConfig, keys: Vec<KeyEntry>) -> Self {
        let cache = TokenCache::new(config.cache_capacity);
        Self {
            config,
            keys: RwLock::new(Arc::new(keys)),
            cache,
            stats: AuthStats::default(),
            unknown_kid: AtomicBool::new(false),
            key_generation: AtomicU64::new(0),
        }
    }

    /// Swap in a new key set and forget every cached verification (a key
    /// that was removed must stop authorizing at once).
    pub fn replace_keys(&self, keys: Vec<KeyEntry>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        // Bump before clearing: a verification that started under the old
        // keys sees the change and does not repopulate the cache.
        self.key_generation.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
    }

    /// Number of keys loaded.
    pub fn key_count(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True once per burst of unknown-`kid` rejections since the last call:
    /// the key loader uses it to re-read a JWKS early (debounced there).
    pub fn take_unknown_kid_signal(&self) -> bool {
        self.unknown_kid.swap(false, Ordering::Relaxed)
    }

    /// Check an `Authorization` header value (or its absence). Counts the
    /// outcome.
    pub fn authorize(
        &self,
        authorization: Option<&[u8]>,
        now_unix: u64,
    ) -> Result<Arc<Principal>, Rejection> {
        let r = self.authorize_inner(authorization, now_unix);
        if let Err(e) = r {
            self.stats.reject(e);
        }
        r
    }

    fn authorize_inner(
        &self,
        authorization: Option<&[u8]>,
        now_unix: u64,
    ) -> Result<Arc<Principal>, Rejection> {
        let value = authorization.ok_or(Rejection::Missing)?;
        let value = std::str::from_utf8(value).map_err(|_| Rejection::Malformed)?;
        let value = value.trim();
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            // Another scheme is not a bad bearer token: answer with the
            // plain challenge (RFC 6750 §3.1).
            return Err(Rejection::Missing);
        }
        let token = token.trim();
        if token.len() > self.config.max_token_bytes {
            return Err(Rejection::TooLarge);
        }
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
        {
            return Err(Rejection::Malformed);
        }
        let generation = self.key_generation.load(Ordering::Acquire);
        if let Some(p) = self.cache.get(token, now_unix, generation) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(p);
        }
        let principal = self.verify_cold(token, now_unix)?;
        self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        let leeway = self.config.leeway.as_secs();
        let principal = Arc::new(principal);
        // Tagged with the generation read before verifying: if a new key
        // set (which may revoke the key used) arrived meanwhile, the entry
        // never matches.
        self.cache.put(
            token,
            principal.clone(),
            principal.expires.saturating_add(leeway),
            now_unix,
            generation,
        );
        Ok(principal)
    }

    /// [`authorize`](Self::authorize) for one connection: a keep-alive
    /// connection presents the same `Authorization` value request after
    /// request, and `memo` remembers the last one that verified. A request
    /// carrying exactly those bytes, within the token's validity and under
    /// the same key set, is authorized by one comparison: no token scan, no
    /// hash, no lock. Anything else goes through `authorize` and refreshes
    /// the memo (a refusal empties it). Counted like a cache hit.
    pub fn authorize_memo(
        &self,
        memo: &mut AuthMemo,
        authorization: Option<&[u8]>,
        now_unix: u64,
    ) -> Result<Arc<Principal>, Rejection> {
        let generation = self.key_generation.load(Ordering::Acquire);
        if let (Some(value), Some(m)) = (authorization, &memo.0)
            && *m.value == *value
            && now_unix <= m.valid_until
            && m.generation == generation
        {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(m.principal.clone());
        }
        let verdict = self.authorize(authorization, now_unix);
        memo.0 = match (&verdict, authorization) {
            (Ok(p), Some(value)) => Some(MemoEntry {
                value: value.into(),
                principal: p.clone(),
                valid_until: p.expires.saturating_add(self.config.leeway.as_secs()),
                // Read before verifying: keys replaced meanwhile make the
                // memo stale at once.
                generation,
            }),
            _ => None,
        };
        verdict
    }

    /// Full verification (signature, algorithm, claims) without the cache.
    pub fn verify_cold(&self, token: &str, now_unix: u64) -> Result<Principal, Rejection> {
        if token.split('.').count() != 3 {
            return Err(Rejection::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut kid_unknown = false;
        let candidates: Vec<&KeyEntry> = match &header.kid {
            Some(kid) => {
                let by_kid: Vec<_> = keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if by_kid.is_empty() {
                    // Tell the loader a JWKS may have rotated; keys without
                    // a kid (PEM files) may still verify the token.
                    self.unknown_kid.store(true, Ordering::Relaxed);
                    kid_unknown = true;
                    keys.iter().filter(|k| k.kid.is_none()).collect()
                } else {
                    by_kid
                }
            }
            None => keys.iter().collect(),
        };
        let allowed: Vec<&KeyEntry> = candidates
            .into_iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .collect();
        if allowed.is_empty() {
            return Err(if kid_unknown {
                Rejection::UnknownKid
            } else {
                Rejection::AlgNotAllowed
            });
        }
        let validation = self.validation(header.alg);
        let mut first_err = None;
        for k in allowed {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => return self.check_times(data.claims, now_unix),
                Err(e) => {
                    first_err.get_or_insert(rejection_of(&e));
                }
            }
        }
        if kid_unknown {
            return Err(Rejection::UnknownKid);
        }
        Err(first_err.unwrap_or(Rejection::BadSignature))
    }

    /// What a token signed with `alg` must satisfy besides its times (which
    /// [`Authenticator::check_times`] checks with the configured leeway).
    fn validation(&self, alg: jsonwebtoken::Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        let mut required = vec!["exp"];
        if !self.config.issuers.is_empty() {
            validation.set_issuer(&self.config.issuers);
            required.push("iss");
        }
        if self.config.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.config.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn check_times(&self, c: Claims, now: u64) -> Result<Principal, Rejection> {
        let leeway = self.config.leeway.as_secs();
        let exp = numeric_date(&c.exp)?.ok_or(Rejection::Malformed)?;
        if now > exp.saturating_add(leeway) {
            return Err(Rejection::Expired);
        }
        if let Some(nbf) = numeric_date(&c.nbf)?
            && nbf > now.saturating_add(leeway)
        {
            return Err(Rejection::NotYetValid);
        }
        if let Some(iat) = numeric_date(&c.iat)?
            && iat > now.saturating_add(leeway)
        {
            return Err(Rejection::IssuedInFuture);
        }
        let mut scopes: Vec<String> = c
            .scope
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        match c.scp {
            Some(StringOrList::One(s)) => scopes.extend(s.split_whitespace().map(str::to_string)),
            Some(StringOrList::Many(v)) => scopes.extend(v),
            None => {}
        }
        Ok(Principal {
            subject: c.sub,
            scopes,
            expires: exp,
        })
    }

    /// Scopes that the calls of one request need and the principal lacks,
    /// each once, in call then rule order (empty: allowed).
    pub fn missing_scopes(&self, principal: &Principal, calls: &[Call]) -> Vec<String> {
        let mut missing = Vec::new();
        for c in calls {
            for rule in self
                .config
                .scope_rules
                .iter()
                .filter(|r| r.matches(c.method.as_deref(), c.name.as_deref()))
            {
                for s in &rule.scopes {
                    if !principal.scopes.contains(s) && !missing.contains(s) {
                        missing.push(s.clone());
                    }
                }
            }
        }
        missing
    }

    /// Every scope named by a rule (for `scopes_supported`).
    pub fn scopes_supported(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for r in &self.config.scope_rules {
            for s in &r.scopes {
                if !v.contains(s) {
                    v.push(s.clone());
                }
            }
        }
        v
    }
}

/// A `Host` value safe to put in a URL, or `None`.
pub fn sanitized_host(host: Option<&[u8]>) -> Option<String> {
    let h = std::str::from_utf8(host?).ok()?.trim();
    let ok = !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    ok.then(|| h.to_string())
}

/// RFC 9728 well-known path for protected-resource metadata.
pub(crate) const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata URL advertised in challenges.
pub(crate) fn metadata_url(host: &str) -> String {
    format!("https://{host}{WELL_KNOWN}")
}

/// The `WWW-Authenticate` value for a rejection (RFC 6750 §3).
pub fn challenge(r: Rejection, host: &str, missing_scopes: &[String]) -> String {
    let meta = metadata_url(host);
    match r {
        Rejection::Missing => format!("Bearer resource_metadata=\"{meta}\""),
        Rejection::InvalidRequest => format!(
            "Bearer error=\"invalid_request\", error_description=\"{}\", resource_metadata=\"{meta}\"",
            r.description()
        ),
        Rejection::InsufficientScope => format!(
            "Bearer error=\"insufficient_scope\", scope=\"{}\", resource_metadata=\"{meta}\"",
            missing_scopes.join(" ")
        ),
        other => format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\", resource_metadata=\"{meta}\"",
            other.description()
        ),
    }
}

//! Sealed session ids: the backend's name and its own session id, sealed
//! with AES-256-GCM into the `Mcp-Session-Id` the client sees, so that any
//! proxy holding the key routes a session without a shared table.
//!
//! Contract:
//! - A sealed id is `s1.` followed by base64url (no padding) of
//!   `nonce (12) ‖ ciphertext ‖ tag (16)`; the plaintext is
//!   `len(name) (1) ‖ name ‖ backend id`. It is visible ASCII, at most
//!   [`MAX_SEALED_LEN`] bytes.
//! - Keys: the current one seals; both the current and the previous one
//!   open (rotation without cutting sessions). Each key is derived once, at
//!   load, with HKDF-SHA256 from the operator's secret (at least 16 bytes):
//!   nothing per request but the AEAD itself.
//! - [`Sealer::open`] refuses anything it did not seal under a key it
//!   holds (tampered, truncated, foreign or rotated-out key), with the
//!   reason; the caller answers 404 without touching a backend.
//! - Nonces are random (96 bits); a key seals far fewer than the 2^32 ids
//!   for which random GCM nonces stay safe between rotations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

/// The prefix of every sealed id (format version 1).
pub const PREFIX: &str = "s1.";
/// Longest backend name that can be sealed.
pub const MAX_NAME: usize = 64;
/// Longest backend session id that can be sealed.
pub const MAX_INNER: usize = 256;
/// Longest sealed id.
pub const MAX_SEALED_LEN: usize =
    PREFIX.len() + (NONCE_LEN + 1 + MAX_NAME + MAX_INNER + TAG_LEN).div_ceil(3) * 4;
/// Shortest secret a key is derived from.
pub const MIN_SECRET: usize = 16;

const TAG_LEN: usize = 16;
const AAD: &[u8] = b"dpuproxy session id v1";
const HKDF_SALT: &[u8] = b"dpuproxy session key";

/// Why an id did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a sealed id of ours: wrong prefix, bad base64, too short or too
    /// long (truncated ids end up here or under `Key`).
    #[error("not a sealed session id")]
    Malformed,
    /// Did not authenticate under any key held: tampered, truncated, sealed
    /// with a foreign key, or with a key rotated out.
    #[error("session id does not open under the current keys")]
    Key,
}

/// Why keys could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A secret is shorter than [`MIN_SECRET`].
    #[error("a session key secret must be at least {MIN_SECRET} bytes, got {0}")]
    TooShort(usize),
    /// Neither one nor two secrets.
    #[error("a session key file holds the current secret and at most one previous one, got {0}")]
    Count(usize),
}

/// What an id opened to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The backend's name.
    pub backend: String,
    /// The backend's own session id.
    pub inner: Vec<u8>,
    /// It opened under the previous key (still valid after a rotation).
    pub previous_key: bool,
}

/// Counters (relaxed atomics).
#[derive(Debug, Default)]
pub struct SealStats {
    /// Ids sealed.
    pub sealed: AtomicU64,
    /// Ids opened under the current key.
    pub opened: AtomicU64,
    /// Ids opened under the previous key.
    pub opened_previous: AtomicU64,
    /// Ids refused as malformed.
    pub refused_malformed: AtomicU64,
    /// Ids refused because no key opens them.
    pub refused_key: AtomicU64,
    /// Ids that opened but name a backend that is gone.
    pub refused_backend: AtomicU64,
}

struct Keys {
    current: LessSafeKey,
    previous: Option<LessSafeKey>,
}

/// Seals and opens session ids. Shared by every worker and lcore.
pub struct Sealer {
    keys: RwLock<Arc<Keys>>,
    /// Counters.
    pub stats: SealStats,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The AEAD key for one operator secret.
fn derive(secret: &[u8]) -> Result<LessSafeKey, KeyError> {
    if secret.len() < MIN_SECRET {
        return Err(KeyError::TooShort(secret.len()));
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
    let mut key = [0u8; 32];
    prk.expand(&[b"aes-256-gcm"], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut key))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let unbound =
        UnboundKey::new(&AES_256_GCM, &key).expect("32 bytes is an AES-256-GCM key length");
    Ok(LessSafeKey::new(unbound))
}

fn load(secrets: &[Vec<u8>]) -> Result<Keys, KeyError> {
    match secrets {
        [current] => Ok(Keys {
            current: derive(current)?,
            previous: None,
        }),
        [current, previous] => Ok(Keys {
            current: derive(current)?,
            previous: Some(derive(previous)?),
        }),
        _ => Err(KeyError::Count(secrets.len())),
    }
}

impl Sealer {
    /// Keys from the current secret and, optionally, the previous one.
    pub fn new(secrets: &[Vec<u8>]) -> Result<Self, KeyError> {
        Ok(Self {
            keys: RwLock::new(Arc::new(load(secrets)?)),
            stats: SealStats::default(),
        })
    }

    /// Replace the keys (a rotation); on an error the old keys stay.
    pub fn rotate(&self, secrets: &[Vec<u8>]) -> Result<(), KeyError> {
        let keys = load(secrets)?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(())
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Seal `inner` (the backend's id) for the backend named `backend`.
    /// `None` when either is longer than the format allows.
    pub fn seal(&self, backend: &str, inner: &[u8]) -> Option<String> {
        if backend.len() > MAX_NAME || inner.len() > MAX_INNER {
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut buf = Vec::with_capacity(NONCE_LEN + 1 + backend.len() + inner.len() + TAG_LEN);
        buf.extend_from_slice(&nonce);
        buf.push(backend.len() as u8);
        buf.extend_from_slice(backend.as_bytes());
        buf.extend_from_slice(inner);
        let mut body = buf.split_off(NONCE_LEN);
        self.keys()
            .current
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut body,
            )
            .ok()?;
        buf.extend_from_slice(&body);
        self.stats.sealed.fetch_add(1, Ordering::Relaxed);
        Some(format!("{PREFIX}{}", B64.encode(&buf)))
    }

    /// Open an id sealed by any proxy holding the current or the previous
    /// key. Counts the outcome.
    pub fn open(&self, id: &str) -> Result<Opened, Refusal> {
        let r = self.open_inner(id);
        let counter = match &r {
            Ok(o) if o.previous_key => &self.stats.opened_previous,
            Ok(_) => &self.stats.opened,
            Err(Refusal::Malformed) => &self.stats.refused_malformed,
            Err(Refusal::Key) => &self.stats.refused_key,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn open_inner(&self, id: &str) -> Result<Opened, Refusal> {
        let b64 = id.strip_prefix(PREFIX).ok_or(Refusal::Malformed)?;
        if id.len() > MAX_SEALED_LEN {
            return Err(Refusal::Malformed);
        }
        let raw = B64.decode(b64).map_err(|_| Refusal::Malformed)?;
        if raw.len() < NONCE_LEN + 1 + TAG_LEN {
            return Err(Refusal::Malformed);
        }
        let keys = self.keys();
        let tries = std::iter::once((&keys.current, false))
            .chain(keys.previous.as_ref().map(|k| (k, true)));
        for (key, previous_key) in tries {
            if let Some((backend, inner)) = open_with(key, &raw) {
                return Ok(Opened {
                    backend,
                    inner,
                    previous_key,
                });
            }
        }
        Err(Refusal::Key)
    }
}

/// Open `raw` (nonce ‖ ciphertext ‖ tag) with `key`: the backend's name and
/// id, or `None` when it does not authenticate or does not parse.
fn open_with(key: &LessSafeKey, raw: &[u8]) -> Option<(String, Vec<u8>)> {
    let (nonce, sealed) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut body = sealed.to_vec();
    let plain = key.open_in_place(nonce, Aad::from(AAD), &mut body).ok()?;
    let (&n, rest) = plain.split_first()?;
    let n = usize::from(n);
    if rest.len() < n {
        return None;
    }
    let name = std::str::from_utf8(&rest[..n]).ok()?.to_string();
    Some((name, rest[n..].to_vec()))
}

/// Secrets from a key file: one per non-empty line (the current first,
/// then optionally the previous one), each as hex (64 digits for 32
/// bytes) or as base64; `#` starts a comment line.
pub fn parse_key_file(text: &str) -> Result<Vec<Vec<u8>>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(i, line)| {
            let hex_ok = line.len() % 2 == 0 && line.bytes().all(|b| b.is_ascii_hexdigit());
            let decoded = if hex_ok {
                (0..line.len())
                    .step_by(2)
                    .map(|j| u8::from_str_radix(&line[j..j + 2], 16).map_err(|e| e.to_string()))
                    .collect()
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(line)
                    .or_else(|_| B64.decode(line))
                    .map_err(|e| e.to_string())
            };
            decoded.map_err(|e| format!("line {}: neither hex nor base64 ({e})", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secrets: &[&str]) -> Sealer {
        Sealer::new(
            &secrets
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_is_visible_ascii_and_bounded() {
        let s = sealer(&["an operator secret of 32 bytes.."]);
        let inner = b"0123456789abcdef0123456789abcdef";
        let id = s.seal("b1", inner).unwrap();
        assert!(id.starts_with(PREFIX));
        assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{id}");
        assert!(crate::mcp::valid_session_id(id.as_bytes()));
        let o = s.open(&id).unwrap();
        assert_eq!((o.backend.as_str(), o.inner.as_slice()), ("b1", &inner[..]));
        assert!(!o.previous_key);
        // Random nonces: the same input seals differently.
        assert_ne!(s.seal("b1", inner).unwrap(), id);
        let longest = s.seal(&"n".repeat(MAX_NAME), &[b'x'; MAX_INNER]).unwrap();
        assert!(longest.len() <= MAX_SEALED_LEN, "{}", longest.len());
        assert_eq!(s.seal(&"n".repeat(MAX_NAME + 1), b"x"), None);
        assert_eq!(s.seal("b", &[b'x'; MAX_INNER + 1]), None);
    }

    #[test]
    fn tampered_truncated_foreign_and_rotated_out_ids_are_refused() {
        let s = sealer(&["key one, long enough to use ...."]);
        let id = s.seal("b2", b"inner-id").unwrap();
        // Every single-character change of the body is refused.
        for i in PREFIX.len()..id.len() {
            let mut t = id.clone().into_bytes();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(t).unwrap();
            assert!(s.open(&t).is_err(), "tampered at {i} opened");
        }
        for cut in [1, 5, id.len() - PREFIX.len() - 1] {
            assert!(s.open(&id[..id.len() - cut]).is_err(), "truncated by {cut}");
        }
        assert_eq!(s.open("plain-backend-id"), Err(Refusal::Malformed));
        assert_eq!(s.open("s1.!!!"), Err(Refusal::Malformed));
        let foreign = sealer(&["another proxy fleet's secret...."]);
        assert_eq!(foreign.open(&id), Err(Refusal::Key));
        // Rotation: the old key still opens as the previous one ...
        s.rotate(&[
            b"key two, long enough to use ....".to_vec(),
            b"key one, long enough to use ....".to_vec(),
        ])
        .unwrap();
        let o = s.open(&id).unwrap();
        assert!(o.previous_key);
        let new_id = s.seal("b2", b"inner-id").unwrap();
        assert!(!s.open(&new_id).unwrap().previous_key);
        // ... until it is rotated out.
        s.rotate(&[
            b"key three, long enough to use ..".to_vec(),
            b"key two, long enough to use ....".to_vec(),
        ])
        .unwrap();
        assert_eq!(s.open(&id), Err(Refusal::Key));
        assert!(s.open(&new_id).unwrap().previous_key);
    }

    #[test]
    fn keys_and_key_files() {
        assert_eq!(
            Sealer::new(&[b"short".to_vec()]).err(),
            Some(KeyError::TooShort(5))
        );
        assert_eq!(Sealer::new(&[]).err(), Some(KeyError::Count(0)));
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let text = format!("# current\n{hex}\n\nYW5vdGhlciBzZWNyZXQgb2YgZW5vdWdoIGJ5dGVz\n");
        let secrets = parse_key_file(&text).unwrap();
        assert_eq!(secrets.len(), 2);
        assert_eq!(secrets[0].len(), 32);
        assert_eq!(secrets[1], b"another secret of enough bytes");
        assert!(Sealer::new(&secrets).is_ok());
        assert!(parse_key_file("not hex or base64 ***").is_err());
    }
}

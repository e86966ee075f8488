//! Fuzz targets of the TLS crate. This module holds the record deframer
//! and receive path target ([`deframe_target`]), its seed corpus, and the
//! invariants it checks; [`handshake()`] (the server handshake feed, see
//! `fuzz/handshake_feed.rs`) and [`records()`] (seal/open round trips, see
//! `fuzz/records.rs` and `fuzz/layer.rs`) document theirs where they live.
//!
//! Stable Rust has no cargo-fuzz, so the target is a plain function:
//! `tls/fuzz/corpus/deframe/` is replayed by `cargo test`, and a seeded
//! mutation test (tests/mutation.rs) drives it with mutated seeds. Any
//! fuzzer that calls [`deframe_target`] with arbitrary bytes can use it.
//!
//! Input: byte 0 selects suite, side and how the stream is chunked; the
//! rest is the byte stream from the peer. Keys are fixed (see
//! [`fuzz_secrets`]), so seeds built with them reach past authentication.
//!
//! Invariants, checked with `assert!` (a violation is a finding):
//! - no panic, and progress: every call consumes bytes or asks for more;
//! - every application byte delivered comes from a record that an
//!   independent one-shot AEAD (OpenSSL `symm::decrypt_aead`, with the nonce
//!   and AAD built separately from the kTLS view of the keys) authenticates
//!   and decrypts to exactly those bytes;
//! - an error is final, counted once by kind, and queues its alert.
//!
//! [`reference_open`] and [`reference_seal13`], the independent one-shot
//! AEAD, also serve the tests.

mod handshake_feed;
mod input;
mod layer;
mod records;

pub use handshake_feed::{
    ALPN_OFFERS, ClientVariant, HandshakeOutcome, HandshakeSeed, MAX_SERVER_OUTPUT, client_hello,
    handshake, handshake_seeds,
};
pub use input::Cursor;
pub use records::{RecordsOutcome, RecordsSeed};

/// The record round-trip fuzz target: byte 0 picks the mode (see
/// `records`), the rest is its script.
pub fn records(data: &[u8]) -> RecordsOutcome {
    let mut c = Cursor::new(data);
    let sel = records::Selector::decode(c.u8());
    if sel.layer_mode {
        layer::layer_round_trip(sel.suite, sel.start_seq, sel.chunk, &mut c)
    } else {
        records::sealer_against_opener(sel, &mut c)
    }
}

/// The seed corpus of both modes of [`records`].
pub fn records_seeds() -> Vec<RecordsSeed> {
    let mut seeds = records::sealer_seeds();
    seeds.extend(layer::layer_seeds());
    seeds
}

use openssl::error::ErrorStack;
use openssl::symm;

use crate::conn::{Incoming, Limits, RecordLayer};
use crate::keys::{Secret, SecretMaterial, Secrets, TrafficKeys};
use crate::ktls::{CryptoInfo, Direction};
use crate::record::{ContentType, HEADER_LEN, RecordHeader, Sealer};
use crate::suite::{Aead, CipherSuite, ProtocolVersion, Side};

/// Suites selected by the low two bits of byte 0.
pub const FUZZ_SUITES: [CipherSuite; 4] = [
    CipherSuite::Tls13Aes128GcmSha256,
    CipherSuite::Tls13Chacha20Poly1305Sha256,
    CipherSuite::EcdheEcdsaAes128GcmSha256,
    CipherSuite::EcdheRsaChacha20Poly1305,
];

/// Chunk sizes selected by bits 3..5 of byte 0.
const CHUNKS: [usize; 4] = [usize::MAX, 1, 7, 300];

/// Decoded selector byte.
#[derive(Debug, Clone, Copy)]
pub struct Selector {
    /// The suite.
    pub suite: CipherSuite,
    /// The side the receiver plays.
    pub side: Side,
    /// How many bytes arrive per read.
    pub chunk: usize,
}

impl Selector {
    /// Decode byte 0.
    pub fn decode(b: u8) -> Self {
        Selector {
            suite: FUZZ_SUITES[usize::from(b & 3)],
            side: if b & 4 == 0 {
                Side::Server
            } else {
                Side::Client
            },
            chunk: CHUNKS[usize::from((b >> 3) & 3)],
        }
    }

    /// Encode (inverse of `decode` for valid fields).
    pub fn encode(suite: CipherSuite, side: Side, chunk_idx: u8) -> u8 {
        let s = FUZZ_SUITES.iter().position(|&x| x == suite).unwrap_or(0) as u8;
        s | if side == Side::Client { 4 } else { 0 } | (chunk_idx & 3) << 3
    }
}

/// Fixed secrets for `suite` as seen from `side`, sequence numbers 0.
pub fn fuzz_secrets(suite: CipherSuite, side: Side) -> Secrets {
    let n = suite.hash().len();
    let material = match suite.version() {
        ProtocolVersion::Tls13 => SecretMaterial::Tls13 {
            client: Secret::new(&vec![0x11; n]).expect("fits"),
            server: Secret::new(&vec![0x22; n]).expect("fits"),
        },
        ProtocolVersion::Tls12 => SecretMaterial::Tls12 {
            master: Secret::new(&[0x33; 48]).expect("fits"),
            client_random: [0x44; 32],
            server_random: [0x55; 32],
        },
    };
    Secrets::new(side, suite, material)
}

/// Limits for the fuzz receiver: small enough that the corpus reaches them.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_handshake_message_len: 4096,
        max_empty_records: 4,
        ..Limits::default()
    }
}

/// What one run of the target saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Application bytes delivered, in order.
    pub delivered: Vec<u8>,
    /// The peer's close_notify arrived.
    pub closed: bool,
    /// The error that ended the run, by name.
    pub error: Option<&'static str>,
    /// Bytes of control output (KeyUpdate answers, alerts).
    pub output_len: usize,
}

/// The one-shot (`symm`) cipher of an AEAD, for the reference functions.
fn symm_cipher(aead: Aead) -> symm::Cipher {
    match aead {
        Aead::Aes128Gcm => symm::Cipher::aes_128_gcm(),
        Aead::Aes256Gcm => symm::Cipher::aes_256_gcm(),
        Aead::Chacha20Poly1305 => symm::Cipher::chacha20_poly1305(),
    }
}

/// Seal one TLS 1.3 record with an independent one-shot AEAD
/// (`symm::encrypt_aead`) under `keys` at sequence number `seq`. `inner` is
/// the whole inner plaintext (content ‖ type ‖ zeros), so callers can pad
/// it, give it any type, or leave the type out; it must stay under 2^16 - 16
/// bytes.
pub fn reference_seal13(
    suite: CipherSuite,
    keys: &TrafficKeys,
    seq: u64,
    inner: &[u8],
) -> Result<Vec<u8>, ErrorStack> {
    let mut nonce = keys.iv().to_vec();
    for (b, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    let len = u16::try_from(inner.len() + Aead::TAG_LEN).expect("inner plaintext under 2^16 - 16");
    let [len_hi, len_lo] = len.to_be_bytes();
    let header = [ContentType::ApplicationData.code(), 3, 3, len_hi, len_lo];
    let mut tag = [0u8; Aead::TAG_LEN];
    let ct = symm::encrypt_aead(
        symm_cipher(suite.aead()),
        keys.key(),
        Some(&nonce),
        &header,
        inner,
        &mut tag,
    )?;
    let mut rec = header.to_vec();
    rec.extend_from_slice(&ct);
    rec.extend_from_slice(&tag);
    Ok(rec)
}

/// Open one record with an independent one-shot AEAD, from the kTLS view of
/// the receive keys. Returns the content type and content, or `None`.
pub fn reference_open(suite: CipherSuite, rx: &CryptoInfo, record: &[u8]) -> Option<(u8, Vec<u8>)> {
    let h = RecordHeader::parse(record)?;
    let (key, salt, iv, seq): (&[u8], &[u8], &[u8], [u8; 8]) = match rx {
        CryptoInfo::AesGcm128(c) => (&c.key, &c.salt, &c.iv, c.rec_seq),
        CryptoInfo::AesGcm256(c) => (&c.key, &c.salt, &c.iv, c.rec_seq),
        CryptoInfo::Chacha20Poly1305(c) => (&c.key, &[], &c.iv, c.rec_seq),
    };
    let cipher = symm_cipher(suite.aead());
    let body = record.get(HEADER_LEN..)?;
    if body.len() != h.len {
        return None;
    }
    let mut nonce: Vec<u8> = salt.iter().chain(iv).copied().collect();
    let tls12_gcm = suite.tls12_explicit_nonce();
    let body = if tls12_gcm {
        nonce[4..].copy_from_slice(body.get(..8)?);
        &body[8..]
    } else {
        for (n, s) in nonce[4..].iter_mut().zip(seq) {
            *n ^= s;
        }
        body
    };
    if body.len() < 16 {
        return None;
    }
    let (ct, tag) = body.split_at(body.len() - 16);
    let mut aad = Vec::new();
    if suite.version() == ProtocolVersion::Tls13 {
        aad.extend_from_slice(&record[..HEADER_LEN]);
    } else {
        aad.extend_from_slice(&seq);
        aad.push(h.content_type);
        aad.extend_from_slice(&record[1..3]);
        aad.extend_from_slice(&(ct.len() as u16).to_be_bytes());
    }
    let mut pt = symm::decrypt_aead(cipher, key, Some(&nonce), &aad, ct, tag).ok()?;
    if suite.version() == ProtocolVersion::Tls13 {
        let at = pt.iter().rposition(|&b| b != 0)?;
        let ty = pt[at];
        pt.truncate(at);
        Some((ty, pt))
    } else {
        Some((h.content_type, pt))
    }
}

/// The fuzz target.
pub fn deframe_target(data: &[u8]) -> Outcome {
    let Some((&sel, stream)) = data.split_first() else {
        return Outcome::default();
    };
    let sel = Selector::decode(sel);
    let mut rl = RecordLayer::new(&fuzz_secrets(sel.suite, sel.side), fuzz_limits())
        .expect("fixed secrets are valid");
    let mut outcome = Outcome::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut out = Vec::new();
    'reads: while fed < stream.len() {
        let n = sel.chunk.min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        let mut pos = 0;
        loop {
            let before = rl.ktls_crypto_info(Direction::Rx);
            let whole = RecordHeader::parse(&buf[pos..])
                .filter(|h| buf.len() - pos >= h.total_len())
                .map(|h| buf[pos..pos + h.total_len()].to_vec());
            let remaining = buf.len() - pos;
            match rl.open_next(&mut buf[pos..]) {
                Ok(o) => {
                    assert!(o.consumed <= remaining, "consumed past the buffer");
                    match o.incoming {
                        Incoming::NeedMore => {
                            assert_eq!(o.consumed, 0);
                            break;
                        }
                        Incoming::AppData(d) => {
                            let rec = whole.expect("data only from a whole record");
                            assert_eq!(o.consumed, rec.len());
                            let (ty, content) = reference_open(sel.suite, &before, &rec)
                                .expect("delivered data must authenticate independently");
                            assert_eq!(ty, 23, "delivered a non-data record as data");
                            assert_eq!(&content[..], &d[..], "delivered bytes differ");
                            outcome.delivered.extend_from_slice(d);
                        }
                        Incoming::Control => {
                            let rec = whole.expect("control only from a whole record");
                            assert!(reference_open(sel.suite, &before, &rec).is_some());
                        }
                        Incoming::CloseNotify => {
                            outcome.closed = true;
                            break 'reads;
                        }
                    }
                    assert!(o.consumed > 0, "no progress");
                    pos += o.consumed;
                }
                Err(e) => {
                    assert!(rl.failed());
                    assert_eq!(rl.stats().errors_of(e.kind()), 1);
                    let n = rl.poll_output(&mut out);
                    if e.alert().is_some() {
                        assert!(n > 0, "{e}: no alert queued");
                    }
                    assert!(rl.open_next(&mut buf[pos..]).is_err(), "error not final");
                    outcome.error = Some(e.kind().name());
                    break 'reads;
                }
            }
        }
        buf.drain(..pos);
        let _ = rl.poll_output(&mut out);
    }
    let _ = rl.poll_output(&mut out);
    outcome.output_len = out.len();
    outcome
}

/// A seed: a named input and the application bytes it should deliver.
#[derive(Debug, Clone)]
pub struct Seed {
    /// File name in the corpus directory.
    pub name: String,
    /// The input (selector byte, then the stream).
    pub input: Vec<u8>,
    /// What the target delivers for it.
    pub delivered: Vec<u8>,
}

fn peer(suite: CipherSuite, receiver_side: Side, tx_seq: u64) -> RecordLayer {
    let side = match receiver_side {
        Side::Server => Side::Client,
        Side::Client => Side::Server,
    };
    let mut s = fuzz_secrets(suite, side);
    s.tx_seq = tx_seq;
    RecordLayer::new(&s, Limits::default()).expect("fixed secrets are valid")
}

/// The seed corpus, built deterministically from the fixed keys.
pub fn seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let text: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
    for (si, &suite) in FUZZ_SUITES.iter().enumerate() {
        for side in [Side::Server, Side::Client] {
            let tag = format!(
                "{}-{}",
                suite.name().to_lowercase().replace('_', "-"),
                if side == Side::Server { "srv" } else { "cli" }
            );
            let chunk = (si % 4) as u8;
            let sel = Selector::encode(suite, side, chunk);
            // Data in two writes, then close_notify.
            let mut p = peer(suite, side, 0);
            let mut s = vec![sel];
            p.write_app_data(&text[..100], &mut s).unwrap();
            p.write_app_data(&text[100..], &mut s).unwrap();
            p.send_close_notify().unwrap();
            let _ = p.poll_output(&mut s);
            seeds.push(Seed {
                name: format!("{tag}-data-close"),
                input: s,
                delivered: text.clone(),
            });
            if suite.version() == ProtocolVersion::Tls13 {
                // KeyUpdate (requested) between data, then more data.
                let mut p = peer(suite, side, 0);
                let mut s = vec![sel];
                p.write_app_data(b"before", &mut s).unwrap();
                p.request_key_update(true).unwrap();
                let _ = p.poll_output(&mut s);
                p.write_app_data(b"after", &mut s).unwrap();
                seeds.push(Seed {
                    name: format!("{tag}-keyupdate"),
                    input: s,
                    delivered: b"beforeafter".to_vec(),
                });
            }
            if suite.version() == ProtocolVersion::Tls13 && side == Side::Client {
                // Two NewSessionTickets, the second split across records,
                // then data at seq 3 (the server's first data record
                // follows its tickets).
                let keys = fuzz_secrets(suite, Side::Server).derive().unwrap();
                let mut sealer = Sealer::new(suite, &keys.tx, 0).unwrap();
                let mut ticket = vec![4, 0, 0, 40];
                ticket.extend_from_slice(&[0x5a; 40]);
                let mut s = vec![sel];
                for part in [&ticket[..], &ticket[..10], &ticket[10..]] {
                    let mut rec = vec![0u8; part.len() + sealer.overhead()];
                    rec[HEADER_LEN..HEADER_LEN + part.len()].copy_from_slice(part);
                    let n = sealer
                        .seal_in_place(ContentType::Handshake, &mut rec, part.len())
                        .unwrap();
                    s.extend_from_slice(&rec[..n]);
                }
                let mut p = peer(suite, side, 3);
                p.write_app_data(b"after tickets", &mut s).unwrap();
                seeds.push(Seed {
                    name: format!("{tag}-tickets"),
                    input: s,
                    delivered: b"after tickets".to_vec(),
                });
            }
            // Empty records up to the limit, then data.
            let mut p = peer(suite, side, 0);
            let mut s = vec![sel];
            for _ in 0..4 {
                let mut rec = vec![0u8; p.tx_overhead()];
                let mut ctl = Vec::new();
                let n = p.seal_app_data_in_place(&mut rec, 0, &mut ctl).unwrap();
                s.extend_from_slice(&ctl);
                s.extend_from_slice(&rec[..n]);
            }
            p.write_app_data(b"x", &mut s).unwrap();
            seeds.push(Seed {
                name: format!("{tag}-empty-records"),
                input: s,
                delivered: b"x".to_vec(),
            });
        }
    }
    // Not TLS at all, and a header over the limit.
    for (name, bytes) in [
        (
            "http-request",
            b"\x00GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("oversize-header", vec![0, 23, 3, 3, 0x48, 0x01]),
        ("sslv2-hello", vec![1, 0x80, 0x2e, 0x01, 0x03, 0x01]),
        ("empty", vec![2]),
    ] {
        seeds.push(Seed {
            name: name.to_string(),
            input: bytes,
            delivered: Vec::new(),
        });
    }
    seeds
}

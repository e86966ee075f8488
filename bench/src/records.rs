//! `dpuproxy bench records`: record-layer seal/open throughput against raw
//! EVP, per suite and record size.
//!
//! "Ours" is the full per-record path of `dpuproxy_tls::RecordLayer`:
//! `seal_app_data_in_place` (state and key-limit checks, header, nonce,
//! AEAD, tag, counters) and `open_next` (deframing, limits, AEAD, content
//! type dispatch, counters). "Raw" is the least any AEAD record needs from
//! OpenSSL: one reused `EVP_CIPHER_CTX` per direction, and per record set
//! the nonce, feed the AAD, encrypt/decrypt in place, final, get/set tag,
//! over the same bytes the record's AEAD covers (in TLS 1.3 the payload
//! plus the inner content-type byte; that byte costs ChaCha20-Poly1305 a
//! partial block, which is the protocol's price, not the record layer's).
//! Both work in place on the same batch layout, so the ratio is the cost of
//! our record layer on top of the cipher. Sealing a batch and then opening
//! it leaves the plaintext back in place, so no copies are timed.
//!
//! Ours and raw alternate batch by batch for `--millis` per row, and each
//! figure is that side's fastest batch: on a shared machine the fastest
//! batch is the one least disturbed, and alternating exposes both sides to
//! the same disturbance. Build with `--release`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use dpuproxy_tls::{
    CipherSuite, Incoming, Limits, ProtocolVersion, RecordLayer, Secret, SecretMaterial, Secrets,
    Side,
};
use openssl::cipher_ctx::CipherCtx;

/// `dpuproxy bench records` arguments.
#[derive(clap::Args, Debug)]
pub struct RecordsArgs {
    /// Time budget per suite and size, in milliseconds.
    #[arg(long, default_value_t = 400)]
    pub millis: u64,
    /// Bytes of records per timed batch (kept cache-resident).
    #[arg(long, default_value_t = 256 * 1024)]
    pub batch_bytes: usize,
}

/// One suite per AEAD and version (the RSA TLS 1.2 variants protect records
/// exactly like the ECDSA ones).
const SUITES: [CipherSuite; 6] = [
    CipherSuite::Tls13Aes128GcmSha256,
    CipherSuite::Tls13Aes256GcmSha384,
    CipherSuite::Tls13Chacha20Poly1305Sha256,
    CipherSuite::EcdheEcdsaAes128GcmSha256,
    CipherSuite::EcdheEcdsaAes256GcmSha384,
    CipherSuite::EcdheEcdsaChacha20Poly1305,
];

const SIZES: [usize; 4] = [256, 1024, 4096, 16384];

fn size_label(size: usize) -> String {
    if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

fn random_secrets(suite: CipherSuite, side: Side, seed: &[u8; 48]) -> anyhow::Result<Secrets> {
    let n = suite.hash().len();
    let material = match suite.version() {
        ProtocolVersion::Tls13 => SecretMaterial::Tls13 {
            client: Secret::new(&seed[..n]).context("secret")?,
            server: Secret::new(&seed[48 - n..]).context("secret")?,
        },
        ProtocolVersion::Tls12 => SecretMaterial::Tls12 {
            master: Secret::new(seed).context("secret")?,
            client_random: [1; 32],
            server_random: [2; 32],
        },
    };
    Ok(Secrets::new(side, suite, material))
}

/// A batch of record slots, each `size + overhead` bytes, back to back.
struct Batch {
    buf: Vec<u8>,
    slot: usize,
    count: usize,
}

impl Batch {
    fn new(size: usize, overhead: usize, batch_bytes: usize) -> Self {
        let slot = size + overhead;
        let count = (batch_bytes / size).max(1);
        let mut buf = vec![0u8; slot * count];
        openssl::rand::rand_bytes(&mut buf).expect("RAND_bytes");
        Batch { buf, slot, count }
    }

    fn slots(&mut self) -> impl Iterator<Item = &mut [u8]> {
        self.buf.chunks_exact_mut(self.slot)
    }
}

/// Our record layer, sender and receiver in lockstep.
struct Ours {
    tx: RecordLayer,
    rx: RecordLayer,
    ctl: Vec<u8>,
}

impl Ours {
    fn new(suite: CipherSuite) -> anyhow::Result<Self> {
        let mut seed = [0u8; 48];
        openssl::rand::rand_bytes(&mut seed)?;
        // No limit-driven KeyUpdate inside a timed batch.
        let limits = Limits {
            key_update_after_records: Some(u64::MAX - 1),
            ..Limits::default()
        };
        Ok(Ours {
            tx: RecordLayer::new(&random_secrets(suite, Side::Client, &seed)?, limits.clone())?,
            rx: RecordLayer::new(&random_secrets(suite, Side::Server, &seed)?, limits)?,
            ctl: Vec::new(),
        })
    }

    fn seal(&mut self, batch: &mut Batch, size: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        for slot in batch.slots() {
            self.tx.seal_app_data_in_place(slot, size, &mut self.ctl)?;
        }
        let d = t.elapsed();
        ensure!(self.ctl.is_empty(), "unexpected control records");
        Ok(d)
    }

    fn open(&mut self, batch: &mut Batch, size: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        for slot in batch.slots() {
            let o = self.rx.open_next(slot)?;
            match o.incoming {
                Incoming::AppData(d) if d.len() == size => {}
                other => bail!("unexpected {other:?}"),
            }
        }
        Ok(t.elapsed())
    }
}

/// Raw EVP, one reused context per direction.
struct Raw {
    enc: CipherCtx,
    dec: CipherCtx,
    seq_enc: u64,
    seq_dec: u64,
    layout: RawLayout,
}

/// What every raw record shares, sealed or opened.
struct RawLayout {
    iv: [u8; 12],
    header_len: usize,
    aad: [u8; 13],
    aad_len: usize,
    /// TLS 1.3 seals the inner content type byte with the payload.
    inner_type_len: usize,
}

impl RawLayout {
    fn aad(&self) -> &[u8] {
        &self.aad[..self.aad_len]
    }

    /// The nonce for `seq`, and the bytes the AEAD covers and the tag of
    /// `slot`, a record of `size` payload bytes.
    fn record<'s>(
        &self,
        slot: &'s mut [u8],
        size: usize,
        seq: u64,
    ) -> ([u8; 12], &'s mut [u8], &'s mut [u8]) {
        let mut nonce = self.iv;
        for (b, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        let (data, tag) = slot[self.header_len..].split_at_mut(size + self.inner_type_len);
        (nonce, data, &mut tag[..16])
    }
}

impl Raw {
    fn new(suite: CipherSuite, header_len: usize) -> anyhow::Result<Self> {
        let mut key = vec![0u8; suite.aead().key_len()];
        openssl::rand::rand_bytes(&mut key)?;
        let cipher = suite.aead().cipher();
        let mut enc = CipherCtx::new()?;
        enc.encrypt_init(Some(cipher), Some(&key), None)?;
        let mut dec = CipherCtx::new()?;
        dec.decrypt_init(Some(cipher), Some(&key), None)?;
        let tls13 = suite.version() == ProtocolVersion::Tls13;
        Ok(Raw {
            enc,
            dec,
            seq_enc: 0,
            seq_dec: 0,
            layout: RawLayout {
                iv: [7u8; 12],
                header_len,
                aad: [0x17; 13],
                aad_len: if tls13 { 5 } else { 13 },
                inner_type_len: usize::from(tls13),
            },
        })
    }

    fn seal(&mut self, batch: &mut Batch, size: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        for slot in batch.slots() {
            let (nonce, data, tag) = self.layout.record(slot, size, self.seq_enc);
            self.seq_enc += 1;
            let n = data.len();
            self.enc.encrypt_init(None, None, Some(&nonce))?;
            self.enc.cipher_update(self.layout.aad(), None)?;
            self.enc.cipher_update_inplace(data, n)?;
            self.enc.cipher_final(&mut [])?;
            self.enc.tag(tag)?;
        }
        Ok(t.elapsed())
    }

    fn open(&mut self, batch: &mut Batch, size: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        for slot in batch.slots() {
            let (nonce, data, tag) = self.layout.record(slot, size, self.seq_dec);
            self.seq_dec += 1;
            let n = data.len();
            self.dec.decrypt_init(None, None, Some(&nonce))?;
            self.dec.cipher_update(self.layout.aad(), None)?;
            self.dec.cipher_update_inplace(data, n)?;
            self.dec.set_tag(tag)?;
            self.dec.cipher_final(&mut []).context("raw tag check")?;
        }
        Ok(t.elapsed())
    }
}

#[derive(Clone, Copy)]
struct Best {
    seal: Duration,
    open: Duration,
    raw_seal: Duration,
    raw_open: Duration,
    batches: u32,
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-12) / 1e9
}

/// Alternate ours and raw batch by batch, so both meet the same
/// interference, and keep each one's fastest batch.
fn measure(suite: CipherSuite, size: usize, args: &RecordsArgs) -> anyhow::Result<(Best, usize)> {
    let mut ours = Ours::new(suite)?;
    let header_len = ours.tx.tx_header_len();
    let mut batch = Batch::new(size, ours.tx.tx_overhead(), args.batch_bytes);
    let mut raw = Raw::new(suite, header_len)?;
    let mut raw_batch = Batch::new(size, ours.tx.tx_overhead(), args.batch_bytes);
    let bytes = size * batch.count;
    let budget = Duration::from_millis(args.millis);
    let start = Instant::now();
    let mut best = Best {
        seal: Duration::MAX,
        open: Duration::MAX,
        raw_seal: Duration::MAX,
        raw_open: Duration::MAX,
        batches: 0,
    };
    while best.batches < 3 || start.elapsed() < budget {
        best.seal = best.seal.min(ours.seal(&mut batch, size)?);
        best.raw_seal = best.raw_seal.min(raw.seal(&mut raw_batch, size)?);
        best.open = best.open.min(ours.open(&mut batch, size)?);
        best.raw_open = best.raw_open.min(raw.open(&mut raw_batch, size)?);
        best.batches += 1;
    }
    Ok((best, bytes))
}

/// Run the benchmark.
pub fn run(args: &RecordsArgs) -> anyhow::Result<()> {
    ensure!(args.batch_bytes > 0, "batch size must be positive");
    if cfg!(debug_assertions) {
        eprintln!("note: this is a debug build; figures are only meaningful with --release");
    }
    println!(
        "record layer vs raw EVP: GB/s of payload, in place, fastest of interleaved {} KiB batches ({} ms per row)",
        args.batch_bytes / 1024,
        args.millis
    );
    println!(
        "{:<30} {:>6} {:>8} {:>8} {:>6} {:>8} {:>8} {:>6} {:>8}",
        "suite", "size", "seal", "raw-enc", "ratio", "open", "raw-dec", "ratio", "batches"
    );
    let mut worst_16k = f64::INFINITY;
    let mut worst_1k = f64::INFINITY;
    // Our seal + open per record (ns) for the suite OpenSSL's path is
    // compared with below.
    let mut ours_ns = Vec::new();
    for suite in SUITES {
        for size in SIZES {
            let (b, bytes) = measure(suite, size, args)?;
            let (seal, raw_seal) = (gbps(bytes, b.seal), gbps(bytes, b.raw_seal));
            let (open, raw_open) = (gbps(bytes, b.open), gbps(bytes, b.raw_open));
            if suite == CipherSuite::Tls13Aes128GcmSha256 {
                let records = (bytes / size) as f64;
                ours_ns.push((size, (b.seal + b.open).as_secs_f64() * 1e9 / records));
            }
            let (rs, ro) = (seal / raw_seal, open / raw_open);
            println!(
                "{:<30} {:>6} {:>8.2} {:>8.2} {:>6.2} {:>8.2} {:>8.2} {:>6.2} {:>8}",
                suite.name(),
                size_label(size),
                seal,
                raw_seal,
                rs,
                open,
                raw_open,
                ro,
                b.batches
            );
            match size {
                16384 => worst_16k = worst_16k.min(rs.min(ro)),
                1024 => worst_1k = worst_1k.min(rs.min(ro)),
                _ => {}
            }
        }
    }
    println!(
        "OpenSSL's record path (SSL_write + SSL_read over memory pipes) vs ours (seal + open in place), {}, ns per record:",
        CipherSuite::Tls13Aes128GcmSha256.name()
    );
    println!(
        "{:>6} {:>10} {:>10} {:>7}",
        "size", "openssl", "ours", "ratio"
    );
    for (size, ours) in ours_ns {
        let ssl = crate::records_ssl::ssl_ns_per_record(
            size,
            args.batch_bytes,
            Duration::from_millis(args.millis),
        )?;
        println!(
            "{:>6} {:>10.0} {:>10.0} {:>7.2}",
            size_label(size),
            ssl,
            ours,
            ssl / ours
        );
    }
    println!("worst ratio vs raw EVP: 16KiB {worst_16k:.2}, 1KiB {worst_1k:.2}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload bytes of every slot, concatenated.
    fn payloads(batch: &mut Batch, header_len: usize, size: usize) -> Vec<u8> {
        batch
            .slots()
            .flat_map(|slot| slot[header_len..header_len + size].to_vec())
            .collect()
    }

    #[test]
    fn ours_and_raw_both_round_trip_every_suite() {
        // Both sides seal a batch in place and open it again: in between
        // the payload is ciphertext, after it is exactly what it was (ours
        // and raw both check the tag). Two rounds, so the sequence numbers
        // carry over. Then a whole measurement must run cleanly.
        let args = RecordsArgs {
            millis: 0,
            batch_bytes: 8 * 1024,
        };
        for suite in SUITES {
            for size in [256, 16384] {
                let mut ours = Ours::new(suite).unwrap();
                let hl = ours.tx.tx_header_len();
                let overhead = ours.tx.tx_overhead();
                let mut raw = Raw::new(suite, hl).unwrap();
                let mut batch = Batch::new(size, overhead, args.batch_bytes);
                let mut raw_batch = Batch::new(size, overhead, args.batch_bytes);
                let before = payloads(&mut batch, hl, size);
                let raw_before = payloads(&mut raw_batch, hl, size);
                for round in 0..2 {
                    ours.seal(&mut batch, size).unwrap();
                    raw.seal(&mut raw_batch, size).unwrap();
                    assert_ne!(
                        payloads(&mut batch, hl, size),
                        before,
                        "{suite} {size}: ours sealed nothing"
                    );
                    assert_ne!(
                        payloads(&mut raw_batch, hl, size),
                        raw_before,
                        "{suite} {size}: raw sealed nothing"
                    );
                    ours.open(&mut batch, size).unwrap();
                    raw.open(&mut raw_batch, size).unwrap();
                    assert_eq!(
                        payloads(&mut batch, hl, size),
                        before,
                        "{suite} {size}: ours, round {round}"
                    );
                    assert_eq!(
                        payloads(&mut raw_batch, hl, size),
                        raw_before,
                        "{suite} {size}: raw, round {round}"
                    );
                }
                let (b, bytes) = measure(suite, size, &args).unwrap();
                assert_eq!(bytes, size * batch.count, "figures count payload bytes");
                assert!(b.seal > Duration::ZERO && b.raw_open > Duration::ZERO);
            }
        }
    }
}

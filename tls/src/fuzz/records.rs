//! Round-trip fuzz target for the record layer: what we seal, we open to
//! the same bytes, and a single flipped bit is refused.
//!
//! Input: byte 0 selects the suite (any of [`CipherSuite::ALL`]), the mode,
//! the starting sequence number and how the stream arrives; the rest is a
//! script. Keys are the fixed ones of [`super::fuzz_secrets`].
//!
//! Two modes:
//! - **records**: [`Sealer`] and [`Opener`] directly. Each step seals one
//!   record of a fuzzer-chosen content type and size (sizes over 2^14 must
//!   be refused by the sealer, without using a sequence number); the stream
//!   is deframed ([`next_record`]) as it arrives and opened.
//! - **layer**: two [`RecordLayer`]s, one per side. Steps write
//!   fuzzer-chosen chunks (`write_app_data_vectored`, coalesced into records
//!   of at most `max_fragment_len`), seal single records in place, request
//!   KeyUpdates, close, and deliver what is in flight; the receiver's
//!   answers (KeyUpdate) go back to the sender.
//!
//! Invariants, checked with `assert!` (a violation is a finding):
//! - open(seal(x)) == x for every record: same content type and plaintext,
//!   opened at the sequence number it was sealed at; a TLS 1.2
//!   ChangeCipherSpec record (never valid after the handshake) is refused;
//! - sequence numbers stay in step: sealer and opener (or the two layers,
//!   both ways) agree once everything is delivered, and the counters of
//!   records, application bytes and KeyUpdates agree;
//! - the layer never sends a record with more than `max_fragment_len` bytes
//!   of data, delivers exactly the bytes written before close_notify, and
//!   refuses a run of empty records exactly when it exceeds the limit;
//! - one fuzzer-chosen bit flipped in the sealed stream: every record
//!   before the one holding the bit still opens to the same bytes, that one
//!   is refused (an error, or a length that never completes), and nothing
//!   from it or from later records is delivered.

use super::fuzz_secrets;
use super::input::{Cursor, chunks};
use crate::conn::{Incoming, Limits, RecordLayer};
use crate::error::TlsError;
use crate::keys::Secrets;
use crate::record::{ContentType, MAX_PLAINTEXT, Opener, RecordHeader, Sealer, next_record};
use crate::suite::{CipherSuite, ProtocolVersion, Side};

/// Sequence numbers a run starts at: fresh keys, just under the AES-GCM
/// rekey limit, and the end of the sequence space.
const START_SEQS: [u64; 4] = [0, 1, (1 << 24) - 2, u64::MAX - 2];

/// Bytes per read on the receiving side.
const CHUNKS: [usize; 4] = [usize::MAX, 1, 13, 1000];

/// Most records sealed per run, and most plaintext bytes: they keep one
/// execution cheap.
const MAX_RECORDS: usize = 48;
const MAX_TOTAL_PLAINTEXT: usize = 48 * 1024;

/// Decoded selector byte.
#[derive(Debug, Clone, Copy)]
pub(super) struct Selector {
    pub(super) suite: CipherSuite,
    pub(super) layer_mode: bool,
    pub(super) start_seq: u64,
    pub(super) chunk: usize,
}

impl Selector {
    pub(super) fn decode(b: u8) -> Self {
        Selector {
            suite: CipherSuite::ALL[usize::from(b & 0x0f) % CipherSuite::ALL.len()],
            layer_mode: b & 0x10 != 0,
            start_seq: START_SEQS[usize::from((b >> 5) & 3)],
            chunk: CHUNKS[usize::from(b >> 7) * 2 + usize::from(b & 1)],
        }
    }

    /// Encode (inverse of `decode` for the fields it keeps).
    pub(super) fn encode(suite: CipherSuite, layer_mode: bool, seq_idx: u8, slow: bool) -> u8 {
        let s = CipherSuite::ALL
            .iter()
            .position(|&x| x == suite)
            .unwrap_or(0) as u8;
        s | u8::from(layer_mode) << 4 | (seq_idx & 3) << 5 | u8::from(slow) << 7
    }
}

/// What one run of the target saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordsOutcome {
    /// Records that round-tripped.
    pub records: usize,
    /// Application or record plaintext bytes that round-tripped.
    pub bytes: usize,
    /// KeyUpdates that went across (layer mode).
    pub key_updates: u64,
    /// The flipped bit was refused.
    pub corruption_refused: bool,
}

/// A plaintext size: small, medium, near the 2^14 limit, or over it.
pub(super) fn plaintext_len(c: &mut Cursor<'_>) -> usize {
    let b = c.u8();
    let low = usize::from(b & 0x3f);
    match b >> 6 {
        0 => low,
        1 => low * 64 + usize::from(c.u8()),
        2 => MAX_PLAINTEXT - low,
        _ => MAX_PLAINTEXT + low,
    }
}

/// A record as sealed: where it lies in the stream and what it holds.
#[derive(Debug, Clone)]
struct Sealed {
    end: usize,
    content_type: u8,
    plaintext: Vec<u8>,
}

const TYPES: [ContentType; 4] = [
    ContentType::ChangeCipherSpec,
    ContentType::Alert,
    ContentType::Handshake,
    ContentType::ApplicationData,
];

/// Seal the script's records into one stream. Stops after a TLS 1.2
/// ChangeCipherSpec (the opener must refuse it, so nothing after it can
/// open) and when the sequence space or the budget runs out.
fn seal_script(
    sealer: &mut Sealer,
    suite: CipherSuite,
    c: &mut Cursor<'_>,
) -> (Vec<u8>, Vec<Sealed>) {
    let (mut stream, mut sealed, mut total) = (Vec::new(), Vec::new(), 0);
    while !c.is_empty() && sealed.len() < MAX_RECORDS && total < MAX_TOTAL_PLAINTEXT {
        let op = c.u8();
        let ct = TYPES[usize::from(op & 3)];
        let len = plaintext_len(c);
        // Bit 2: the first bytes of the plaintext come from the input.
        let payload = c.payload(len, usize::from(op & 4) * 4, op);
        let seq = sealer.seq();
        let mut rec = vec![0u8; len + sealer.overhead()];
        let hl = sealer.header_len();
        rec[hl..hl + len].copy_from_slice(&payload);
        match sealer.seal_in_place(ct, &mut rec, len) {
            Ok(n) => {
                assert_eq!(n, rec.len(), "sealed length");
                assert_eq!(sealer.seq(), seq + 1, "seal must use one sequence number");
                let outer = match suite.version() {
                    ProtocolVersion::Tls13 => ContentType::ApplicationData,
                    ProtocolVersion::Tls12 => ct,
                };
                assert_eq!(rec[0], outer.code(), "outer content type");
                stream.extend_from_slice(&rec);
                sealed.push(Sealed {
                    end: stream.len(),
                    content_type: ct.code(),
                    plaintext: payload,
                });
                total += len;
                if ct == ContentType::ChangeCipherSpec && suite.version() == ProtocolVersion::Tls12
                {
                    break;
                }
            }
            Err(TlsError::RecordOverflow { .. }) if len > MAX_PLAINTEXT => {
                assert_eq!(
                    sealer.seq(),
                    seq,
                    "a refused seal must not use a sequence number"
                );
            }
            Err(TlsError::KeyExhausted(_)) if seq == u64::MAX => break,
            Err(e) => panic!("sealing {len} bytes of {ct:?} at seq {seq} failed: {e}"),
        }
    }
    (stream, sealed)
}

/// Whether `opener` must refuse a record of this type (TLS 1.2 allows no
/// ChangeCipherSpec after the handshake).
fn refused_type(suite: CipherSuite, content_type: u8) -> bool {
    suite.version() == ProtocolVersion::Tls12
        && content_type == ContentType::ChangeCipherSpec.code()
}

/// Open `stream` as it arrives in `chunk`-byte reads; returns the records
/// opened, stopping at the first failure (a deframing error, an open
/// error, or a record that never completes).
fn open_stream(
    opener: &mut Opener,
    version: ProtocolVersion,
    stream: &[u8],
    chunk: usize,
) -> Vec<(u8, Vec<u8>, u64)> {
    let mut opened = Vec::new();
    let mut buf = Vec::new();
    for read in chunks(stream, chunk) {
        buf.extend_from_slice(read);
        let mut pos = 0;
        while let Ok(Some(n)) = next_record(&buf[pos..], version) {
            let seq = opener.seq();
            let Ok(rec) = opener.open_in_place(&mut buf[pos..pos + n]) else {
                assert_eq!(
                    opener.seq(),
                    seq,
                    "a failed open must not use a sequence number"
                );
                return opened;
            };
            assert_eq!(rec.seq, seq);
            opened.push((rec.content_type, rec.plaintext.to_vec(), rec.seq));
            pos += n;
        }
        if next_record(&buf[pos..], version).is_err() {
            return opened;
        }
        buf.drain(..pos);
    }
    opened
}

/// Flip bit `bit` (modulo the bits of the records that opened) and check
/// that exactly the records before it still open.
fn check_corruption(
    suite: CipherSuite,
    keys: &crate::keys::TrafficKeys,
    start_seq: u64,
    stream: &[u8],
    sealed: &[Sealed],
    bit: u32,
    chunk: usize,
) -> bool {
    let Some(last) = sealed.last() else {
        return false;
    };
    let bits = last.end * 8;
    let bit = bit as usize % bits;
    let mut bad = stream[..last.end].to_vec();
    bad[bit / 8] ^= 1 << (bit % 8);
    let hit = sealed
        .iter()
        .position(|s| bit / 8 < s.end)
        .expect("bit inside a record");
    let mut opener = Opener::new(suite, keys, start_seq).expect("fixed keys");
    let opened = open_stream(&mut opener, suite.version(), &bad, chunk);
    assert_eq!(
        opened.len(),
        hit,
        "records opened around a flipped bit in record {hit}"
    );
    for (o, s) in opened.iter().zip(sealed) {
        assert_eq!(
            (o.0, &o.1),
            (s.content_type, &s.plaintext),
            "record before the flip"
        );
    }
    assert_eq!(opener.seq(), start_seq + hit as u64);
    true
}

/// Mode "records": [`Sealer`] against [`Opener`].
/// The records mode of the target (see [`super::records`] for the dispatch).
pub(super) fn sealer_against_opener(sel: Selector, c: &mut Cursor<'_>) -> RecordsOutcome {
    let keys = fuzz_secrets(sel.suite, Side::Client)
        .derive()
        .expect("fixed secrets derive");
    let mut sealer = Sealer::new(sel.suite, &keys.tx, sel.start_seq).expect("fixed keys");
    let bit = c.u32();
    let (stream, mut sealed) = seal_script(&mut sealer, sel.suite, c);
    let mut opener = Opener::new(sel.suite, &keys.tx, sel.start_seq).expect("fixed keys");
    let opened = open_stream(&mut opener, sel.suite.version(), &stream, sel.chunk);
    let refused_last = sealed
        .last()
        .is_some_and(|s| refused_type(sel.suite, s.content_type));
    assert_eq!(
        opened.len() + usize::from(refused_last),
        sealed.len(),
        "every sealed record opens"
    );
    for (i, (o, s)) in opened.iter().zip(&sealed).enumerate() {
        assert_eq!(o.0, s.content_type, "record {i}: content type");
        assert_eq!(o.1, s.plaintext, "record {i}: plaintext");
        assert_eq!(o.2, sel.start_seq + i as u64, "record {i}: sequence number");
    }
    assert_eq!(
        opener.seq() + u64::from(refused_last),
        sealer.seq(),
        "sequence numbers in step"
    );
    if refused_last {
        sealed.pop();
    }
    let bytes = sealed.iter().map(|s| s.plaintext.len()).sum();
    let corruption_refused = check_corruption(
        sel.suite,
        &keys.tx,
        sel.start_seq,
        &stream,
        &sealed,
        bit,
        sel.chunk,
    );
    RecordsOutcome {
        records: sealed.len(),
        bytes,
        key_updates: 0,
        corruption_refused,
    }
}

/// Secrets for one side of the fixed keys, starting both directions at `seq`.
pub(super) fn secrets_at(suite: CipherSuite, side: Side, seq: u64) -> Secrets {
    let mut s = fuzz_secrets(suite, side);
    s.tx_seq = seq;
    s.rx_seq = seq;
    s
}

/// Limits the layer mode's sender runs with, chosen by one byte.
pub(super) fn sender_limits(b: u8) -> Limits {
    const FRAGMENTS: [usize; 5] = [MAX_PLAINTEXT, 7, 100, 512, 4096];
    const REKEY: [Option<u64>; 3] = [None, Some(1), Some(3)];
    Limits {
        max_fragment_len: FRAGMENTS[usize::from(b & 7) % FRAGMENTS.len()],
        key_update_after_records: REKEY[usize::from((b >> 3) & 3) % REKEY.len()],
        ..Limits::default()
    }
}

/// A seed: a named input.
#[derive(Debug, Clone)]
pub struct RecordsSeed {
    /// File name in the corpus directory.
    pub name: String,
    /// The input.
    pub input: Vec<u8>,
}

/// Script bytes for a plaintext length that [`plaintext_len`] decodes back.
pub(super) fn encode_len(len: usize) -> Vec<u8> {
    match len {
        0..=63 => vec![len as u8],
        n if n > MAX_PLAINTEXT => vec![0xc0 | (n - MAX_PLAINTEXT).min(63) as u8],
        n if n >= MAX_PLAINTEXT - 63 => vec![0x80 | (MAX_PLAINTEXT - n) as u8],
        n => vec![0x40 | (n / 64).min(63) as u8, (n % 64) as u8],
    }
}

/// Seeds of the "records" mode: every suite, every content type, sizes at
/// the limits.
pub(super) fn sealer_seeds() -> Vec<RecordsSeed> {
    let mut seeds = Vec::new();
    for (i, &suite) in CipherSuite::ALL.iter().enumerate() {
        let seq_idx = (i % 4) as u8;
        let mut input = vec![Selector::encode(suite, false, seq_idx, i % 2 == 1)];
        input.extend_from_slice(&(0x0123_4567u32.wrapping_mul(i as u32 + 1)).to_be_bytes());
        for (op, len) in [
            (3u8, 5usize),
            (2, 0),
            (1, 2),
            (3, MAX_PLAINTEXT),
            (3, 300),
            (3, MAX_PLAINTEXT + 1),
            (2, 63),
        ] {
            input.push(op);
            input.extend(encode_len(len));
        }
        if suite.version() == ProtocolVersion::Tls12 {
            input.extend_from_slice(&[0, 1]);
        }
        seeds.push(RecordsSeed {
            name: format!("records-{}", suite.name().to_lowercase()),
            input,
        });
    }
    seeds
}

/// Whether a record header's length fits `max_fragment_len` of data.
pub(super) fn within_fragment_limit(
    record: &[u8],
    max_fragment_len: usize,
    overhead: usize,
) -> bool {
    RecordHeader::parse(record).is_some_and(|h| h.total_len() <= max_fragment_len + overhead)
}

/// What the receiving layer made of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seen {
    Data(Vec<u8>),
    Control,
    Close,
}

/// Feed `bytes` to `rx` (appending to its buffer `inbuf`); returns what
/// each whole record was, and the error that ended it, if any.
pub(super) fn receive(
    rx: &mut RecordLayer,
    inbuf: &mut Vec<u8>,
    bytes: &[u8],
) -> (Vec<(usize, Seen)>, Option<TlsError>) {
    inbuf.extend_from_slice(bytes);
    let mut seen = Vec::new();
    let mut pos = 0;
    let mut error = None;
    while !rx.peer_closed() {
        match rx.open_next(&mut inbuf[pos..]) {
            Ok(o) => {
                let n = o.consumed;
                let what = match o.incoming {
                    Incoming::NeedMore => break,
                    Incoming::AppData(d) => Seen::Data(d.to_vec()),
                    Incoming::Control => Seen::Control,
                    Incoming::CloseNotify => Seen::Close,
                };
                seen.push((n, what));
                pos += n;
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    inbuf.drain(..pos);
    (seen, error)
}

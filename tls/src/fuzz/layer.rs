//! The "layer" mode of the records target (see `records`): two
//! [`RecordLayer`]s, a sender on the client side and a receiver on the
//! server side, driven by a script.

use super::input::{Cursor, chunks};
use super::records::{
    RecordsOutcome, Seen, Selector, encode_len, plaintext_len, receive, secrets_at, sender_limits,
    within_fragment_limit,
};
use crate::conn::{Limits, RecordLayer};
use crate::error::{ErrorKind, TlsError};
use crate::handshake::split_records;
use crate::record::MAX_PLAINTEXT;
use crate::suite::{CipherSuite, ProtocolVersion, Side};

/// Most script steps, plaintext bytes written and records sealed per run
/// (with 7-byte fragments and a KeyUpdate before every record, records,
/// not bytes, are what costs).
const MAX_STEPS: usize = 48;
const MAX_WRITTEN: usize = 48 * 1024;
const MAX_RECORDS: u64 = 192;

/// Most records one part of a write may take.
const RECORDS_PER_PART: usize = 32;

/// Consecutive empty records the receiver accepts, chosen by one byte.
const EMPTY_LIMITS: [u32; 2] = [2, 32];

/// Both layers and what went between them.
struct Run {
    suite: CipherSuite,
    start_seq: u64,
    chunk: usize,
    tx: RecordLayer,
    rx: RecordLayer,
    rx_limits: Limits,
    /// Sealed by the sender, not yet delivered.
    wire: Vec<u8>,
    /// Everything the sender sent.
    transcript: Vec<u8>,
    rx_in: Vec<u8>,
    tx_in: Vec<u8>,
    /// Application bytes the sender sealed.
    written: Vec<u8>,
    /// What the receiver made of each record, in order.
    seen: Vec<(usize, Seen)>,
    /// Consecutive empty data records sealed.
    empty_run: u32,
    /// The receiver must refuse the run of empty records.
    expect_empty_run_refusal: bool,
}

impl Run {
    fn new(suite: CipherSuite, start_seq: u64, chunk: usize, limits_byte: u8) -> Self {
        let tx_secrets = secrets_at(suite, Side::Client, start_seq);
        let rx_secrets = secrets_at(suite, Side::Server, start_seq);
        let rx_limits = Limits {
            max_empty_records: EMPTY_LIMITS[usize::from((limits_byte >> 5) & 1)],
            ..Limits::default()
        };
        Run {
            suite,
            start_seq,
            chunk,
            tx: RecordLayer::new(&tx_secrets, sender_limits(limits_byte)).expect("fixed secrets"),
            rx: RecordLayer::new(&rx_secrets, rx_limits.clone()).expect("fixed secrets"),
            rx_limits,
            wire: Vec::new(),
            transcript: Vec::new(),
            rx_in: Vec::new(),
            tx_in: Vec::new(),
            written: Vec::new(),
            seen: Vec::new(),
            empty_run: 0,
            expect_empty_run_refusal: false,
        }
    }

    fn tls12(&self) -> bool {
        self.suite.version() == ProtocolVersion::Tls12
    }

    /// Whether a refused write is one the script may provoke: after close,
    /// or TLS 1.2 at its record limit (which closes the connection).
    fn expected_write_error(&self, e: &TlsError, was_closed: bool) -> bool {
        match e {
            TlsError::Closed(_) => was_closed,
            TlsError::KeyExhausted(_) => self.tls12() && self.tx.closed_for_writing(),
            _ => false,
        }
    }

    /// Account for the application bytes a write sealed (all of `data`, or
    /// the records sealed before it failed) and for runs of empty records.
    fn note_written(&mut self, data: &[u8], app_bytes_before: u64, records: u64) {
        let sealed = (self.tx.stats().app_bytes_out - app_bytes_before) as usize;
        self.written.extend_from_slice(&data[..sealed]);
        if sealed > 0 {
            self.empty_run = 0;
        } else if records > 0 {
            self.empty_run += 1;
            if self.empty_run > self.rx_limits.max_empty_records {
                self.expect_empty_run_refusal = true;
            }
        }
    }

    /// `write_app_data_vectored` of 1 to 4 fuzzer-sized parts.
    fn write_parts(&mut self, op: u8, c: &mut Cursor<'_>) {
        let n = 1 + usize::from(op / 6 % 4);
        let parts: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let most =
                    (RECORDS_PER_PART * self.tx.limits().max_fragment_len).min(2 * MAX_PLAINTEXT);
                let len = plaintext_len(c).min(most);
                c.payload(len, 0, op.wrapping_add(i as u8))
            })
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let data = parts.concat();
        let (closed, before) = (self.tx.closed_for_writing(), self.tx.stats().app_bytes_out);
        let mut out = Vec::new();
        let result = self.tx.write_app_data_vectored(&refs, &mut out);
        self.send(&out);
        if let Err(e) = &result {
            assert!(self.expected_write_error(e, closed), "write failed: {e}");
        } else {
            assert_eq!(self.tx.stats().app_bytes_out - before, data.len() as u64);
        }
        // Records of data only: each holds at least one byte.
        self.note_written(&data, before, 0);
    }

    /// `seal_app_data_in_place` of one fuzzer-sized record (empty allowed).
    fn seal_one(&mut self, op: u8, c: &mut Cursor<'_>) {
        let len = plaintext_len(c);
        let payload = c.payload(len, usize::from(op / 6 % 2) * 16, op);
        let (closed, before) = (self.tx.closed_for_writing(), self.tx.stats().app_bytes_out);
        let hl = self.tx.tx_header_len();
        let mut rec = vec![0u8; len + self.tx.tx_overhead()];
        if len <= MAX_PLAINTEXT {
            rec[hl..hl + len].copy_from_slice(&payload);
        }
        let mut control = Vec::new();
        let result = self.tx.seal_app_data_in_place(&mut rec, len, &mut control);
        self.send(&control);
        match result {
            Ok(n) => {
                self.send(&rec[..n]);
                self.note_written(&payload, before, 1);
            }
            Err(TlsError::RecordOverflow { .. }) if len > self.tx.limits().max_fragment_len => {
                assert!(
                    !self.tx.failed(),
                    "an oversized request is the caller's, not fatal"
                );
            }
            Err(e) => assert!(self.expected_write_error(&e, closed), "seal failed: {e}"),
        }
    }

    /// A KeyUpdate from the sender (TLS 1.3 only), or close_notify.
    fn control(&mut self, op: u8) {
        let closed = self.tx.closed_for_writing();
        if (op / 6) & 1 != 0 {
            self.tx
                .send_close_notify()
                .expect("close_notify is idempotent");
        } else {
            match self.tx.request_key_update((op / 6) & 2 != 0) {
                Ok(()) => assert!(!self.tls12() && !closed),
                Err(TlsError::UnexpectedMessage(_)) => assert!(self.tls12()),
                Err(TlsError::Closed(_)) => assert!(closed),
                Err(e) => panic!("KeyUpdate failed: {e}"),
            }
        }
        self.flush_tx();
    }

    /// The receiver asks the sender to update its keys (TLS 1.3).
    fn receiver_requests_update(&mut self) {
        if !self.tls12() && !self.rx.closed_for_writing() {
            self.rx
                .request_key_update(true)
                .expect("receiver KeyUpdate");
            self.deliver_back();
        }
    }

    fn flush_tx(&mut self) {
        let mut out = Vec::new();
        let _ = self.tx.poll_output(&mut out);
        self.send(&out);
    }

    /// Put sender bytes on the wire, checking the fragment limit.
    fn send(&mut self, bytes: &[u8]) {
        let mfl = self.tx.limits().max_fragment_len;
        for rec in split_records(bytes) {
            // Control records (at most 5 bytes of content) fit every limit chosen.
            assert!(
                within_fragment_limit(rec, mfl.max(5), self.tx.tx_overhead()),
                "a record over max_fragment_len {mfl}"
            );
        }
        self.wire.extend_from_slice(bytes);
        self.transcript.extend_from_slice(bytes);
    }

    /// Deliver the wire to the receiver, then its answers to the sender.
    fn deliver(&mut self) {
        self.flush_tx();
        let wire = std::mem::take(&mut self.wire);
        for read in chunks(&wire, self.chunk) {
            let (seen, error) = receive(&mut self.rx, &mut self.rx_in, read);
            self.seen.extend(seen);
            if let Some(e) = error {
                assert!(
                    self.expect_empty_run_refusal,
                    "receiver refused our records: {e}"
                );
                assert_eq!(e.kind(), ErrorKind::UnexpectedMessage, "{e}");
                return;
            }
        }
        assert!(!self.expect_empty_run_refusal || self.rx.failed() || !self.rx_in.is_empty());
        self.deliver_back();
    }

    fn deliver_back(&mut self) {
        let mut back = Vec::new();
        let _ = self.rx.poll_output(&mut back);
        let (seen, error) = receive(&mut self.tx, &mut self.tx_in, &back);
        assert!(
            error.is_none(),
            "sender refused the receiver's records: {error:?}"
        );
        assert!(
            seen.iter().all(|(_, s)| *s == Seen::Control),
            "unexpected answer"
        );
    }

    /// One script step: `op % 6` picks the action, `op / 6` its variant.
    fn step(&mut self, c: &mut Cursor<'_>) {
        let op = c.u8();
        match op % 6 {
            0 => self.write_parts(op, c),
            1 => self.seal_one(op, c),
            2 => self.control(op),
            3 => self.receiver_requests_update(),
            _ => self.deliver(),
        }
    }
}

/// The data the receiver delivered, in order.
fn delivered(seen: &[(usize, Seen)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (_, s) in seen {
        if let Seen::Data(d) = s {
            out.extend_from_slice(d);
        }
    }
    out
}

/// After everything was delivered: both layers agree.
fn check_in_step(run: &Run) {
    assert_eq!(
        delivered(&run.seen),
        run.written,
        "delivered bytes differ from written"
    );
    assert_eq!(
        run.rx.peer_closed(),
        run.tx.closed_for_writing(),
        "close_notify"
    );
    assert_eq!(
        run.rx.rx_seq(),
        run.tx.tx_seq(),
        "sender to receiver sequence"
    );
    assert_eq!(
        run.tx.rx_seq(),
        run.rx.tx_seq(),
        "receiver to sender sequence"
    );
    let (t, r) = (run.tx.stats(), run.rx.stats());
    assert_eq!(r.records_in, t.records_out, "records");
    assert_eq!(r.app_bytes_in, t.app_bytes_out, "application bytes");
    assert_eq!(
        r.key_updates_received, t.key_updates_sent,
        "KeyUpdates to the receiver"
    );
    assert_eq!(
        t.key_updates_received, r.key_updates_sent,
        "KeyUpdates to the sender"
    );
}

/// Flip one bit of the records the receiver opened and replay them to a
/// fresh receiver: exactly the records before the flipped one come out.
fn check_corruption(run: &Run, bit: u32) -> bool {
    let total: usize = run.seen.iter().map(|(n, _)| n).sum();
    if total == 0 {
        return false;
    }
    let bit = bit as usize % (total * 8);
    let mut bad = run.transcript[..total].to_vec();
    bad[bit / 8] ^= 1 << (bit % 8);
    let mut end = 0;
    let hit = run
        .seen
        .iter()
        .position(|(n, _)| {
            end += n;
            bit / 8 < end
        })
        .expect("bit inside a record");
    let secrets = secrets_at(run.suite, Side::Server, run.start_seq);
    let mut rx = RecordLayer::new(&secrets, run.rx_limits.clone()).expect("fixed secrets");
    let (mut seen, mut inbuf) = (Vec::new(), Vec::new());
    for read in chunks(&bad, run.chunk) {
        let (s, error) = receive(&mut rx, &mut inbuf, read);
        seen.extend(s);
        if error.is_some() {
            break;
        }
    }
    assert_eq!(
        seen,
        run.seen[..hit],
        "records around a flipped bit in record {hit}"
    );
    assert!(
        !rx.peer_closed(),
        "close_notify taken from a corrupted stream"
    );
    true
}

/// Mode "layer" of the records target.
pub(super) fn layer_round_trip(
    suite: CipherSuite,
    start_seq: u64,
    chunk: usize,
    c: &mut Cursor<'_>,
) -> RecordsOutcome {
    let mut run = Run::new(suite, start_seq, chunk, c.u8());
    let bit = c.u32();
    let mut steps = 0;
    while !c.is_empty()
        && steps < MAX_STEPS
        && run.written.len() < MAX_WRITTEN
        && run.tx.stats().records_out < MAX_RECORDS
        && !run.expect_empty_run_refusal
    {
        run.step(c);
        steps += 1;
    }
    run.deliver();
    if run.expect_empty_run_refusal {
        assert!(
            run.rx.failed(),
            "a run of empty records over the limit was accepted"
        );
        assert_eq!(
            delivered(&run.seen),
            run.written,
            "data before the empty run"
        );
    } else {
        run.deliver();
        check_in_step(&run);
    }
    RecordsOutcome {
        records: run.seen.len(),
        bytes: run.written.len(),
        key_updates: run.rx.stats().key_updates_received,
        corruption_refused: check_corruption(&run, bit),
    }
}

/// Seeds of the "layer" mode.
pub(super) fn layer_seeds() -> Vec<super::records::RecordsSeed> {
    let write = |parts: &[usize]| {
        let mut s = vec![6 * (parts.len() - 1) as u8];
        for &p in parts {
            s.extend(encode_len(p));
        }
        s
    };
    let seal = |len: usize| {
        let mut s = vec![1u8];
        s.extend(encode_len(len));
        s
    };
    let (key_update_requested, close, peer_update, deliver) = (14u8, 8u8, 3u8, 4u8);
    let mut seeds = Vec::new();
    for (i, &suite) in CipherSuite::ALL.iter().enumerate() {
        // Limits: fragments of 100 or 16384 bytes, rekey after 3 records or never.
        let limits: u8 = if i % 2 == 0 { 2 | 2 << 3 } else { 0 };
        let mut input = vec![
            Selector::encode(suite, true, (i % 3) as u8, i % 2 == 0),
            limits,
        ];
        input.extend_from_slice(&(0x89ab_cdefu32.wrapping_mul(i as u32 + 3)).to_be_bytes());
        input.extend(write(&[5, 300, 0, 1000]));
        input.push(deliver);
        input.extend(seal(40));
        input.extend(seal(0));
        input.push(key_update_requested);
        input.extend(write(&[MAX_PLAINTEXT]));
        input.push(peer_update);
        input.extend(write(&[17]));
        input.push(close);
        input.push(deliver);
        seeds.push(super::records::RecordsSeed {
            name: format!("layer-{}", suite.name().to_lowercase()),
            input,
        });
    }
    // Empty records past the receiver's limit of 2.
    let mut input = vec![Selector::encode(CipherSuite::ALL[0], true, 0, false), 0];
    input.extend_from_slice(&[0, 0, 1, 0]);
    for _ in 0..3 {
        input.extend(seal(0));
    }
    seeds.push(super::records::RecordsSeed {
        name: "layer-empty-run".to_string(),
        input,
    });
    seeds
}

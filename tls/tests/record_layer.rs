//! Control records and limits of the record layer, one case each: what is
//! accepted, what is answered, and which alert every bad input gets (and
//! that it is counted by kind and ends the connection).

use dpuproxy_tls::fuzz::{fuzz_secrets, reference_seal13};
use dpuproxy_tls::{
    AlertDescription, CipherSuite, ContentType, ErrorKind, Incoming, Limits, ProtocolVersion,
    RecordLayer, Sealer, Side, TlsError,
};

const T13: CipherSuite = CipherSuite::Tls13Aes128GcmSha256;
const T12: CipherSuite = CipherSuite::EcdheEcdsaAes256GcmSha384;

fn other(side: Side) -> Side {
    match side {
        Side::Server => Side::Client,
        Side::Client => Side::Server,
    }
}

/// Our layer on `side`, and a raw sealer holding the peer's send keys.
fn setup(suite: CipherSuite, side: Side, limits: Limits) -> (RecordLayer, Sealer) {
    let rl = RecordLayer::new(&fuzz_secrets(suite, side), limits).unwrap();
    let keys = fuzz_secrets(suite, other(side)).derive().unwrap();
    (rl, Sealer::new(suite, &keys.tx, 0).unwrap())
}

fn seal(s: &mut Sealer, ct: ContentType, payload: &[u8]) -> Vec<u8> {
    let hl = s.header_len();
    let mut rec = vec![0u8; payload.len() + s.overhead()];
    rec[hl..hl + payload.len()].copy_from_slice(payload);
    let n = s.seal_in_place(ct, &mut rec, payload.len()).unwrap();
    rec.truncate(n);
    rec
}

/// A TLS 1.3 record with an arbitrary inner content type (e.g. 24).
fn seal13_raw_type(s: &mut Sealer, suite: CipherSuite, inner_type: u8, payload: &[u8]) -> Vec<u8> {
    // The sealer always appends a real content type; build the inner
    // plaintext by hand and seal it with the reference one-shot AEAD under
    // the same key and sequence.
    let mut inner = payload.to_vec();
    inner.push(inner_type);
    let rec = reference_seal13(suite, s.keys(), s.seq(), &inner).unwrap();
    // Keep the sealer's sequence in step.
    let mut scratch = vec![0u8; s.overhead()];
    s.seal_in_place(ContentType::ApplicationData, &mut scratch, 0)
        .unwrap();
    rec
}

fn open_all(rl: &mut RecordLayer, wire: &[u8]) -> Result<Vec<String>, TlsError> {
    let mut buf = wire.to_vec();
    let mut pos = 0;
    let mut events = Vec::new();
    loop {
        let o = rl.open_next(&mut buf[pos..])?;
        events.push(match o.incoming {
            Incoming::NeedMore => break,
            Incoming::AppData(d) => format!("data:{}", String::from_utf8_lossy(d)),
            Incoming::Control => "control".into(),
            Incoming::CloseNotify => "close".into(),
        });
        pos += o.consumed;
    }
    Ok(events)
}

/// Expect `wire` to fail with `kind`, counted once, with `alert` queued
/// (checked by opening the queued record with the peer's keys).
fn expect_failure(
    wire: &[u8],
    rl: &mut RecordLayer,
    kind: ErrorKind,
    alert: Option<AlertDescription>,
) {
    let (suite, side) = (rl.suite(), rl.side());
    let err = open_all(rl, wire).unwrap_err();
    assert_eq!(err.kind(), kind, "{err}");
    assert_eq!(rl.stats().errors_of(kind), 1);
    assert!(rl.failed() && rl.closed_for_writing());
    let mut out = Vec::new();
    let _ = rl.poll_output(&mut out);
    match alert {
        None => assert!(out.is_empty()),
        Some(a) => {
            // The peer opens our alert.
            let mut peer =
                RecordLayer::new(&fuzz_secrets(suite, other(side)), Limits::default()).unwrap();
            let e = open_all(&mut peer, &out).unwrap_err();
            assert!(
                matches!(e, TlsError::PeerAlert(got) if got == a),
                "peer saw {e}, wanted {a}"
            );
        }
    }
    assert!(matches!(
        rl.open_next(&mut [0u8; 0]),
        Err(TlsError::Closed(_))
    ));
}

/// [`expect_failure`] with unexpected_message, the commonest case.
fn expect_unexpected_message(wire: &[u8], rl: &mut RecordLayer) {
    expect_failure(
        wire,
        rl,
        ErrorKind::UnexpectedMessage,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn key_update_variants() {
    // Not requested: rekey rx only.
    let (mut rl, mut s) = setup(T13, Side::Server, Limits::default());
    let wire = seal(&mut s, ContentType::Handshake, &[24, 0, 0, 1, 0]);
    assert_eq!(open_all(&mut rl, &wire).unwrap(), ["control"]);
    assert_eq!(rl.rx_seq(), 0);
    assert!(!rl.has_pending_output());

    // Two requests while we are silent: one answer (RFC 8446 §4.6.3).
    let (mut rl, _) = setup(T13, Side::Server, Limits::default());
    let mut peer = RecordLayer::new(&fuzz_secrets(T13, Side::Client), Limits::default()).unwrap();
    let mut wire = Vec::new();
    peer.request_key_update(true).unwrap();
    peer.request_key_update(true).unwrap();
    let _ = peer.poll_output(&mut wire);
    peer.write_app_data(b"hi", &mut wire).unwrap();
    assert_eq!(
        open_all(&mut rl, &wire).unwrap(),
        ["control", "control", "data:hi"]
    );
    assert_eq!(rl.stats().key_updates_received, 2);
    assert_eq!(rl.stats().key_updates_sent, 1);
    let mut out = Vec::new();
    rl.write_app_data(b"ho", &mut out).unwrap();
    assert_eq!(open_all(&mut peer, &out).unwrap(), ["control", "data:ho"]);

    // Bad length, bad value, and data after it in the same record.
    for (body, kind, alert) in [
        (
            &[24, 0, 0, 2, 0, 0][..],
            ErrorKind::Malformed,
            AlertDescription::DecodeError,
        ),
        (
            &[24, 0, 0, 1, 2][..],
            ErrorKind::Malformed,
            AlertDescription::IllegalParameter,
        ),
        (
            &[24, 0, 0, 1, 0, 24, 0][..],
            ErrorKind::UnexpectedMessage,
            AlertDescription::UnexpectedMessage,
        ),
    ] {
        let (mut rl, mut s) = setup(T13, Side::Server, Limits::default());
        let wire = seal(&mut s, ContentType::Handshake, body);
        expect_failure(&wire, &mut rl, kind, Some(alert));
    }

    // TLS 1.2 has no KeyUpdate.
    let (mut rl, mut s) = setup(T12, Side::Server, Limits::default());
    let wire = seal(&mut s, ContentType::Handshake, &[24, 0, 0, 1, 0]);
    expect_unexpected_message(&wire, &mut rl);
}

#[test]
fn tickets_only_from_a_server_and_may_span_records() {
    let (mut rl, mut s) = setup(T13, Side::Client, Limits::default());
    let mut ticket = vec![4, 0, 0, 100];
    ticket.extend([9; 100]);
    let mut wire = seal(&mut s, ContentType::Handshake, &ticket[..30]);
    wire.extend(seal(&mut s, ContentType::Handshake, &ticket[30..]));
    assert_eq!(open_all(&mut rl, &wire).unwrap(), ["control", "control"]);
    assert_eq!(rl.stats().tickets_ignored, 1);

    // Data inside a fragmented handshake message is not allowed in 1.3.
    let (mut rl, mut s) = setup(T13, Side::Client, Limits::default());
    let mut wire = seal(&mut s, ContentType::Handshake, &ticket[..30]);
    wire.extend(seal(&mut s, ContentType::ApplicationData, b"x"));
    expect_unexpected_message(&wire, &mut rl);

    // A client does not send tickets.
    let (mut rl, mut s) = setup(T13, Side::Server, Limits::default());
    let wire = seal(&mut s, ContentType::Handshake, &ticket);
    expect_unexpected_message(&wire, &mut rl);
}

#[test]
fn handshake_message_limit_is_inclusive() {
    let limits = Limits {
        max_handshake_message_len: 200,
        ..Limits::default()
    };
    let (mut rl, mut s) = setup(T13, Side::Client, limits.clone());
    let mut ticket = vec![4, 0, 0, 200];
    ticket.extend([1; 200]);
    let wire = seal(&mut s, ContentType::Handshake, &ticket);
    assert_eq!(open_all(&mut rl, &wire).unwrap(), ["control"]);

    let (mut rl, mut s) = setup(T13, Side::Client, limits);
    let wire = seal(&mut s, ContentType::Handshake, &[4, 0, 0, 201, 1]);
    expect_failure(
        &wire,
        &mut rl,
        ErrorKind::Malformed,
        Some(AlertDescription::IllegalParameter),
    );
}

#[test]
fn empty_record_limit_is_inclusive() {
    let limits = Limits {
        max_empty_records: 3,
        ..Limits::default()
    };
    for suite in [T13, T12] {
        let (mut rl, mut s) = setup(suite, Side::Server, limits.clone());
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend(seal(&mut s, ContentType::ApplicationData, b""));
        }
        wire.extend(seal(&mut s, ContentType::ApplicationData, b"a"));
        for _ in 0..3 {
            wire.extend(seal(&mut s, ContentType::ApplicationData, b""));
        }
        assert_eq!(
            open_all(&mut rl, &wire).unwrap(),
            [
                "data:", "data:", "data:", "data:a", "data:", "data:", "data:"
            ]
        );
        let wire = seal(&mut s, ContentType::ApplicationData, b"");
        expect_unexpected_message(&wire, &mut rl);
    }
}

#[test]
fn alerts() {
    for suite in [T13, T12] {
        // close_notify: later bytes are ignored.
        let (mut rl, mut s) = setup(suite, Side::Server, Limits::default());
        let mut wire = seal(&mut s, ContentType::Alert, &[1, 0]);
        wire.extend(b"anything at all after close_notify");
        assert_eq!(open_all(&mut rl, &wire).unwrap()[0], "close");
        assert!(rl.peer_closed());
        let mut buf = b"more".to_vec();
        assert_eq!(rl.open_next(&mut buf).unwrap().consumed, 4);
        // We can still write (half close) and then close.
        let mut out = Vec::new();
        rl.write_app_data(b"bye", &mut out).unwrap();
        rl.send_close_notify().unwrap();

        // A fatal alert from the peer: counted, no alert back.
        let (mut rl, mut s) = setup(suite, Side::Server, Limits::default());
        let wire = seal(&mut s, ContentType::Alert, &[2, 40]);
        expect_failure(&wire, &mut rl, ErrorKind::PeerAlert, None);

        // Wrong length, wrong level.
        for (body, alert) in [
            (&[1, 0, 0][..], AlertDescription::DecodeError),
            (&[3, 0][..], AlertDescription::IllegalParameter),
        ] {
            let (mut rl, mut s) = setup(suite, Side::Server, Limits::default());
            let wire = seal(&mut s, ContentType::Alert, body);
            expect_failure(&wire, &mut rl, ErrorKind::Malformed, Some(alert));
        }

        // user_canceled is a warning; then close_notify.
        let (mut rl, mut s) = setup(suite, Side::Server, Limits::default());
        let mut wire = seal(&mut s, ContentType::Alert, &[1, 90]);
        wire.extend(seal(&mut s, ContentType::Alert, &[1, 0]));
        assert_eq!(open_all(&mut rl, &wire).unwrap(), ["control", "close"]);
    }
    // TLS 1.2 warnings are ignored; in TLS 1.3 any other alert is fatal.
    let (mut rl, mut s) = setup(T12, Side::Client, Limits::default());
    let mut wire = seal(&mut s, ContentType::Alert, &[1, 100]);
    wire.extend(seal(&mut s, ContentType::ApplicationData, b"ok"));
    assert_eq!(open_all(&mut rl, &wire).unwrap(), ["control", "data:ok"]);
    let (mut rl, mut s) = setup(T13, Side::Client, Limits::default());
    let wire = seal(&mut s, ContentType::Alert, &[1, 100]);
    expect_failure(&wire, &mut rl, ErrorKind::PeerAlert, None);
}

#[test]
fn tls12_renegotiation_is_refused_with_a_warning() {
    // A ClientHello to the server, a HelloRequest to the client.
    for (side, msg) in [
        (Side::Server, vec![1, 0, 0, 2, 3, 3]),
        (Side::Client, vec![0, 0, 0, 0]),
    ] {
        let (mut rl, mut s) = setup(T12, side, Limits::default());
        let wire = seal(&mut s, ContentType::Handshake, &msg);
        assert_eq!(open_all(&mut rl, &wire).unwrap(), ["control"]);
        let mut out = Vec::new();
        let _ = rl.poll_output(&mut out);
        let mut peer =
            RecordLayer::new(&fuzz_secrets(T12, other(side)), Limits::default()).unwrap();
        assert_eq!(open_all(&mut peer, &out).unwrap(), ["control"]);
        assert_eq!(peer.stats().warnings_received, 1);
    }
}

#[test]
fn unexpected_types() {
    // TLS 1.3: inner ChangeCipherSpec, inner heartbeat, empty handshake.
    for (ty, body) in [(20u8, &[1u8][..]), (24, &[1, 0][..]), (22, &[][..])] {
        let (mut rl, mut s) = setup(T13, Side::Server, Limits::default());
        let wire = seal13_raw_type(&mut s, T13, ty, body);
        expect_unexpected_message(&wire, &mut rl);
    }
    // An outer type other than application data in 1.3, an unknown outer
    // type, and ChangeCipherSpec after a TLS 1.2 handshake.
    for (suite, rec) in [
        (T13, vec![21, 3, 3, 0, 2, 1, 0]),
        (T13, vec![99, 3, 3, 0, 1, 0]),
        (T12, vec![20, 3, 3, 0, 1, 1]),
    ] {
        let (mut rl, _) = setup(suite, Side::Server, Limits::default());
        expect_unexpected_message(&rec, &mut rl);
    }
    // TLS 1.2 records must say 0x0303.
    let (mut rl, mut s) = setup(T12, Side::Server, Limits::default());
    let mut wire = seal(&mut s, ContentType::ApplicationData, b"v");
    wire[2] = 1;
    expect_failure(
        &wire,
        &mut rl,
        ErrorKind::ProtocolVersion,
        Some(AlertDescription::ProtocolVersion),
    );
}

#[test]
fn lengths_and_limits() {
    // Over the ciphertext limit, announced in the header: rejected before
    // the body arrives.
    for (suite, limit) in [(T13, (1 << 14) + 256), (T12, (1 << 14) + 2048)] {
        let (mut rl, _) = setup(suite, Side::Server, Limits::default());
        let len = (limit + 1) as u16;
        let hdr = [23, 3, 3, (len >> 8) as u8, len as u8];
        expect_failure(
            &hdr,
            &mut rl,
            ErrorKind::RecordOverflow,
            Some(AlertDescription::RecordOverflow),
        );
    }
    // Too short to hold a tag (and explicit nonce).
    for (suite, len) in [(T13, 16usize), (T12, 23)] {
        let (mut rl, _) = setup(suite, Side::Server, Limits::default());
        let mut rec = vec![23, 3, 3, 0, len as u8];
        rec.extend(vec![0; len]);
        expect_failure(
            &rec,
            &mut rl,
            ErrorKind::BadLength,
            Some(AlertDescription::DecodeError),
        );
    }
    // A TLS 1.2 record whose plaintext would exceed 2^14 (within the
    // ciphertext limit): record_overflow.
    let (mut rl, _) = setup(T12, Side::Server, Limits::default());
    let len = (1usize << 14) + 1 + 8 + 16;
    let mut rec = vec![23, 3, 3, (len >> 8) as u8, len as u8];
    rec.extend(vec![0; len]);
    expect_failure(
        &rec,
        &mut rl,
        ErrorKind::RecordOverflow,
        Some(AlertDescription::RecordOverflow),
    );
    // A record split across reads waits for the rest.
    let (mut rl, mut s) = setup(T13, Side::Server, Limits::default());
    let wire = seal(&mut s, ContentType::ApplicationData, b"split");
    for cut in 0..wire.len() {
        let mut part = wire[..cut].to_vec();
        let o = rl.open_next(&mut part).unwrap();
        assert!(matches!(o.incoming, Incoming::NeedMore) && o.consumed == 0);
    }
    assert_eq!(open_all(&mut rl, &wire).unwrap(), ["data:split"]);
}

#[test]
fn writes_are_full_size_and_coalesced() {
    for suite in [T13, T12] {
        let (mut tx, _) = setup(suite, Side::Client, Limits::default());
        let mut out = Vec::new();
        let parts: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 300]).collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        tx.write_app_data_vectored(&refs, &mut out).unwrap();
        // 30000 bytes: one full 16 KiB record and one of 13616.
        assert_eq!(tx.stats().records_out, 2);
        assert_eq!(out.len(), 30_000 + 2 * tx.tx_overhead());
        let mut rx =
            RecordLayer::new(&fuzz_secrets(suite, Side::Server), Limits::default()).unwrap();
        let mut buf = out.clone();
        let o = rx.open_next(&mut buf).unwrap();
        match o.incoming {
            Incoming::AppData(d) => assert_eq!(d.len(), 16384),
            other => panic!("{other:?}"),
        }
        // Empty writes send nothing.
        let n = out.len();
        tx.write_app_data(b"", &mut out).unwrap();
        assert_eq!(out.len(), n);
        assert_eq!(
            suite.version() == ProtocolVersion::Tls13,
            tx.tx_header_len() == 5
        );
    }
}

#[test]
fn in_place_seal_puts_control_records_first() {
    let limits = Limits {
        key_update_after_records: Some(2),
        ..Limits::default()
    };
    let (mut tx, _) = setup(T13, Side::Client, limits);
    let mut rx = RecordLayer::new(&fuzz_secrets(T13, Side::Server), Limits::default()).unwrap();
    let mut wire = Vec::new();
    for i in 0..5u8 {
        let mut ctl = Vec::new();
        let mut rec = vec![0u8; 3 + tx.tx_overhead()];
        rec[5..8].copy_from_slice(&[b'a' + i; 3]);
        let n = tx.seal_app_data_in_place(&mut rec, 3, &mut ctl).unwrap();
        wire.extend(ctl);
        wire.extend(&rec[..n]);
    }
    assert_eq!(tx.stats().key_updates_sent, 2);
    let events = open_all(&mut rx, &wire).unwrap();
    assert_eq!(
        events,
        [
            "data:aaa", "data:bbb", "control", "data:ccc", "data:ddd", "control", "data:eee"
        ]
    );
    // Over the fragment limit: refused without sealing.
    let mut big = vec![0u8; (1 << 14) + 1 + tx.tx_overhead()];
    assert!(matches!(
        tx.seal_app_data_in_place(&mut big, (1 << 14) + 1, &mut Vec::new()),
        Err(TlsError::RecordOverflow { .. })
    ));
}

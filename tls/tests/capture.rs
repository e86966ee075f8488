//! Capture round-trips: a real OpenSSL client and server talk over
//! in-memory pipes (SSL_read/SSL_write, OpenSSL's own record layer); we
//! capture every byte each sent, then open every record under the traffic
//! keys with our keys (derived from the keylog) and re-seal it byte for
//! byte with our sealer. Covers TLS 1.2 (explicit-nonce GCM, ChaCha),
//! TLS 1.3 (all three AEADs), Finished, NewSessionTickets, KeyUpdates sent
//! by OpenSSL, and close_notify.

mod common;

use common::*;
use dpuproxy_tls::keys::{tls13_next_secret, tls13_traffic_keys};
use dpuproxy_tls::record::{RecordHeader, explicit_nonce};
use dpuproxy_tls::{
    CipherSuite, ContentType, KeyLog, Opener, ProtocolVersion, Sealer, Secret, SecretMaterial,
    Side, TrafficKeys,
};

#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    records: usize,
    data: Vec<u8>,
    finished: usize,
    tickets: usize,
    key_updates: usize,
    close_notify: usize,
}

fn split(transcript: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = transcript;
    while let Some(h) = RecordHeader::parse(rest) {
        assert!(
            rest.len() >= h.total_len(),
            "OpenSSL wrote a partial record"
        );
        out.push(rest[..h.total_len()].to_vec());
        rest = &rest[h.total_len()..];
    }
    assert!(rest.is_empty());
    out
}

/// Open every record from the first one under `keys`, re-seal each, and
/// follow KeyUpdates.
fn verify(
    transcript: &[u8],
    suite: CipherSuite,
    keys: TrafficKeys,
    secret: Option<Secret>,
) -> Seen {
    let records = split(transcript);
    let start = records
        .iter()
        .position(|r| {
            r[0] != 20
                && Opener::new(suite, &keys, 0)
                    .unwrap()
                    .open_in_place(&mut r.clone())
                    .is_ok()
        })
        .expect("some record is under the traffic key");
    let mut keys = keys;
    let mut secret = secret;
    let mut opener = Opener::new(suite, &keys, 0).unwrap();
    let mut seen = Seen::default();
    for rec in &records[start..] {
        let mut buf = rec.clone();
        let opened = opener
            .open_in_place(&mut buf)
            .unwrap_or_else(|e| panic!("{suite}: record {} does not open: {e}", seen.records));
        let (ct, seq) = (opened.content_type, opened.seq);
        let pt = opened.plaintext.to_vec();
        // Re-seal byte for byte.
        let mut sealer = Sealer::new(suite, &keys, seq).unwrap();
        let hl = sealer.header_len();
        let mut out = vec![0u8; pt.len() + sealer.overhead()];
        out[hl..hl + pt.len()].copy_from_slice(&pt);
        let ctype = ContentType::from_code(ct).expect("known content type");
        let n = if suite.tls12_explicit_nonce() {
            sealer
                .seal_in_place_with_explicit_nonce(
                    ctype,
                    &mut out,
                    pt.len(),
                    explicit_nonce(rec).unwrap(),
                )
                .unwrap()
        } else {
            sealer.seal_in_place(ctype, &mut out, pt.len()).unwrap()
        };
        assert_eq!(n, rec.len());
        assert_eq!(
            &out, rec,
            "{suite}: re-sealed record {} differs",
            seen.records
        );
        seen.records += 1;
        match (ctype, pt.first()) {
            (ContentType::ApplicationData, _) => seen.data.extend_from_slice(&pt),
            (ContentType::Alert, _) => {
                assert_eq!(pt, [1, 0], "only close_notify is expected");
                seen.close_notify += 1;
            }
            (ContentType::Handshake, Some(20)) => seen.finished += 1,
            (ContentType::Handshake, Some(4)) => seen.tickets += 1,
            (ContentType::Handshake, Some(24)) => {
                assert_eq!(pt.len(), 5);
                seen.key_updates += 1;
                let next = tls13_next_secret(suite, secret.as_ref().unwrap()).unwrap();
                keys = tls13_traffic_keys(suite, next.as_bytes()).unwrap();
                opener = Opener::new(suite, &keys, 0).unwrap();
                secret = Some(next);
            }
            other => panic!("{suite}: unexpected record {other:?}"),
        }
    }
    seen
}

fn run(suite: CipherSuite) {
    let mut sb = server_builder(key_kind_for(suite));
    force_suite(&mut sb, suite);
    let mut cb = client_builder();
    force_suite(&mut cb, suite);
    let clog = capture_keylog(&mut cb);
    let mut server = OsslPeer::new(&sb.build(), true);
    let mut client = OsslPeer::new(&cb.build(), false);
    let (mut c_done, mut s_done) = (false, false);
    for _ in 0..20 {
        if !c_done {
            c_done = client.handshake_step();
        }
        server.inbound.push(&client.outbound.take_all());
        if !s_done {
            s_done = server.handshake_step();
        }
        client.inbound.push(&server.outbound.take_all());
        if c_done && s_done {
            break;
        }
    }
    assert!(c_done && s_done);
    let tls13 = suite.version() == ProtocolVersion::Tls13;

    let mut c_sent = Vec::new();
    let mut s_sent = Vec::new();
    let mut exchange = |client: &mut OsslPeer, server: &mut OsslPeer, i: u64, len: usize| {
        let c = bytes(i, len);
        client.write_all(&c);
        server.inbound.push(&client.outbound.take_all());
        assert_eq!(server.read_available().unwrap().0, c);
        c_sent.extend_from_slice(&c);
        let s = bytes(1000 + i, len);
        server.write_all(&s);
        client.inbound.push(&server.outbound.take_all());
        assert_eq!(client.read_available().unwrap().0, s);
        s_sent.extend_from_slice(&s);
    };
    for (i, len) in [1usize, 100, 1000, 16384, 16385, 40_000]
        .into_iter()
        .enumerate()
    {
        exchange(&mut client, &mut server, i as u64, len);
    }
    if tls13 {
        // OpenSSL-initiated KeyUpdates, requested and not.
        openssl_key_update(&client.stream, true);
        exchange(&mut client, &mut server, 10, 500);
        openssl_key_update(&server.stream, false);
        exchange(&mut client, &mut server, 11, 700);
    }
    client.stream.shutdown().unwrap();
    server.inbound.push(&client.outbound.take_all());
    assert!(server.read_available().unwrap().1);
    server.stream.shutdown().unwrap();
    client.inbound.push(&server.outbound.take_all());

    // Our keys, from the client's keylog.
    let mut log = KeyLog::default();
    for line in clog.lock().unwrap().iter() {
        log.push_line(line);
    }
    let (mut cr, mut sr) = ([0u8; 32], [0u8; 32]);
    client.stream.ssl().client_random(&mut cr);
    client.stream.ssl().server_random(&mut sr);
    let secrets = log.secrets(Side::Client, suite, &cr, &sr).unwrap();
    let keys = secrets.derive().unwrap();
    let (c_secret, s_secret) = match &secrets.material {
        SecretMaterial::Tls13 { client, server } => (Some(client.clone()), Some(server.clone())),
        SecretMaterial::Tls12 { .. } => (None, None),
    };

    let c_seen = verify(&client.sent.borrow(), suite, keys.tx, c_secret);
    let s_seen = verify(&server.sent.borrow(), suite, keys.rx, s_secret);
    assert_eq!(c_seen.data, c_sent, "{suite}: client data");
    assert_eq!(s_seen.data, s_sent, "{suite}: server data");
    assert_eq!((c_seen.close_notify, s_seen.close_notify), (1, 1));
    if tls13 {
        assert_eq!((c_seen.finished, s_seen.finished), (0, 0));
        assert_eq!((c_seen.tickets, s_seen.tickets), (0, 2));
        // Client: its own request. Server: the answer, then its own.
        assert_eq!((c_seen.key_updates, s_seen.key_updates), (1, 2));
    } else {
        assert_eq!((c_seen.finished, s_seen.finished), (1, 1));
        assert_eq!((c_seen.tickets, c_seen.key_updates), (0, 0));
    }
    // 16385 and 40000 bytes split into full-size records: more records than writes.
    assert!(c_seen.records > 8, "{suite}: {c_seen:?}");
}

#[test]
fn tls12_aes128_gcm_explicit_nonce() {
    run(CipherSuite::EcdheEcdsaAes128GcmSha256);
    run(CipherSuite::EcdheRsaAes128GcmSha256);
}

#[test]
fn tls12_aes256_gcm_explicit_nonce() {
    run(CipherSuite::EcdheEcdsaAes256GcmSha384);
    run(CipherSuite::EcdheRsaAes256GcmSha384);
}

#[test]
fn tls12_chacha20_poly1305() {
    run(CipherSuite::EcdheEcdsaChacha20Poly1305);
    run(CipherSuite::EcdheRsaChacha20Poly1305);
}

#[test]
fn tls13_chacha20_poly1305() {
    run(CipherSuite::Tls13Chacha20Poly1305Sha256);
}

#[test]
fn tls13_aes_gcm() {
    run(CipherSuite::Tls13Aes128GcmSha256);
    run(CipherSuite::Tls13Aes256GcmSha384);
}

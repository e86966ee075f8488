//! The memory-buffer handshake engine against OpenSSL's own TLS stack (an
//! `SslStream` doing SSL_read/SSL_write over in-memory pipes), every suite,
//! both sides: sequence numbers at hand-over, data both ways, KeyUpdate
//! both ways, close_notify both ways, resumption, max_fragment_length, and
//! failures that must end with an alert.

mod common;

use common::*;
use dpuproxy_tls::record::{HEADER_LEN, RecordHeader};
use dpuproxy_tls::{
    CipherSuite, ErrorKind, Handshake, HandshakeConfig, HandshakeError, HandshakeOptions,
    OpensslHandshake, ProtocolVersion, Side, TlsError,
};
use openssl::ssl::{SslContext, SslSession};

fn openssl_client(suite: CipherSuite) -> OsslPeer {
    let mut b = client_builder();
    force_suite(&mut b, suite);
    OsslPeer::new(&b.build(), false)
}

fn server_config(suite: CipherSuite) -> HandshakeConfig {
    HandshakeConfig::server(server_builder(key_kind_for(suite))).unwrap()
}

#[test]
fn server_engine_against_openssl_client_every_suite() {
    for suite in CipherSuite::ALL {
        let cfg = server_config(suite);
        let hs = OpensslHandshake::new(&cfg).unwrap();
        let mut client = openssl_client(suite);
        let est = pump(hs, &mut client);
        let mut ours = Ours::new(est);
        assert_eq!(ours.rl.suite(), suite);
        assert_eq!(ours.rl.side(), Side::Server);
        let (tx0, rx0) = match suite.version() {
            // OpenSSL sends 2 tickets by default, under the application key.
            ProtocolVersion::Tls13 => (2, 0),
            // Finished went at seq 0 each way.
            ProtocolVersion::Tls12 => (1, 1),
        };
        assert_eq!((ours.rl.tx_seq(), ours.rl.rx_seq()), (tx0, rx0), "{suite}");
        assert!(ours.rx.is_empty());

        // 100 kB from the client, echoed back.
        let data = bytes(suite.iana().into(), 100_000);
        client.write_all(&data);
        let (got, closed) = ours.receive(&client.outbound.take_all()).unwrap();
        assert_eq!((got.len(), closed), (data.len(), false));
        assert_eq!(got, data, "{suite}");
        let mut out = Vec::new();
        ours.rl.write_app_data(&got, &mut out).unwrap();
        client.inbound.push(&out);
        let (echo, _) = client.read_available().unwrap();
        assert_eq!(echo, data, "{suite}: echo");

        if suite.version() == ProtocolVersion::Tls13 {
            // We ask for a KeyUpdate; OpenSSL answers before its next data.
            ours.rl.request_key_update(true).unwrap();
            client.inbound.push(&ours.output());
            assert_eq!(client.read_available().unwrap().0, b"");
            client.write_all(b"after our update");
            let (got, _) = ours.receive(&client.outbound.take_all()).unwrap();
            assert_eq!(got, b"after our update");
            assert_eq!(ours.rl.stats().key_updates_sent, 1);
            assert_eq!(ours.rl.stats().key_updates_received, 1);

            // OpenSSL asks for one; we answer before our next data.
            openssl_key_update(&client.stream, true);
            client.write_all(b"after theirs");
            let (got, _) = ours.receive(&client.outbound.take_all()).unwrap();
            assert_eq!(got, b"after theirs");
            assert!(ours.rl.has_pending_output());
            let mut out = Vec::new();
            ours.rl
                .write_app_data(b"reply under new keys", &mut out)
                .unwrap();
            client.inbound.push(&out);
            assert_eq!(client.read_available().unwrap().0, b"reply under new keys");
            assert_eq!(ours.rl.stats().key_updates_sent, 2);
            assert_eq!(ours.rl.stats().key_updates_received, 2);
        }

        // close_notify both ways.
        client.stream.shutdown().unwrap();
        let (got, closed) = ours.receive(&client.outbound.take_all()).unwrap();
        assert!(
            got.is_empty() && closed,
            "{suite}: close_notify from OpenSSL"
        );
        ours.rl.send_close_notify().unwrap();
        client.inbound.push(&ours.output());
        let (_, peer_closed) = client.read_available().unwrap();
        assert!(peer_closed, "{suite}: OpenSSL saw our close_notify");
        assert_eq!(ours.rl.stats().errors, [0; ErrorKind::COUNT]);
    }
}

#[test]
fn client_engine_against_openssl_server_every_suite() {
    for suite in CipherSuite::ALL {
        let mut sb = server_builder(key_kind_for(suite));
        force_suite(&mut sb, suite);
        let mut server = OsslPeer::new(&sb.build(), true);
        let cfg = HandshakeConfig::client(client_builder()).unwrap();
        let mut hs = OpensslHandshake::client(&cfg, "localhost").unwrap();
        let mut out = Vec::new();
        let mut est = None;
        for _ in 0..20 {
            let _ = hs.poll_output(&mut out);
            server.inbound.push(&out);
            out.clear();
            server.handshake_step();
            hs.feed(&server.outbound.take_all()).unwrap();
            if !hs.is_handshaking() {
                est = Some(hs.into_established().unwrap());
                break;
            }
        }
        let est = est.expect("client handshake finished");
        server.inbound.push(&est.output);
        assert!(server.handshake_step(), "{suite}: server finished");
        let mut ours = Ours::new(est);
        assert_eq!(
            ours.rl.tx_seq(),
            u64::from(suite.version() == ProtocolVersion::Tls12)
        );

        let data = bytes(7, 40_000);
        server.write_all(&data);
        let (got, _) = ours.receive(&server.outbound.take_all()).unwrap();
        assert_eq!(got, data, "{suite}");
        let tickets = if suite.version() == ProtocolVersion::Tls13 {
            2
        } else {
            0
        };
        assert_eq!(ours.rl.stats().tickets_ignored, tickets, "{suite}");

        let mut out = Vec::new();
        ours.rl
            .write_app_data(b"from our client", &mut out)
            .unwrap();
        server.inbound.push(&out);
        assert_eq!(server.read_available().unwrap().0, b"from our client");
    }
}

#[test]
fn our_engine_on_both_sides_every_suite() {
    for suite in CipherSuite::ALL {
        let scfg = server_config(suite);
        let mut cb = client_builder();
        force_suite(&mut cb, suite);
        let ccfg = HandshakeConfig::new(cb, Side::Client, HandshakeOptions::default()).unwrap();
        let mut s = OpensslHandshake::new(&scfg).unwrap();
        let mut c = OpensslHandshake::client(&ccfg, "localhost").unwrap();
        let mut buf = Vec::new();
        for _ in 0..10 {
            let _ = c.poll_output(&mut buf);
            s.feed(&buf).unwrap();
            buf.clear();
            let _ = s.poll_output(&mut buf);
            c.feed(&buf).unwrap();
            buf.clear();
        }
        assert!(!s.is_handshaking() && !c.is_handshaking(), "{suite}");
        let (cs, ss) = (c.secrets().unwrap().clone(), s.secrets().unwrap().clone());
        let mut server = Ours::new(s.into_established().unwrap());
        let mut ce = c.into_established().unwrap();
        ce.leftover.extend(server.output());
        let mut client = Ours::new(ce);
        // The client's view of seq numbers mirrors the server's once the
        // tickets are consumed.
        assert_eq!(cs.tx_seq, ss.rx_seq);
        let mut wire = Vec::new();
        client
            .rl
            .write_app_data(&bytes(1, 70_000), &mut wire)
            .unwrap();
        let (got, _) = server.receive(&wire).unwrap();
        assert_eq!(got, bytes(1, 70_000));
        let mut wire = Vec::new();
        server.rl.write_app_data(b"pong", &mut wire).unwrap();
        let (got, _) = client.receive(&wire).unwrap();
        assert_eq!(got, b"pong");
        assert_eq!(client.rl.rx_seq(), server.rl.tx_seq());
    }
}

#[test]
fn application_data_behind_the_finished_stays_out_of_openssl() {
    for suite in [
        CipherSuite::Tls13Aes128GcmSha256,
        CipherSuite::Tls13Aes256GcmSha384,
        CipherSuite::Tls13Chacha20Poly1305Sha256,
    ] {
        let cfg = server_config(suite);
        let mut hs = OpensslHandshake::new(&cfg).unwrap();
        let mut client = openssl_client(suite);
        let mut out = Vec::new();
        // ClientHello -> server flight.
        assert!(!client.handshake_step());
        hs.feed(&client.outbound.take_all()).unwrap();
        let _ = hs.poll_output(&mut out);
        client.inbound.push(&out);
        // The client finishes and sends data straight away: its Finished
        // and the data reach us in one read.
        assert!(client.handshake_step());
        client.write_all(b"early bird");
        hs.feed(&client.outbound.take_all()).unwrap();
        assert!(!hs.is_handshaking());
        let est = hs.into_established().unwrap();
        assert!(!est.leftover.is_empty(), "the data record is left to us");
        let mut ours = Ours::new(est);
        let (got, _) = ours.receive(&[]).unwrap();
        assert_eq!(got, b"early bird", "{suite}");
    }
}

#[test]
fn tampered_record_gets_bad_record_mac_to_openssl() {
    for suite in [
        CipherSuite::Tls13Aes128GcmSha256,
        CipherSuite::EcdheEcdsaAes256GcmSha384,
        CipherSuite::EcdheEcdsaChacha20Poly1305,
    ] {
        let hs = OpensslHandshake::new(&server_config(suite)).unwrap();
        let mut client = openssl_client(suite);
        let mut ours = Ours::new(pump(hs, &mut client));
        client.write_all(b"attack at dawn");
        let mut wire = client.outbound.take_all();
        let last = wire.len() - 20;
        wire[last] ^= 0x40;
        let err = ours.receive(&wire).unwrap_err();
        assert!(matches!(err, TlsError::BadRecordMac), "{err}");
        assert_eq!(ours.rl.stats().errors_of(ErrorKind::BadRecordMac), 1);
        assert!(ours.rl.failed() && ours.rl.closed_for_writing());
        let alert = ours.output();
        assert!(!alert.is_empty());
        client.inbound.push(&alert);
        let e = client.read_available().unwrap_err();
        assert!(
            e.to_string().contains("bad record mac"),
            "{suite}: OpenSSL saw {e}"
        );
        // Nothing more goes out, nothing more comes in.
        assert!(ours.rl.write_app_data(b"x", &mut Vec::new()).is_err());
        assert!(matches!(ours.receive(&[]), Err(TlsError::Closed(_))));
    }
}

#[test]
fn failed_handshake_sends_openssl_alert() {
    // A TLS 1.2 client offering only a CBC suite we do not carry.
    let mut b = client_builder();
    b.set_max_proto_version(Some(openssl::ssl::SslVersion::TLS1_2))
        .unwrap();
    b.set_cipher_list("ECDHE-ECDSA-AES128-SHA").unwrap();
    let mut client = OsslPeer::new(&b.build(), false);
    let mut hs = OpensslHandshake::new(&server_config(CipherSuite::Tls13Aes128GcmSha256)).unwrap();
    assert!(!client.handshake_step());
    let err = hs.feed(&client.outbound.take_all()).unwrap_err();
    assert!(matches!(err, HandshakeError::Ssl(_)), "{err}");
    assert!(hs.is_failed() && !hs.is_handshaking());
    let mut out = Vec::new();
    assert!(hs.poll_output(&mut out) > 0);
    assert_eq!(out[0], 21, "an alert record");
    assert!(hs.secrets().is_none());
    assert!(matches!(
        hs.into_established(),
        Err(HandshakeError::NotFinished)
    ));
}

#[test]
fn garbage_instead_of_a_client_hello_fails_cleanly() {
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[22, 3, 1, 0xff, 0xff][..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0][..],
    ] {
        let mut hs =
            OpensslHandshake::new(&server_config(CipherSuite::Tls13Aes128GcmSha256)).unwrap();
        let r = hs.feed(junk);
        let r = r.and_then(|()| hs.feed(&[0; 40_000]));
        assert!(r.is_err(), "{junk:?}");
        assert!(hs.feed(b"more").is_err());
    }
}

fn resumed(suite: CipherSuite) {
    let cfg = server_config(suite);
    let mut cb = client_builder();
    force_suite(&mut cb, suite);
    let cctx: SslContext = cb.build();
    // First connection: full handshake, read to collect the session.
    let hs = OpensslHandshake::new(&cfg).unwrap();
    let mut client = OsslPeer::new(&cctx, false);
    let mut ours = Ours::new(pump(hs, &mut client));
    let mut out = Vec::new();
    ours.rl.write_app_data(b"one", &mut out).unwrap();
    client.inbound.push(&out);
    assert_eq!(client.read_available().unwrap().0, b"one");
    let session: SslSession = client.stream.ssl().session().unwrap().to_owned();

    // Second connection resumes.
    let hs = OpensslHandshake::new(&cfg).unwrap();
    let mut client = OsslPeer::new(&cctx, false);
    // SAFETY: the session came from a connection made with the same
    // client context `cctx`, as SSL_set_session requires.
    unsafe {
        client
            .stream
            .ssl_mut_for_test()
            .set_session(&session)
            .unwrap()
    };
    let mut ours = Ours::new(pump(hs, &mut client));
    assert!(client.stream.ssl().session_reused(), "{suite}: resumed");
    client.write_all(b"two");
    assert_eq!(ours.receive(&client.outbound.take_all()).unwrap().0, b"two");
    let mut out = Vec::new();
    ours.rl.write_app_data(b"three", &mut out).unwrap();
    client.inbound.push(&out);
    assert_eq!(client.read_available().unwrap().0, b"three");
}

trait SslMutForTest {
    fn ssl_mut_for_test(&mut self) -> &mut openssl::ssl::SslRef;
}

impl SslMutForTest for openssl::ssl::SslStream<Duplex> {
    fn ssl_mut_for_test(&mut self) -> &mut openssl::ssl::SslRef {
        use foreign_types_shared::ForeignTypeRef;
        // SAFETY: the pointer is the stream's own live SSL; the returned
        // borrow is tied to `&mut self`, so no other reference to that SSL
        // is used while it lives.
        unsafe { openssl::ssl::SslRef::from_ptr_mut(self.ssl().as_ptr()) }
    }
}

#[test]
fn resumption_tls13_psk() {
    resumed(CipherSuite::Tls13Aes256GcmSha384);
}

#[test]
fn resumption_tls12() {
    resumed(CipherSuite::EcdheEcdsaAes128GcmSha256);
}

#[test]
fn max_fragment_length_from_the_client_is_honoured() {
    for suite in [
        CipherSuite::Tls13Chacha20Poly1305Sha256,
        CipherSuite::EcdheEcdsaAes128GcmSha256,
    ] {
        let mut b = client_builder();
        force_suite(&mut b, suite);
        openssl_request_max_fragment_len(&mut b, 1); // 512 bytes
        let mut client = OsslPeer::new(&b.build(), false);
        let hs = OpensslHandshake::new(&server_config(suite)).unwrap();
        let mut ours = Ours::new(pump(hs, &mut client));
        assert_eq!(ours.rl.limits().max_fragment_len, 512, "{suite}");
        let data = bytes(3, 5000);
        let mut out = Vec::new();
        ours.rl.write_app_data(&data, &mut out).unwrap();
        // Every record carries at most 512 bytes of plaintext.
        let mut rest = &out[..];
        let mut records = 0;
        while let Some(h) = RecordHeader::parse(rest) {
            assert!(
                h.len <= 512 + ours.rl.tx_overhead() - HEADER_LEN,
                "{suite}: {}",
                h.len
            );
            rest = &rest[h.total_len()..];
            records += 1;
        }
        assert!(rest.is_empty(), "{suite}: a partial record at the end");
        assert_eq!(records, 5000usize.div_ceil(512));
        client.inbound.push(&out);
        assert_eq!(client.read_available().unwrap().0, data, "{suite}");
    }
}

#[test]
fn key_update_limit_rekeys_before_the_limit() {
    let suite = CipherSuite::Tls13Aes128GcmSha256;
    let mut opts = HandshakeOptions::default();
    opts.limits.key_update_after_records = Some(5);
    let cfg = HandshakeConfig::new(server_builder(KeyKind::Ec), Side::Server, opts).unwrap();
    let hs = OpensslHandshake::new(&cfg).unwrap();
    let mut client = openssl_client(suite);
    let mut ours = Ours::new(pump(hs, &mut client));
    // Starts at seq 2 (tickets). Records at seq 2,3,4 go under key 0; the
    // next one is preceded by a KeyUpdate.
    let mut out = Vec::new();
    for i in 0..10u8 {
        ours.rl.write_app_data(&[i; 100], &mut out).unwrap();
        assert!(ours.rl.tx_seq() <= 5);
    }
    assert_eq!(ours.rl.stats().key_updates_sent, 2);
    client.inbound.push(&out);
    let (got, _) = client.read_available().unwrap();
    let want: Vec<u8> = (0..10u8).flat_map(|i| [i; 100]).collect();
    assert_eq!(got, want, "OpenSSL follows our limit-driven KeyUpdates");

    // TLS 1.2 cannot rekey: at the limit the connection closes.
    let suite = CipherSuite::EcdheEcdsaAes128GcmSha256;
    let mut opts = HandshakeOptions::default();
    opts.limits.key_update_after_records = Some(3);
    let cfg = HandshakeConfig::new(server_builder(KeyKind::Ec), Side::Server, opts).unwrap();
    let hs = OpensslHandshake::new(&cfg).unwrap();
    let mut client = openssl_client(suite);
    let mut ours = Ours::new(pump(hs, &mut client));
    let mut out = Vec::new();
    ours.rl.write_app_data(b"a", &mut out).unwrap();
    ours.rl.write_app_data(b"b", &mut out).unwrap();
    let e = ours.rl.write_app_data(b"c", &mut out).unwrap_err();
    assert!(matches!(e, TlsError::KeyExhausted(3)), "{e}");
    assert_eq!(ours.rl.stats().errors_of(ErrorKind::KeyExhausted), 1);
    client.inbound.push(&out);
    let (got, closed) = client.read_available().unwrap();
    assert_eq!((got, closed), (b"ab".to_vec(), true));
}

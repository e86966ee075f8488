//! A record layer snapshotted mid-connection and resumed as a new one (the
//! TLS half of a live move between data paths): OpenSSL's own client on
//! the other end must see nothing: data both ways, KeyUpdates before and
//! across the move, a KeyUpdate answer queued at the moment of the move,
//! every suite, no alert.

mod common;

use common::*;
use dpuproxy_tls::{
    CipherSuite, Direction, ErrorKind, HandshakeConfig, Limits, OpensslHandshake, ProtocolVersion,
    RecordLayer, ServerSession, SessionState, TlsError,
};

fn connected(suite: CipherSuite) -> (Ours, OsslPeer) {
    let mut b = client_builder();
    force_suite(&mut b, suite);
    let mut client = OsslPeer::new(&b.build(), false);
    let cfg = HandshakeConfig::server(server_builder(key_kind_for(suite))).unwrap();
    let est = pump(OpensslHandshake::new(&cfg).unwrap(), &mut client);
    (Ours::new(est), client)
}

/// Replace `ours.rl` by a record layer resumed from its snapshot.
fn carry(ours: &mut Ours) {
    let state = ours.rl.snapshot().unwrap();
    let before = (
        ours.rl.ktls_crypto_info(Direction::Tx),
        ours.rl.ktls_crypto_info(Direction::Rx),
    );
    let resumed = RecordLayer::resume(&state, Limits::default()).unwrap();
    assert_eq!(
        (
            resumed.ktls_crypto_info(Direction::Tx),
            resumed.ktls_crypto_info(Direction::Rx)
        ),
        before,
        "keys and sequence numbers carried"
    );
    assert_eq!(resumed.stats(), ours.rl.stats());
    ours.rl = resumed;
}

fn echo_round(ours: &mut Ours, client: &mut OsslPeer, data: &[u8]) {
    client.write_all(data);
    let (got, closed) = ours.receive(&client.outbound.take_all()).unwrap();
    assert_eq!((got.as_slice(), closed), (data, false));
    let mut out = Vec::new();
    ours.rl.write_app_data(&got, &mut out).unwrap();
    client.inbound.push(&out);
    assert_eq!(client.read_available().unwrap().0, data);
}

#[test]
fn resumed_record_layer_continues_every_suite() {
    for suite in CipherSuite::ALL {
        let (mut ours, mut client) = connected(suite);
        echo_round(&mut ours, &mut client, &bytes(1, 20_000));
        carry(&mut ours);
        echo_round(&mut ours, &mut client, &bytes(2, 20_000));

        if suite.version() == ProtocolVersion::Tls13 {
            // Keys updated both ways before a move: the new generation moves.
            ours.rl.request_key_update(true).unwrap();
            client.inbound.push(&ours.output());
            assert_eq!(client.read_available().unwrap().0, b"");
            echo_round(&mut ours, &mut client, b"after our update");
            carry(&mut ours);
            echo_round(&mut ours, &mut client, b"moved after the update");

            // OpenSSL asks for a KeyUpdate; the move happens while our answer
            // is still queued: it goes out first from the new layer.
            openssl_key_update(&client.stream, true);
            client.write_all(b"asking");
            let (got, _) = ours.receive(&client.outbound.take_all()).unwrap();
            assert_eq!(got, b"asking");
            assert!(ours.rl.has_pending_output());
            carry(&mut ours);
            assert!(ours.rl.has_pending_output());
            let mut out = Vec::new();
            ours.rl
                .write_app_data(b"answered after the move", &mut out)
                .unwrap();
            client.inbound.push(&out);
            assert_eq!(
                client.read_available().unwrap().0,
                b"answered after the move"
            );
            assert_eq!(ours.rl.stats().key_updates_sent, 2);
            assert_eq!(ours.rl.stats().key_updates_received, 2);
        }

        // Close both ways from the resumed layer.
        client.stream.shutdown().unwrap();
        let (_, closed) = ours.receive(&client.outbound.take_all()).unwrap();
        assert!(closed, "{suite}");
        carry(&mut ours);
        assert!(ours.rl.peer_closed());
        ours.rl.send_close_notify().unwrap();
        client.inbound.push(&ours.output());
        assert!(client.read_available().unwrap().1, "{suite}: close_notify");
        assert_eq!(ours.rl.stats().errors, [0; ErrorKind::COUNT], "{suite}");
    }
}

#[test]
fn a_failed_record_layer_has_no_snapshot() {
    let (mut ours, mut client) = connected(CipherSuite::ALL[0]);
    client.write_all(b"will be tampered with");
    let mut wire = client.outbound.take_all();
    let last = wire.len() - 1;
    wire[last] ^= 1;
    assert!(ours.receive(&wire).is_err());
    assert!(ours.rl.failed());
    assert!(matches!(ours.rl.snapshot(), Err(TlsError::Closed(_))));
}

#[test]
fn bytes_put_before_a_resumed_sessions_output_leave_first() {
    let (mut ours, mut client) = connected(CipherSuite::Tls13Aes128GcmSha256);
    echo_round(&mut ours, &mut client, b"warm");
    // Two records sealed before a move: the first sat in the unsent tail
    // a restored socket did not take, the second in the session's outbuf.
    let (mut first, mut second) = (Vec::new(), Vec::new());
    ours.rl.write_app_data(b"first ", &mut first).unwrap();
    ours.rl.write_app_data(b"second", &mut second).unwrap();
    let state = SessionState {
        records: ours.rl.snapshot().unwrap(),
        inbuf: Vec::new(),
        outbuf: second,
    };
    let mut session = ServerSession::resume(&state, Limits::default()).unwrap();
    session.prepend_out(&first);
    client.inbound.push(session.pending_out());
    assert_eq!(client.read_available().unwrap().0, b"first second");
}

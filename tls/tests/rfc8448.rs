//! RFC 8448 §3 (Simple 1-RTT Handshake) known answers: application traffic
//! keys and IVs, the client's data record at seq 0, the server's at seq 1
//! (after its NewSessionTicket at seq 0), and both close_notify alerts.
//! Every byte below is typed from the RFC text.

mod common;

use common::h;
use dpuproxy_tls::keys::tls13_traffic_keys;
use dpuproxy_tls::{
    CipherSuite, CryptoInfo, Direction, Incoming, Limits, Opener, RecordLayer, Secret,
    SecretMaterial, Secrets, Side, TrafficKeys,
};

const SUITE: CipherSuite = CipherSuite::Tls13Aes128GcmSha256;

/// {client} derive secret "tls13 c ap traffic".
const CLIENT_AP_SECRET: &str = "9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52
    87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5";
/// {server} derive secret "tls13 s ap traffic".
const SERVER_AP_SECRET: &str = "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32
    82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43";

/// {client} derive write traffic keys for application data.
const CLIENT_KEY: &str = "17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51";
const CLIENT_IV: &str = "5b 78 92 3d ee 08 57 90 33 e5 23 d9";
/// {server} derive write traffic keys for application data.
const SERVER_KEY: &str = "9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56";
const SERVER_IV: &str = "cf 78 2b 88 dd 83 54 9a ad f1 e9 84";

/// {server} send handshake record: the NewSessionTicket, seq 0 under the
/// server application key.
const SERVER_TICKET_RECORD: &str = "17 03 03 00 de 3a 6b 8f 90 41 4a 97 d6 95 9c 34 87 68
    0d e5 13 4a 2b 24 0e 6c ff ac 11 6e 95 d4 1d 6a f8 f6 b5 80 dc f3
    d1 1d 63 c7 58 db 28 9a 01 59 40 25 2f 55 71 3e 06 1d c1 3e 07 88
    91 a3 8e fb cf 57 53 ad 8e f1 70 ad 3c 73 53 d1 6d 9d a7 73 b9 ca
    7f 2b 9f a1 b6 c0 d4 a3 d0 3f 75 e0 9c 30 ba 1e 62 97 2a c4 6f 75
    f7 b9 81 be 63 43 9b 29 99 ce 13 06 46 15 13 98 91 d5 e4 c5 b4 06
    f1 6e 3f c1 81 a7 7c a4 75 84 00 25 db 2f 0a 77 f8 1b 5a b0 5b 94
    c0 13 46 75 5f 69 23 2c 86 51 9d 86 cb ee ac 87 aa c3 47 d1 43 f9
    60 5d 64 f6 50 db 4d 02 3e 70 e9 52 ca 49 fe 51 37 12 1c 74 bc 26
    97 68 7e 24 87 46 d6 df 35 30 05 f3 bc e1 86 96 12 9c 81 53 55 6b
    3b 6c 67 79 b3 7b f1 59 85 68 4f";

/// The NewSessionTicket message inside it.
const SERVER_TICKET: &str = "04 00 00 c9 00 00 00 1e fa d6 aa c5 02 00 00 00 b2 2c 03 5d
    82 93 59 ee 5f f7 af 4e c9 00 00 00 00 26 2a 64 94 dc 48 6d 2c 8a
    34 cb 33 fa 90 bf 1b 00 70 ad 3c 49 88 83 c9 36 7c 09 a2 be 78 5a
    bc 55 cd 22 60 97 a3 a9 82 11 72 83 f8 2a 03 a1 43 ef d3 ff 5d d3
    6d 64 e8 61 be 7f d6 1d 28 27 db 27 9c ce 14 50 77 d4 54 a3 66 4d
    4e 6d a4 d2 9e e0 37 25 a6 a4 da fc d0 fc 67 d2 ae a7 05 29 51 3e
    3d a2 67 7f a5 90 6c 5b 3f 7d 8f 92 f2 28 bd a4 0d da 72 14 70 f9
    fb f2 97 b5 ae a6 17 64 6f ac 5c 03 27 2e 97 07 27 c6 21 a7 91 41
    ef 5f 7d e6 50 5e 5b fb c3 88 e9 33 43 69 40 93 93 4a e4 d3 57 00
    08 00 2a 00 04 00 00 04 00";

/// {client} send application_data record (payload 00 01 .. 31).
const CLIENT_DATA_RECORD: &str = "17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28
    ba 55 cb ef ac ea 42 f9 14 aa 66 bc ab 3f 2b 98 19 a8 a5 b4 6b 39
    5b d5 4a 9a 20 44 1e 2b 62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d
    ea e6 3a ee bb 21 69 49 15 e4";

/// {server} send application_data record (same payload), seq 1.
const SERVER_DATA_RECORD: &str = "17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00
    5f c4 a4 69 32 fc 32 25 d0 5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df
    fc 60 2d cb 50 1a 59 a8 fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3
    32 54 0d d0 32 e1 67 c2 95 5d";

/// {client} send alert record: close_notify, seq 1.
const CLIENT_ALERT_RECORD: &str = "17 03 03 00 13 c9 87 27 60 65 56 66 b7 4d 7f f1 15 3e
    fd 6d b6 d0 b0 e3";

/// {server} send alert record: close_notify, seq 2.
const SERVER_ALERT_RECORD: &str = "17 03 03 00 13 b5 8f d6 71 66 eb f5 99 d2 47 20 cf be
    7e fa 7a 88 64 a9";

fn payload() -> Vec<u8> {
    (0u8..=0x31).collect()
}

fn secrets(side: Side, tx_seq: u64, rx_seq: u64) -> Secrets {
    Secrets {
        side,
        suite: SUITE,
        material: SecretMaterial::Tls13 {
            client: Secret::new(&h(CLIENT_AP_SECRET)).unwrap(),
            server: Secret::new(&h(SERVER_AP_SECRET)).unwrap(),
        },
        tx_seq,
        rx_seq,
    }
}

fn layer(side: Side, tx_seq: u64, rx_seq: u64) -> RecordLayer {
    RecordLayer::new(&secrets(side, tx_seq, rx_seq), Limits::default()).unwrap()
}

fn open_one(rl: &mut RecordLayer, record: &str) -> (Vec<u8>, &'static str) {
    let mut buf = h(record);
    let len = buf.len();
    let o = rl.open_next(&mut buf).unwrap();
    assert_eq!(o.consumed, len);
    match o.incoming {
        Incoming::AppData(d) => (d.to_vec(), "data"),
        Incoming::Control => (Vec::new(), "control"),
        Incoming::CloseNotify => (Vec::new(), "close_notify"),
        Incoming::NeedMore => (Vec::new(), "need more"),
    }
}

#[test]
fn application_traffic_keys_and_ivs() {
    let c = tls13_traffic_keys(SUITE, &h(CLIENT_AP_SECRET)).unwrap();
    assert_eq!(c.key(), &h(CLIENT_KEY)[..]);
    assert_eq!(c.iv(), &h(CLIENT_IV)[..]);
    let s = tls13_traffic_keys(SUITE, &h(SERVER_AP_SECRET)).unwrap();
    assert_eq!(s.key(), &h(SERVER_KEY)[..]);
    assert_eq!(s.iv(), &h(SERVER_IV)[..]);
}

#[test]
fn client_data_record_at_seq_0_both_ways() {
    // The server opens it.
    let mut server = layer(Side::Server, 1, 0);
    assert_eq!(
        open_one(&mut server, CLIENT_DATA_RECORD),
        (payload(), "data")
    );
    assert_eq!(server.rx_seq(), 1);
    // The client seals it, byte for byte.
    let mut client = layer(Side::Client, 0, 0);
    let mut out = Vec::new();
    client.write_app_data(&payload(), &mut out).unwrap();
    assert_eq!(out, h(CLIENT_DATA_RECORD));
}

#[test]
fn server_data_record_at_seq_1_after_the_ticket() {
    // A client layer starting at rx seq 0 meets the ticket first, drops it,
    // and opens the data at seq 1.
    let mut client = layer(Side::Client, 0, 0);
    assert_eq!(open_one(&mut client, SERVER_TICKET_RECORD).1, "control");
    assert_eq!(client.stats().tickets_ignored, 1);
    assert_eq!(
        open_one(&mut client, SERVER_DATA_RECORD),
        (payload(), "data")
    );
    assert_eq!(client.rx_seq(), 2);

    // The ticket's plaintext is the RFC's NewSessionTicket message.
    let keys = TrafficKeys::new(&h(SERVER_KEY), &h(SERVER_IV)).unwrap();
    let mut opener = Opener::new(SUITE, &keys, 0).unwrap();
    let mut rec = h(SERVER_TICKET_RECORD);
    let opened = opener.open_in_place(&mut rec).unwrap();
    assert_eq!(opened.content_type, 22);
    assert_eq!(opened.plaintext, &h(SERVER_TICKET)[..]);

    // A server layer continuing after one ticket (tx seq 1) seals it exactly.
    let mut server = layer(Side::Server, 1, 0);
    let mut out = Vec::new();
    server.write_app_data(&payload(), &mut out).unwrap();
    assert_eq!(out, h(SERVER_DATA_RECORD));
}

#[test]
fn close_notify_both_ways() {
    let mut client = layer(Side::Client, 1, 2);
    client.send_close_notify().unwrap();
    let mut out = Vec::new();
    assert_eq!(client.poll_output(&mut out), 24);
    assert_eq!(out, h(CLIENT_ALERT_RECORD));
    assert!(client.write_app_data(b"late", &mut out).is_err());

    let mut server = layer(Side::Server, 2, 1);
    assert_eq!(open_one(&mut server, CLIENT_ALERT_RECORD).1, "close_notify");
    assert!(server.peer_closed());
    server.send_close_notify().unwrap();
    let mut out = Vec::new();
    let _ = server.poll_output(&mut out);
    assert_eq!(out, h(SERVER_ALERT_RECORD));

    let mut client = layer(Side::Client, 2, 2);
    assert_eq!(open_one(&mut client, SERVER_ALERT_RECORD).1, "close_notify");
}

#[test]
fn a_wrong_sequence_number_rejects_the_rfc_record() {
    let mut server = layer(Side::Server, 1, 1);
    let mut rec = h(CLIENT_DATA_RECORD);
    assert!(server.open_next(&mut rec).is_err());
    assert_eq!(
        server
            .stats()
            .errors_of(dpuproxy_tls::ErrorKind::BadRecordMac),
        1
    );
    // The decrypted-but-unauthenticated region is wiped (the tag is left).
    let n = rec.len();
    assert!(
        rec[5..n - 16].iter().all(|&b| b == 0),
        "no unauthenticated bytes left behind"
    );
}

#[test]
fn ktls_crypto_info_from_the_rfc_secrets() {
    let client = layer(Side::Client, 0, 1);
    // Client send keys: AES-128-GCM, TLS 1.3, salt = iv[0..4], iv = iv[4..12].
    let tx = client.ktls_crypto_info(Direction::Tx);
    let mut want = vec![0x04, 0x03, 51, 0x00];
    want.extend(h("ee 08 57 90 33 e5 23 d9"));
    want.extend(h(CLIENT_KEY));
    want.extend(h("5b 78 92 3d"));
    want.extend([0; 8]);
    assert_eq!(tx.as_bytes(), &want[..]);
    // Client receive keys continue at seq 1 (after the ticket).
    let rx = client.ktls_crypto_info(Direction::Rx);
    let mut want = vec![0x04, 0x03, 51, 0x00];
    want.extend(h("dd 83 54 9a ad f1 e9 84"));
    want.extend(h(SERVER_KEY));
    want.extend(h("cf 78 2b 88"));
    want.extend([0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(rx.as_bytes(), &want[..]);
    assert!(matches!(rx, CryptoInfo::AesGcm128(_)));
}

//! Fuzz target for the server-side handshake feed: OpenSSL over memory
//! buffers ([`OpensslHandshake`]) as the DPDK path runs it (the proxy's
//! context: an EC certificate, HTTP/1.1 as the only ALPN protocol), then
//! the hand-over to our record layer.
//!
//! Input: byte 0 selects the mode and how received bytes are split into
//! reads ([`Handshake::feed`] calls); the rest depends on the mode:
//! - **raw**: the rest is what the client sends;
//! - **live**: a real OpenSSL client (memory BIOs, a variant chosen by the
//!   next byte: TLS 1.2 or 1.3, suite, ALPN, SNI) talks to the server, and
//!   the script edits each of its flights on the way (pass, re-fragment the
//!   plaintext handshake records, flip a bit, insert or append bytes or a
//!   record, truncate, duplicate). After its Finished the client sends a
//!   few application bytes.
//!
//! Invariants, checked with `assert!` (a violation is a finding):
//! - no panic; each `feed` leaves the handshake going, done (secrets
//!   available) or failed with an error; a failure is final: later feeds
//!   fail and produce no output;
//! - the server's output is always whole records, at most
//!   [`MAX_SERVER_OUTPUT`] bytes, and nothing follows a plaintext alert;
//!   the bytes it holds unprocessed stay bounded;
//! - the hand-over leaves nothing unsent, and the leftover bytes are
//!   exactly what the client sent after its last handshake record: OpenSSL
//!   never eats application data, and no application data exists before
//!   the handshake is done;
//! - application data delivered is always a prefix of what the client
//!   wrote (raw input cannot finish a handshake, so delivers nothing);
//! - with flights passed through or only re-fragmented, the handshake
//!   completes, ALPN is http/1.1 exactly when offered, the client's bytes
//!   arrive whole, and the client reads what our record layer seals back
//!   (both sequence numbers continue where OpenSSL left them).

use std::sync::OnceLock;

use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslStream, SslVerifyMode, SslVersion,
};

use super::input::{Cursor, chunks};
use crate::conn::{Incoming, RecordLayer};
use crate::handshake::{
    Handshake, HandshakeConfig, MAX_HANDSHAKE_BYTES, MemPipe, OpensslHandshake, split_records,
};
use crate::record::{HEADER_LEN, MAX_CIPHERTEXT_TLS12};
use crate::suite::ProtocolVersion;

/// Bytes per `feed` call.
const CHUNKS: [usize; 4] = [usize::MAX, 1, 7, 150];

/// Most bytes a server may send in a handshake with our one small
/// certificate (a TLS 1.3 flight and its tickets are about 2 KiB).
pub const MAX_SERVER_OUTPUT: usize = 32 * 1024;

/// Rounds of client flight / server answer in live mode.
const MAX_ROUNDS: usize = 5;

/// The proxy's server configuration with a fresh in-memory certificate,
/// built once per process.
fn server_config() -> &'static HandshakeConfig {
    static CONFIG: OnceLock<HandshakeConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let (cert, key) = crate::certs::self_signed(30).expect("certificate");
        let mut b = SslContextBuilder::new(SslMethod::tls_server()).expect("context");
        b.set_certificate(&cert).expect("certificate");
        b.set_private_key(&key).expect("key");
        b.check_private_key().expect("matching key");
        crate::alpn_http11(&mut b);
        HandshakeConfig::server(b).expect("server config")
    })
}

/// The live client's context: no certificate checks (they cost time and
/// are not under test; the CertificateVerify signature is still checked).
fn client_context() -> &'static SslContext {
    static CTX: OnceLock<SslContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let mut b = SslContextBuilder::new(SslMethod::tls_client()).expect("context");
        b.set_verify(SslVerifyMode::NONE);
        b.build()
    })
}

/// What the live client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientVariant {
    /// The only version offered.
    pub version: ProtocolVersion,
    /// Index into the suites of that version (ECDSA suites for TLS 1.2).
    pub suite: u8,
    /// Index into [`ALPN_OFFERS`].
    pub alpn: u8,
    /// Send SNI "localhost".
    pub sni: bool,
}

const TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];
const TLS12_SUITES: [&str; 3] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
];

/// ALPN lists (wire format) the client may offer: none, h2 and http/1.1,
/// h2 only, http/1.1 only.
pub const ALPN_OFFERS: [&[u8]; 4] = [b"", b"\x02h2\x08http/1.1", b"\x02h2", b"\x08http/1.1"];

impl ClientVariant {
    /// Decode one byte.
    pub fn decode(b: u8) -> Self {
        ClientVariant {
            version: if b & 1 == 0 {
                ProtocolVersion::Tls13
            } else {
                ProtocolVersion::Tls12
            },
            suite: ((b >> 1) & 3) % 3,
            alpn: (b >> 3) & 3,
            sni: b & 0x20 != 0,
        }
    }

    /// Encode (inverse of `decode`).
    pub fn encode(self) -> u8 {
        u8::from(self.version == ProtocolVersion::Tls12)
            | self.suite << 1
            | self.alpn << 3
            | u8::from(self.sni) << 5
    }

    fn offers_http11(self) -> bool {
        ALPN_OFFERS[usize::from(self.alpn)].ends_with(b"http/1.1")
    }

    /// A client stream in connect state over memory buffers.
    fn client(self) -> SslStream<MemPipe> {
        let mut ssl = Ssl::new(client_context()).expect("client");
        ssl.set_connect_state();
        let (v, set) = match self.version {
            ProtocolVersion::Tls13 => (SslVersion::TLS1_3, TLS13_SUITES[usize::from(self.suite)]),
            ProtocolVersion::Tls12 => (SslVersion::TLS1_2, TLS12_SUITES[usize::from(self.suite)]),
        };
        ssl.set_min_proto_version(Some(v)).expect("version");
        ssl.set_max_proto_version(Some(v)).expect("version");
        match self.version {
            ProtocolVersion::Tls13 => ssl.set_ciphersuites(set).expect("suites"),
            ProtocolVersion::Tls12 => ssl.set_cipher_list(set).expect("suites"),
        }
        let alpn = ALPN_OFFERS[usize::from(self.alpn)];
        if !alpn.is_empty() {
            ssl.set_alpn_protos(alpn).expect("alpn");
        }
        if self.sni {
            ssl.set_hostname("localhost").expect("sni");
        }
        SslStream::new(ssl, MemPipe::default()).expect("client stream")
    }
}

/// What one run of the target saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HandshakeOutcome {
    /// The handshake completed and was handed over.
    pub completed: bool,
    /// The error that ended it (handshake or record layer), if any.
    pub error: Option<String>,
    /// Application bytes our record layer delivered.
    pub delivered: Vec<u8>,
    /// Bytes the server sent.
    pub server_output: usize,
    /// The ALPN protocol selected.
    pub alpn: Option<Vec<u8>>,
}

/// The server under test, and what the checks remember.
struct Server {
    hs: Option<OpensslHandshake>,
    rl: Option<RecordLayer>,
    rl_in: Vec<u8>,
    /// Everything the server sent, and how much of it the client has.
    output: Vec<u8>,
    taken: usize,
    /// The output ended with the handshake's failure.
    failed: bool,
    outcome: HandshakeOutcome,
    /// The leftover at hand-over and every byte received after it.
    after_hand_over: Option<Vec<u8>>,
}

impl Server {
    fn new() -> Self {
        Server {
            hs: Some(OpensslHandshake::new(server_config()).expect("server handshake")),
            rl: None,
            rl_in: Vec::new(),
            output: Vec::new(),
            taken: 0,
            failed: false,
            outcome: HandshakeOutcome::default(),
            after_hand_over: None,
        }
    }

    /// Everything received goes in, `chunk` bytes per read.
    fn receive(&mut self, bytes: &[u8], chunk: usize) {
        for read in chunks(bytes, chunk) {
            if self.hs.is_some() {
                self.feed_handshake(read);
            } else if self.rl.is_some() {
                if let Some(after) = self.after_hand_over.as_mut() {
                    after.extend_from_slice(read);
                }
                self.rl_in.extend_from_slice(read);
                self.open_records();
            }
        }
    }

    /// One `feed`, then its output, then the checks.
    fn feed_handshake(&mut self, read: &[u8]) {
        let hs = self.hs.as_mut().expect("handshaking");
        let before = self.output.len();
        let fed = hs.feed(read);
        let _ = hs.poll_output(&mut self.output);
        if self.failed {
            assert!(fed.is_err(), "a failed handshake took more input");
            assert_eq!(self.output.len(), before, "output after the failure");
            return;
        }
        check_handshake_output(&self.output);
        match fed {
            Err(e) => {
                assert!(
                    hs.is_failed() && !hs.is_handshaking(),
                    "error without failure: {e}"
                );
                self.failed = true;
                self.outcome.error = Some(e.to_string());
            }
            Ok(()) if hs.is_handshaking() => {
                assert!(hs.secrets().is_none(), "secrets before the end");
                let bound = MAX_HANDSHAKE_BYTES + HEADER_LEN + MAX_CIPHERTEXT_TLS12;
                assert!(hs.buffered_input() <= bound, "unbounded input buffer");
            }
            Ok(()) => self.hand_over(),
        }
    }

    /// The handshake is done: hand over to the record layer.
    fn hand_over(&mut self) {
        let hs = self.hs.take().expect("handshaking");
        assert!(hs.secrets().is_some(), "done without secrets");
        self.outcome.alpn = hs.ssl().selected_alpn_protocol().map(<[u8]>::to_vec);
        let est = hs
            .into_established()
            .expect("hand-over of a finished handshake");
        assert!(est.output.is_empty(), "handshake output left at hand-over");
        self.outcome.completed = true;
        self.after_hand_over = Some(est.leftover.clone());
        self.rl_in = est.leftover;
        self.rl = Some(est.record_layer);
        self.open_records();
    }

    /// Open every whole record received since the hand-over.
    fn open_records(&mut self) {
        let Some(rl) = self.rl.as_mut() else { return };
        let mut pos = 0;
        loop {
            match rl.open_next(&mut self.rl_in[pos..]) {
                Ok(o) => {
                    let n = o.consumed;
                    match o.incoming {
                        Incoming::NeedMore => break,
                        Incoming::AppData(d) => self.outcome.delivered.extend_from_slice(d),
                        Incoming::Control | Incoming::CloseNotify => {}
                    }
                    if n == 0 {
                        break;
                    }
                    pos += n;
                }
                Err(e) => {
                    self.outcome.error = Some(e.to_string());
                    self.rl = None;
                    return;
                }
            }
        }
        self.rl_in.drain(..pos);
        let _ = rl.poll_output(&mut self.output);
    }

    /// Server bytes the client has not had yet.
    fn take_new_output(&mut self) -> Vec<u8> {
        let new = self.output[self.taken..].to_vec();
        self.taken = self.output.len();
        new
    }

    /// After a failure: one more read must fail and send nothing.
    fn check_final(&mut self) {
        if self.failed {
            self.feed_handshake(&[22, 3, 3, 0, 1, 1]);
        }
    }
}

/// The handshake's output so far: whole records, bounded, and nothing
/// after a plaintext alert.
fn check_handshake_output(out: &[u8]) {
    assert!(
        out.len() <= MAX_SERVER_OUTPUT,
        "{} bytes of handshake output",
        out.len()
    );
    let records = split_records(out);
    let whole: usize = records.iter().map(|r| r.len()).sum();
    assert_eq!(whole, out.len(), "output ends inside a record");
    if let Some(at) = records.iter().position(|r| r[0] == 21) {
        assert_eq!(at + 1, records.len(), "records after an alert");
    }
}

/// How the script edits one client flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    Pass,
    Refragment(usize),
    FlipBit(u16),
    Prepend(u8),
    Append(u8),
    Truncate(u16),
    InsertRecord(u8, u8),
    Duplicate,
}

impl Edit {
    fn decode(c: &mut Cursor<'_>) -> Self {
        let op = c.u8();
        match op & 7 {
            0 => Edit::Pass,
            1 => Edit::Refragment(1 + usize::from(op >> 3)),
            2 => Edit::FlipBit(c.u16()),
            3 => Edit::Prepend(op >> 3),
            4 => Edit::Append(op >> 3),
            5 => Edit::Truncate(c.u16()),
            6 => Edit::InsertRecord(20 + ((op >> 3) & 3), op >> 5),
            _ => Edit::Duplicate,
        }
    }

    /// The handshake must still complete after this edit.
    fn preserves(self) -> bool {
        matches!(self, Edit::Pass | Edit::Refragment(_))
    }

    fn apply(self, flight: Vec<u8>, c: &mut Cursor<'_>) -> Vec<u8> {
        let mut f = flight;
        match self {
            Edit::Pass => {}
            Edit::Refragment(size) => f = refragment(&f, size),
            Edit::FlipBit(bit) if !f.is_empty() => {
                let bit = usize::from(bit) % (f.len() * 8);
                f[bit / 8] ^= 1 << (bit % 8);
            }
            Edit::FlipBit(_) => {}
            Edit::Prepend(n) => f
                .splice(0..0, c.take(usize::from(n)).iter().copied())
                .for_each(drop),
            Edit::Append(n) => f.extend_from_slice(c.take(usize::from(n))),
            Edit::Truncate(at) => f.truncate(usize::from(at) % (f.len() + 1)),
            Edit::InsertRecord(ty, len) => {
                let body = c.take(usize::from(len) * 4);
                let mut rec = vec![ty, 3, 3, 0, body.len() as u8];
                rec.extend_from_slice(body);
                let at = split_records(&f).first().map_or(0, |r| r.len());
                f.splice(at..at, rec).for_each(drop);
            }
            Edit::Duplicate => f.extend_from_slice(&f.clone()),
        }
        f
    }
}

/// The same flight with every plaintext handshake record (those before a
/// ChangeCipherSpec) split into records of at most `size` bytes of content.
fn refragment(flight: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut plaintext = true;
    let mut used = 0;
    for rec in split_records(flight) {
        used += rec.len();
        plaintext &= rec[0] != 20;
        if !(plaintext && rec[0] == 22) || rec.len() == HEADER_LEN {
            out.extend_from_slice(rec);
            continue;
        }
        for part in rec[HEADER_LEN..].chunks(size) {
            out.extend_from_slice(&rec[..3]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(&flight[used..]);
    out
}

/// The live client's state between rounds.
struct Client {
    variant: ClientVariant,
    stream: SslStream<MemPipe>,
    done: bool,
    failed: bool,
    app: Vec<u8>,
    app_sent: bool,
}

impl Client {
    /// One client turn: run the handshake on what the server sent; once
    /// done, write the application bytes (once). Returns the flight, and
    /// how many of its bytes are the application records at its end.
    fn turn(&mut self, from_server: &[u8]) -> (Vec<u8>, usize) {
        self.stream.get_mut().input.extend_from_slice(from_server);
        if !self.done && !self.failed {
            match self.stream.do_handshake() {
                Ok(()) => self.done = true,
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(_) => self.failed = true,
            }
        }
        let handshake_len = self.stream.get_ref().output.len();
        if self.done && !self.app_sent {
            self.app_sent = true;
            self.stream.ssl_write(&self.app).expect("client write");
        }
        let flight = std::mem::take(&mut self.stream.get_mut().output);
        let app_len = flight.len() - handshake_len;
        (flight, app_len)
    }

    /// Read what the server's record layer sealed.
    fn read_all(&mut self, from_server: &[u8]) -> Vec<u8> {
        self.stream.get_mut().input.extend_from_slice(from_server);
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = self.stream.ssl_read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }
}

/// Live mode: a real client, its flights edited by the script.
fn live(chunk: usize, c: &mut Cursor<'_>) -> HandshakeOutcome {
    let variant = ClientVariant::decode(c.u8());
    let app_len = 1 + usize::from(c.u8() % 64);
    let mut client = Client {
        variant,
        stream: variant.client(),
        done: false,
        failed: false,
        app: (0..app_len).map(|i| b'a' + (i % 26) as u8).collect(),
        app_sent: false,
    };
    let mut server = Server::new();
    let mut preserved = true;
    let mut to_client = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let (flight, app_bytes) = client.turn(&to_client);
        let edit = Edit::decode(c);
        preserved &= edit.preserves();
        let app_records = flight[flight.len() - app_bytes..].to_vec();
        let was_done = server.outcome.completed;
        server.receive(&edit.apply(flight, c), chunk);
        if preserved && server.outcome.completed && !was_done {
            let after = server.after_hand_over.as_deref().unwrap_or_default();
            assert_eq!(
                after, app_records,
                "OpenSSL took bytes after the client's Finished"
            );
        }
        to_client = server.take_new_output();
        if server.failed || client.failed || server.outcome.delivered.len() >= client.app.len() {
            break;
        }
    }
    server.check_final();
    let delivered = &server.outcome.delivered;
    assert!(
        client.app.starts_with(delivered),
        "delivered bytes the client never wrote"
    );
    if preserved {
        check_clean_run(&mut client, &mut server, to_client);
    }
    server.outcome.server_output = server.output.len();
    server.outcome
}

/// An unedited (or only re-fragmented) run: everything works, both ways.
fn check_clean_run(client: &mut Client, server: &mut Server, to_client: Vec<u8>) {
    let o = &server.outcome;
    assert!(
        o.completed,
        "a real client's handshake failed: {:?}",
        o.error
    );
    assert_eq!(o.delivered, client.app, "the client's data");
    let expected_alpn = client.variant.offers_http11().then(|| b"http/1.1".to_vec());
    assert_eq!(o.alpn, expected_alpn, "ALPN");
    let rl = server.rl.as_mut().expect("record layer");
    let mut sealed = to_client;
    rl.write_app_data(b"pong from the record layer", &mut sealed)
        .expect("seal");
    assert_eq!(client.read_all(&sealed), b"pong from the record layer");
}

/// The fuzz target.
pub fn handshake(data: &[u8]) -> HandshakeOutcome {
    let mut c = Cursor::new(data);
    let sel = c.u8();
    let chunk = CHUNKS[usize::from((sel >> 1) & 3)];
    if sel & 1 == 1 {
        return live(chunk, &mut c);
    }
    let mut server = Server::new();
    server.receive(c.rest(), chunk);
    server.check_final();
    assert!(
        !server.outcome.completed,
        "a handshake from fixed bytes completed"
    );
    server.outcome.server_output = server.output.len();
    server.outcome
}

/// A seed: a named input.
#[derive(Debug, Clone)]
pub struct HandshakeSeed {
    /// File name in the corpus directory.
    pub name: String,
    /// The input.
    pub input: Vec<u8>,
}

/// The ClientHello a live client of `variant` sends first.
pub fn client_hello(variant: ClientVariant) -> Vec<u8> {
    let mut client = variant.client();
    let _ = client.do_handshake();
    std::mem::take(&mut client.get_mut().output)
}

/// Every client variant worth a seed: both versions, each ALPN offer, with
/// and without SNI, every suite at least once.
fn seed_variants() -> Vec<ClientVariant> {
    let mut v = Vec::new();
    for (i, version) in [ProtocolVersion::Tls13, ProtocolVersion::Tls12]
        .into_iter()
        .enumerate()
    {
        for alpn in 0..4u8 {
            v.push(ClientVariant {
                version,
                suite: (alpn + i as u8) % 3,
                alpn,
                sni: alpn % 2 == 0,
            });
        }
    }
    v
}

/// SSLv2-format ClientHello (RFC 6101 appendix E.2), offering TLS 1.2.
const SSLV2_HELLO: &[u8] = &[
    0x80, 0x1e, 0x01, 0x03, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10, 0xc0, 0x2b, 0x00, 0x11, 0x22,
    0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00, 0x01, 0x02,
];

/// Raw-mode seeds: captured hellos whole, cut, split and followed by junk;
/// SSLv2; plain HTTP.
fn raw_seeds() -> Vec<HandshakeSeed> {
    let mut seeds = Vec::new();
    let raw = |name: String, sel: u8, bytes: &[u8]| {
        let mut input = vec![sel];
        input.extend_from_slice(bytes);
        HandshakeSeed { name, input }
    };
    for v in seed_variants() {
        let hello = client_hello(v);
        let tag = format!(
            "{}-alpn{}{}",
            v.version,
            v.alpn,
            if v.sni { "-sni" } else { "" }
        )
        .to_lowercase();
        seeds.push(raw(format!("raw-hello-{tag}"), (v.alpn % 4) << 1, &hello));
        if v.alpn == 1 {
            seeds.push(raw(
                format!("raw-hello-truncated-{tag}"),
                0,
                &hello[..hello.len() / 2],
            ));
            let mut twice = hello.clone();
            twice.extend_from_slice(&hello);
            seeds.push(raw(format!("raw-hello-twice-{tag}"), 2, &twice));
            let mut junk = hello.clone();
            junk.extend_from_slice(&[20, 3, 3, 0, 1, 1, 22, 3, 3, 0, 4, 20, 0, 0, 32]);
            seeds.push(raw(format!("raw-hello-then-junk-{tag}"), 4, &junk));
        }
    }
    seeds.push(raw("raw-sslv2-hello".into(), 0, SSLV2_HELLO));
    seeds.push(raw(
        "raw-http-get".into(),
        0,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ));
    seeds.push(raw(
        "raw-oversize-record".into(),
        0,
        &[22, 3, 1, 0xff, 0xff, 1],
    ));
    seeds.push(raw("raw-empty".into(), 0, &[]));
    seeds
}

/// Live-mode seeds: clean handshakes of every variant, and one of each edit.
fn live_seeds() -> Vec<HandshakeSeed> {
    let mut seeds = Vec::new();
    for (i, v) in seed_variants().into_iter().enumerate() {
        let sel = 1 | ((i % 4) as u8) << 1;
        let refragment = 1 | (i as u8 % 4) << 3;
        let input = vec![sel, v.encode(), 20, 0, refragment, 0, 0, 0];
        let tag = format!("{}-alpn{}", v.version, v.alpn).to_lowercase();
        seeds.push(HandshakeSeed {
            name: format!("live-{tag}"),
            input,
        });
    }
    let edits: [(&str, &[u8]); 6] = [
        ("flip-finished", &[0, 2, 0x01, 0x40]),
        ("prepend-junk", &[0, 3 | 4 << 3, 1, 2, 3, 4]),
        ("append-junk", &[0, 4 | 5 << 3, 23, 3, 3, 0, 0]),
        ("truncate", &[0, 5, 0, 40]),
        ("insert-ccs", &[0, 6 | 2 << 5, 1, 1, 1, 1, 1, 1, 1, 1]),
        ("duplicate", &[0, 7]),
    ];
    for (i, (name, script)) in edits.into_iter().enumerate() {
        let variant = seed_variants()[i % 8];
        let mut input = vec![1, variant.encode(), 16];
        input.extend_from_slice(script);
        seeds.push(HandshakeSeed {
            name: format!("live-edit-{name}"),
            input,
        });
    }
    seeds
}

/// The seed corpus.
pub fn handshake_seeds() -> Vec<HandshakeSeed> {
    let mut seeds = raw_seeds();
    seeds.extend(live_seeds());
    seeds
}

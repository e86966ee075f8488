//! Shared helpers: certificates, an in-memory duplex for OpenSSL's own
//! `SslStream`, and contexts with forced suites.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use dpuproxy_tls::{
    CipherSuite, Established, Handshake, Incoming, OpensslHandshake, ProtocolVersion, RecordLayer,
    TlsError,
};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{
    ErrorCode, SslContext, SslContextBuilder, SslMethod, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509NameBuilder};

/// Certificate key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ec,
    Rsa,
}

/// The key type a suite's certificate needs.
pub fn key_kind_for(suite: CipherSuite) -> KeyKind {
    if suite.name().contains("-RSA-") {
        KeyKind::Rsa
    } else {
        KeyKind::Ec
    }
}

/// A self-signed "localhost" certificate.
pub fn self_signed(kind: KeyKind) -> (X509, PKey<Private>) {
    let pkey = match kind {
        KeyKind::Ec => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
            PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
        }
        KeyKind::Rsa => PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
    };
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, "localhost")
        .unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&pkey).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&pkey, MessageDigest::sha256()).unwrap();
    (b.build(), pkey)
}

/// Cached certificates (RSA generation is slow).
pub fn cert(kind: KeyKind) -> (X509, PKey<Private>) {
    use std::sync::OnceLock;
    static EC: OnceLock<(X509, PKey<Private>)> = OnceLock::new();
    static RSA: OnceLock<(X509, PKey<Private>)> = OnceLock::new();
    let cell = match kind {
        KeyKind::Ec => &EC,
        KeyKind::Rsa => &RSA,
    };
    cell.get_or_init(|| self_signed(kind)).clone()
}

fn version(v: ProtocolVersion) -> SslVersion {
    match v {
        ProtocolVersion::Tls12 => SslVersion::TLS1_2,
        ProtocolVersion::Tls13 => SslVersion::TLS1_3,
    }
}

/// Server builder with a certificate for `kind`.
pub fn server_builder(kind: KeyKind) -> SslContextBuilder {
    let (cert, key) = cert(kind);
    let mut b = SslContext::builder(SslMethod::tls_server()).unwrap();
    b.set_certificate(&cert).unwrap();
    b.set_private_key(&key).unwrap();
    b
}

/// Client builder trusting both test certificates, verifying the peer.
pub fn client_builder() -> SslContextBuilder {
    let mut b = SslContext::builder(SslMethod::tls_client()).unwrap();
    for kind in [KeyKind::Ec, KeyKind::Rsa] {
        b.cert_store_mut().add_cert(cert(kind).0).unwrap();
    }
    b.set_verify(SslVerifyMode::PEER);
    b
}

/// Restrict a builder to exactly one suite (and its version).
pub fn force_suite(b: &mut SslContextBuilder, suite: CipherSuite) {
    let v = version(suite.version());
    b.set_min_proto_version(Some(v)).unwrap();
    b.set_max_proto_version(Some(v)).unwrap();
    match suite.version() {
        ProtocolVersion::Tls13 => b.set_ciphersuites(suite.name()).unwrap(),
        ProtocolVersion::Tls12 => b.set_cipher_list(suite.name()).unwrap(),
    }
}

/// Keylog lines captured from an OpenSSL context.
pub fn capture_keylog(b: &mut SslContextBuilder) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    b.set_keylog_callback(move |_, line| l2.lock().unwrap().push(line.to_string()));
    lines
}

/// One direction of an in-memory wire.
#[derive(Clone, Default, Debug)]
pub struct Pipe(pub Rc<RefCell<VecDeque<u8>>>);

impl Pipe {
    pub fn take_all(&self) -> Vec<u8> {
        self.0.borrow_mut().drain(..).collect()
    }
    pub fn push(&self, bytes: &[u8]) {
        self.0.borrow_mut().extend(bytes);
    }
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }
}

/// OpenSSL's end: reads `rx`, writes `tx`, and keeps a copy of everything
/// it wrote in `sent`.
#[derive(Debug)]
pub struct Duplex {
    pub rx: Pipe,
    pub tx: Pipe,
    pub sent: Rc<RefCell<Vec<u8>>>,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut q = self.rx.0.borrow_mut();
        if q.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(q.len());
        for (d, s) in buf.iter_mut().zip(q.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx.push(buf);
        self.sent.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An OpenSSL endpoint over in-memory pipes.
pub struct OsslPeer {
    pub stream: SslStream<Duplex>,
    /// Bytes for OpenSSL to read.
    pub inbound: Pipe,
    /// Bytes OpenSSL wrote, not yet taken.
    pub outbound: Pipe,
    /// Everything OpenSSL wrote.
    pub sent: Rc<RefCell<Vec<u8>>>,
}

impl OsslPeer {
    pub fn new(ctx: &SslContext, server: bool) -> Self {
        let mut ssl = openssl::ssl::Ssl::new(ctx).unwrap();
        if server {
            ssl.set_accept_state();
        } else {
            ssl.set_connect_state();
            ssl.set_hostname("localhost").unwrap();
            ssl.param_mut().set_host("localhost").unwrap();
        }
        let (inbound, outbound) = (Pipe::default(), Pipe::default());
        let sent = Rc::new(RefCell::new(Vec::new()));
        let duplex = Duplex {
            rx: inbound.clone(),
            tx: outbound.clone(),
            sent: sent.clone(),
        };
        OsslPeer {
            stream: SslStream::new(ssl, duplex).unwrap(),
            inbound,
            outbound,
            sent,
        }
    }

    /// Step the handshake; true when done.
    pub fn handshake_step(&mut self) -> bool {
        match self.stream.do_handshake() {
            Ok(()) => true,
            Err(e) if e.code() == ErrorCode::WANT_READ => false,
            Err(e) => panic!("OpenSSL handshake failed: {e}"),
        }
    }

    /// SSL_write everything (never blocks on the in-memory pipe).
    pub fn write_all(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.stream.ssl_write(data).expect("SSL_write");
            data = &data[n..];
        }
    }

    /// SSL_read until it wants more input; returns the bytes and whether
    /// close_notify arrived.
    pub fn read_available(&mut self) -> Result<(Vec<u8>, bool), openssl::ssl::Error> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match self.stream.ssl_read(&mut buf) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.code() == ErrorCode::WANT_READ => return Ok((out, false)),
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok((out, true)),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Hex with whitespace ignored (for vectors typed as in the RFC).
pub fn h(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

// OpenSSL calls rust-openssl does not wrap, for driving the OpenSSL peer.
unsafe extern "C" {
    fn SSL_key_update(s: *mut openssl_sys::SSL, updatetype: std::ffi::c_int) -> std::ffi::c_int;
    fn SSL_CTX_set_tlsext_max_fragment_length(
        ctx: *mut openssl_sys::SSL_CTX,
        mode: u8,
    ) -> std::ffi::c_int;
}

/// Make OpenSSL send a KeyUpdate with its next write.
pub fn openssl_key_update(stream: &SslStream<Duplex>, request_peer: bool) {
    use foreign_types_shared::ForeignTypeRef;
    // SAFETY: the SSL pointer comes from a live SslStream that outlives the
    // call; SSL_key_update only reads and updates that SSL's state.
    let rc = unsafe { SSL_key_update(stream.ssl().as_ptr(), std::ffi::c_int::from(request_peer)) };
    assert_eq!(rc, 1, "SSL_key_update failed");
}

/// Ask for max_fragment_length (1 = 512 ... 4 = 4096) on a client context.
pub fn openssl_request_max_fragment_len(b: &mut SslContextBuilder, mode: u8) {
    // SAFETY: the builder owns a live SSL_CTX for the duration of the call;
    // the function only stores the mode in it.
    let rc = unsafe { SSL_CTX_set_tlsext_max_fragment_length(b.as_ptr(), mode) };
    assert_eq!(rc, 1, "SSL_CTX_set_tlsext_max_fragment_length failed");
}

/// Our side of a connection after the handshake.
pub struct Ours {
    pub rl: RecordLayer,
    pub rx: Vec<u8>,
}

impl Ours {
    pub fn new(est: Established) -> Self {
        Ours {
            rl: est.record_layer,
            rx: est.leftover,
        }
    }

    /// Take bytes from the peer; return application data and whether
    /// close_notify arrived.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(Vec<u8>, bool), TlsError> {
        self.rx.extend_from_slice(bytes);
        let mut data = Vec::new();
        let mut pos = 0;
        let mut closed = false;
        loop {
            let o = self.rl.open_next(&mut self.rx[pos..])?;
            match o.incoming {
                Incoming::NeedMore => break,
                Incoming::AppData(d) => data.extend_from_slice(d),
                Incoming::Control => {}
                Incoming::CloseNotify => {
                    closed = true;
                    pos += o.consumed;
                    break;
                }
            }
            pos += o.consumed;
        }
        self.rx.drain(..pos);
        Ok((data, closed))
    }

    pub fn output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.rl.poll_output(&mut out);
        out
    }
}

/// Pump a handshake between our engine and an OpenSSL peer.
pub fn pump(mut ours: OpensslHandshake, peer: &mut OsslPeer) -> Established {
    let mut out = Vec::new();
    for _ in 0..20 {
        let _ = ours.poll_output(&mut out);
        peer.inbound.push(&out);
        out.clear();
        let peer_done = peer.handshake_step();
        ours.feed(&peer.outbound.take_all())
            .expect("our handshake failed");
        if peer_done && !ours.is_handshaking() {
            let est = ours.into_established().unwrap();
            peer.inbound.push(&est.output);
            return est;
        }
    }
    panic!("handshake did not finish in 20 rounds");
}

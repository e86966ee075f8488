//! The handshake engine: OpenSSL over memory buffers, behind [`Handshake`].
//!
//! OpenSSL reads and writes through a BIO over two in-memory buffers (the
//! custom BIO rust-openssl builds around any `Read + Write`, so no raw
//! `BIO_s_mem` pointers are needed). We hand it one whole record at a time
//! and stop the moment the handshake completes, so OpenSSL never consumes
//! a byte of application data: whatever follows stays ours.
//!
//! When the handshake is done we take out, without calling OpenSSL's record
//! layer again:
//! - the version and suite;
//! - the traffic secrets from the keylog callback (`CLIENT_TRAFFIC_SECRET_0`
//!   / `SERVER_TRAFFIC_SECRET_0` for TLS 1.3, `CLIENT_RANDOM` master secret
//!   for TLS 1.2);
//! - the exact sequence numbers each direction continues from. We count the
//!   records OpenSSL already protected under the traffic keys by opening
//!   them with our own keys: TLS 1.2 Finished (seq 0) each way, TLS 1.3
//!   server NewSessionTickets. A key we derived wrongly fails right here,
//!   in the handshake, instead of on the first data record;
//! - a max_fragment_length the client negotiated (server side), so we
//!   never send records larger than it accepts.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, OnceLock};

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslOptions, SslRef, SslStream, SslVersion,
};

use crate::conn::{Limits, RecordLayer};
use crate::error::TlsError;
use crate::keys::{Secret, SecretMaterial, Secrets, TrafficKeys};
use crate::record::{HEADER_LEN, Opener, RecordHeader, next_record};
use crate::suite::{CipherSuite, ProtocolVersion, Side, TLS12_CIPHER_LIST, TLS13_CIPHERSUITES};

/// Bytes in, bytes out: what a data path needs from a handshake.
pub trait Handshake {
    /// Bytes received from the peer. Drives the handshake as far as whole
    /// records allow. After an error, send what [`Self::poll_output`] gives
    /// (OpenSSL's alert) and close.
    fn feed(&mut self, input: &[u8]) -> Result<(), HandshakeError>;

    /// Move bytes to send to the peer into `out`; returns how many.
    #[must_use]
    fn poll_output(&mut self, out: &mut Vec<u8>) -> usize;

    /// Still exchanging handshake messages (false once done or failed).
    fn is_handshaking(&self) -> bool;

    /// The secrets, once the handshake is done.
    fn secrets(&self) -> Option<&Secrets>;
}

/// Why a handshake failed or could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// OpenSSL rejected the handshake (its alert is in the output).
    #[error("TLS handshake failed: {0}")]
    Ssl(String),
    /// A suite outside what the record layer carries was negotiated.
    #[error("negotiated cipher {0}, which the record layer does not carry")]
    UnsupportedSuite(String),
    /// Not TLS 1.2 or 1.3.
    #[error("negotiated protocol {0} is not TLS 1.2 or TLS 1.3")]
    UnsupportedVersion(String),
    /// The keylog callback did not give a secret we need.
    #[error("OpenSSL did not log {0}")]
    MissingSecret(&'static str),
    /// Our keys do not open what OpenSSL sent under them.
    #[error("derived keys disagree with OpenSSL: {0}")]
    KeyMismatch(&'static str),
    /// More handshake bytes than any real handshake needs.
    #[error("handshake exceeded {0} bytes")]
    TooLarge(usize),
    /// The call needs a finished handshake.
    #[error("the handshake is not finished")]
    NotFinished,
    /// OpenSSL failed outside the handshake proper.
    #[error("crypto library error: {0}")]
    Crypto(#[from] ErrorStack),
    /// Building the record layer failed.
    #[error(transparent)]
    Record(#[from] TlsError),
}

/// Upper bound on handshake bytes in either direction (certificate chains
/// included). OpenSSL's own limits are lower; this only bounds our copies.
pub const MAX_HANDSHAKE_BYTES: usize = 256 * 1024;

/// A callback that gets every keylog line (SSLKEYLOGFILE format), for
/// debugging with Wireshark. The lines are secrets.
pub type KeylogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Protocol choices for a [`HandshakeConfig`].
#[derive(Clone)]
pub struct HandshakeOptions {
    /// OpenSSL TLS 1.3 ciphersuites string (must name only suites we carry).
    pub tls13_ciphersuites: String,
    /// OpenSSL TLS 1.2 cipher list (must name only suites we carry).
    pub tls12_cipher_list: String,
    /// Lowest version offered/accepted.
    pub min_version: ProtocolVersion,
    /// Highest version offered/accepted.
    pub max_version: ProtocolVersion,
    /// Record-layer limits for established connections.
    pub limits: Limits,
    /// Optional keylog tap (debugging only).
    pub keylog_sink: Option<KeylogSink>,
}

impl Default for HandshakeOptions {
    fn default() -> Self {
        HandshakeOptions {
            tls13_ciphersuites: TLS13_CIPHERSUITES.to_string(),
            tls12_cipher_list: TLS12_CIPHER_LIST.to_string(),
            min_version: ProtocolVersion::Tls12,
            max_version: ProtocolVersion::Tls13,
            limits: Limits::default(),
            keylog_sink: None,
        }
    }
}

impl fmt::Debug for HandshakeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeOptions")
            .field("tls13_ciphersuites", &self.tls13_ciphersuites)
            .field("tls12_cipher_list", &self.tls12_cipher_list)
            .field("min_version", &self.min_version)
            .field("max_version", &self.max_version)
            .field("limits", &self.limits)
            .field("keylog_sink", &self.keylog_sink.is_some())
            .finish()
    }
}

fn ssl_version(v: ProtocolVersion) -> SslVersion {
    match v {
        ProtocolVersion::Tls12 => SslVersion::TLS1_2,
        ProtocolVersion::Tls13 => SslVersion::TLS1_3,
    }
}

/// An OpenSSL context prepared for memory-buffer handshakes: our suites
/// only, TLS 1.2–1.3, no renegotiation, no compression, and the keylog
/// callback that hands the secrets over. Cheap to clone (reference counted).
#[derive(Clone)]
pub struct HandshakeConfig {
    ctx: SslContext,
    side: Side,
    limits: Limits,
}

impl fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("side", &self.side)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HandshakeConfig {
    /// The record-layer limits of the sessions it starts (also for a
    /// session resumed from a moved state).
    pub fn limits(&self) -> Limits {
        self.limits.clone()
    }

    /// Server side with default options. `builder` carries the certificate
    /// and key (and anything else the caller wants, e.g. ALPN).
    pub fn server(builder: SslContextBuilder) -> Result<Self, HandshakeError> {
        Self::new(builder, Side::Server, HandshakeOptions::default())
    }

    /// Client side with default options. `builder` carries trust settings.
    pub fn client(builder: SslContextBuilder) -> Result<Self, HandshakeError> {
        Self::new(builder, Side::Client, HandshakeOptions::default())
    }

    /// Any side with explicit options. Replaces any keylog callback already
    /// set on `builder`.
    pub fn new(
        mut builder: SslContextBuilder,
        side: Side,
        opts: HandshakeOptions,
    ) -> Result<Self, HandshakeError> {
        builder.set_min_proto_version(Some(ssl_version(opts.min_version)))?;
        builder.set_max_proto_version(Some(ssl_version(opts.max_version)))?;
        builder.set_ciphersuites(&opts.tls13_ciphersuites)?;
        builder.set_cipher_list(&opts.tls12_cipher_list)?;
        builder.set_options(SslOptions::NO_RENEGOTIATION | SslOptions::NO_COMPRESSION);
        // Read-ahead would let OpenSSL buffer bytes past the handshake.
        builder.set_read_ahead(false);
        let idx = keylog_index()?;
        let sink = opts.keylog_sink.clone();
        builder.set_keylog_callback(move |ssl, line| {
            if let Some(cap) = ssl.ex_data(idx)
                && let Ok(mut cap) = cap.lock()
            {
                cap.push_line(line);
            }
            if let Some(sink) = &sink {
                sink(line);
            }
        });
        Ok(HandshakeConfig {
            ctx: builder.build(),
            side,
            limits: opts.limits,
        })
    }

    /// Which side handshakes from this config take.
    pub fn side(&self) -> Side {
        self.side
    }
}

type Capture = Mutex<KeyLog>;

fn keylog_index() -> Result<Index<Ssl, Capture>, ErrorStack> {
    static IDX: OnceLock<Index<Ssl, Capture>> = OnceLock::new();
    if let Some(i) = IDX.get() {
        return Ok(*i);
    }
    let i = Ssl::new_ex_index::<Capture>()?;
    Ok(*IDX.get_or_init(|| i))
}

/// The secrets of one connection, parsed from OpenSSL keylog lines.
#[derive(Default, Clone)]
pub struct KeyLog {
    client_random: Option<[u8; 32]>,
    master: Option<Secret>,
    client_traffic_0: Option<Secret>,
    server_traffic_0: Option<Secret>,
}

impl fmt::Debug for KeyLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyLog")
            .field("master", &self.master.is_some())
            .field("client_traffic_0", &self.client_traffic_0.is_some())
            .field("server_traffic_0", &self.server_traffic_0.is_some())
            .finish()
    }
}

impl KeyLog {
    /// Take one line (`LABEL <client_random hex> <secret hex>`). Labels we
    /// do not use and malformed lines are ignored.
    pub fn push_line(&mut self, line: &str) {
        let mut it = line.split_ascii_whitespace();
        let (Some(label), Some(cr), Some(secret), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return;
        };
        let mut random = [0u8; 32];
        if hex::decode_to_slice(cr, &mut random).is_err() {
            return;
        }
        let mut buf = [0u8; 48];
        let n = secret.len() / 2;
        if n > 48 || hex::decode_to_slice(secret, &mut buf[..n]).is_err() {
            return;
        }
        let Some(secret) = Secret::new(&buf[..n]) else {
            return;
        };
        zeroize::Zeroize::zeroize(&mut buf);
        let slot = match label {
            "CLIENT_RANDOM" => &mut self.master,
            "CLIENT_TRAFFIC_SECRET_0" => &mut self.client_traffic_0,
            "SERVER_TRAFFIC_SECRET_0" => &mut self.server_traffic_0,
            _ => return,
        };
        *slot = Some(secret);
        self.client_random = Some(random);
    }

    /// Secrets for `suite`, with both sequence numbers at 0 (callers set
    /// them). Checks that the logged client random is this connection's.
    pub fn secrets(
        &self,
        side: Side,
        suite: CipherSuite,
        client_random: &[u8; 32],
        server_random: &[u8; 32],
    ) -> Result<Secrets, HandshakeError> {
        if self.client_random.is_some_and(|r| &r != client_random) {
            return Err(HandshakeError::KeyMismatch(
                "keylog client random is not this connection's",
            ));
        }
        let material = match suite.version() {
            ProtocolVersion::Tls13 => SecretMaterial::Tls13 {
                client: self
                    .client_traffic_0
                    .clone()
                    .ok_or(HandshakeError::MissingSecret("CLIENT_TRAFFIC_SECRET_0"))?,
                server: self
                    .server_traffic_0
                    .clone()
                    .ok_or(HandshakeError::MissingSecret("SERVER_TRAFFIC_SECRET_0"))?,
            },
            ProtocolVersion::Tls12 => SecretMaterial::Tls12 {
                master: self
                    .master
                    .clone()
                    .ok_or(HandshakeError::MissingSecret("CLIENT_RANDOM master secret"))?,
                client_random: *client_random,
                server_random: *server_random,
            },
        };
        Ok(Secrets::new(side, suite, material))
    }
}

/// The in-memory "socket" OpenSSL reads and writes (also the fuzz
/// target's client end, and the bench rig's TLS clients over our TCP).
/// Reading an empty pipe is `WouldBlock`.
#[derive(Debug, Default)]
pub struct MemPipe {
    /// Bytes for OpenSSL to read, from `in_pos` on (append to it).
    pub input: Vec<u8>,
    /// How much of `input` OpenSSL has read.
    pub in_pos: usize,
    /// Everything OpenSSL wrote (drain it).
    pub output: Vec<u8>,
}

impl Read for MemPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = &self.input[self.in_pos..];
        if avail.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.in_pos += n;
        if self.in_pos == self.input.len() {
            self.input.clear();
            self.in_pos = 0;
        }
        Ok(n)
    }
}

impl Write for MemPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshaking,
    Done,
    Failed,
}

/// What a finished handshake hands to the data path.
#[derive(Debug)]
pub struct Established {
    /// The record layer, continuing at the right sequence numbers.
    pub record_layer: RecordLayer,
    /// Bytes received after the last handshake record (already application
    /// records, or a TLS 1.3 NewSessionTicket for a client).
    pub leftover: Vec<u8>,
    /// Handshake bytes not yet polled; send them before anything else.
    pub output: Vec<u8>,
}

/// OpenSSL over memory buffers.
pub struct OpensslHandshake {
    stream: SslStream<MemPipe>,
    side: Side,
    limits: Limits,
    state: State,
    /// Received and not yet given to OpenSSL.
    inbox: Vec<u8>,
    /// Every record given to OpenSSL, to count those under the traffic key.
    fed: Vec<u8>,
    /// How much of the pipe's output was polled.
    out_pos: usize,
    secrets: Option<Secrets>,
    max_fragment_len: Option<usize>,
}

impl fmt::Debug for OpensslHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpensslHandshake")
            .field("side", &self.side)
            .field("state", &self.state)
            .field("inbox", &self.inbox.len())
            .finish_non_exhaustive()
    }
}

impl OpensslHandshake {
    /// Start a handshake from `config`. A client's ClientHello is ready in
    /// [`Handshake::poll_output`] right away.
    pub fn new(config: &HandshakeConfig) -> Result<Self, HandshakeError> {
        Self::with_ssl(config, |_| Ok(()))
    }

    /// Start a client handshake that sends SNI `server_name` and checks the
    /// certificate against it (when the config verifies peers).
    pub fn client(config: &HandshakeConfig, server_name: &str) -> Result<Self, HandshakeError> {
        Self::with_ssl(config, |ssl| {
            ssl.set_hostname(server_name)?;
            ssl.param_mut().set_host(server_name)?;
            Ok(())
        })
    }

    fn with_ssl(
        config: &HandshakeConfig,
        setup: impl FnOnce(&mut SslRef) -> Result<(), ErrorStack>,
    ) -> Result<Self, HandshakeError> {
        let mut ssl = Ssl::new(&config.ctx)?;
        ssl.set_ex_data(keylog_index()?, Mutex::new(KeyLog::default()));
        match config.side {
            Side::Server => ssl.set_accept_state(),
            Side::Client => ssl.set_connect_state(),
        }
        setup(&mut ssl)?;
        let stream = SslStream::new(ssl, MemPipe::default())?;
        let mut hs = OpensslHandshake {
            stream,
            side: config.side,
            limits: config.limits.clone(),
            state: State::Handshaking,
            inbox: Vec::new(),
            fed: Vec::new(),
            out_pos: 0,
            secrets: None,
            max_fragment_len: None,
        };
        if hs.side == Side::Client {
            hs.drive()?;
        }
        Ok(hs)
    }

    /// The OpenSSL connection (peer certificate, ALPN, ...).
    pub fn ssl(&self) -> &SslRef {
        self.stream.ssl()
    }

    /// True after a failed handshake.
    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Received bytes held and not yet handed over: the inbox plus what
    /// OpenSSL has not read (the fuzz target bounds it).
    pub(crate) fn buffered_input(&self) -> usize {
        let pipe = self.stream.get_ref();
        self.inbox.len() + pipe.input.len() - pipe.in_pos
    }

    /// Hand over to the record layer.
    pub fn into_established(mut self) -> Result<Established, HandshakeError> {
        let Some(secrets) = self.secrets.take() else {
            return Err(HandshakeError::NotFinished);
        };
        let mut limits = self.limits.clone();
        if let Some(m) = self.max_fragment_len {
            limits.max_fragment_len = limits.max_fragment_len.min(m);
        }
        let record_layer = RecordLayer::new(&secrets, limits)?;
        let pipe = self.stream.get_mut();
        let mut leftover = pipe.input.split_off(pipe.in_pos);
        leftover.append(&mut self.inbox);
        let output = pipe.output.split_off(self.out_pos);
        Ok(Established {
            record_layer,
            leftover,
            output,
        })
    }

    fn drive(&mut self) -> Result<(), HandshakeError> {
        match self.stream.do_handshake() {
            Ok(()) => self.finish(),
            Err(e) if e.code() == ErrorCode::WANT_READ => Ok(()),
            Err(e) => {
                self.state = State::Failed;
                Err(HandshakeError::Ssl(e.to_string()))
            }
        }
    }

    fn finish(&mut self) -> Result<(), HandshakeError> {
        let result = self.extract();
        match result {
            Ok((secrets, mfl)) => {
                self.secrets = Some(secrets);
                self.max_fragment_len = mfl;
                self.state = State::Done;
                // The transcript was only needed to count records.
                self.fed = Vec::new();
                Ok(())
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    fn extract(&self) -> Result<(Secrets, Option<usize>), HandshakeError> {
        let ssl = self.stream.ssl();
        let version = match ssl.version2() {
            Some(SslVersion::TLS1_3) => ProtocolVersion::Tls13,
            Some(SslVersion::TLS1_2) => ProtocolVersion::Tls12,
            _ => {
                return Err(HandshakeError::UnsupportedVersion(
                    ssl.version_str().to_string(),
                ));
            }
        };
        let cipher = ssl
            .current_cipher()
            .ok_or(HandshakeError::UnsupportedSuite("none".into()))?;
        let suite = CipherSuite::from_iana(u16::from_be_bytes(cipher.protocol_id()))
            .filter(|s| s.version() == version)
            .ok_or_else(|| HandshakeError::UnsupportedSuite(cipher.name().to_string()))?;
        let mut cr = [0u8; 32];
        let mut sr = [0u8; 32];
        ssl.client_random(&mut cr);
        ssl.server_random(&mut sr);
        let mut log = ssl
            .ex_data(keylog_index()?)
            .and_then(|m| m.lock().ok().map(|g| g.clone()))
            .unwrap_or_default();
        if version == ProtocolVersion::Tls12 && log.master.is_none() {
            // Resumed TLS 1.2 sessions may not be logged; the session has it.
            if let Some(session) = ssl.session() {
                let mut mk = [0u8; 48];
                let n = session.master_key(&mut mk);
                log.master = Secret::new(&mk[..n.min(48)]);
                zeroize::Zeroize::zeroize(&mut mk);
            }
        }
        let mut secrets = log.secrets(self.side, suite, &cr, &sr)?;
        let keys = secrets.derive()?;
        let sent = &self.stream.get_ref().output;
        secrets.tx_seq = records_under_key(sent, suite, &keys.tx)?;
        secrets.rx_seq = records_under_key(&self.fed, suite, &keys.rx)?;
        if version == ProtocolVersion::Tls12 && (secrets.tx_seq == 0 || secrets.rx_seq == 0) {
            return Err(HandshakeError::KeyMismatch(
                "TLS 1.2 Finished does not open under the derived key",
            ));
        }
        let mfl = match self.side {
            Side::Server => client_hello_max_fragment_len(&self.fed, version),
            Side::Client => None,
        };
        Ok((secrets, mfl))
    }
}

impl Handshake for OpensslHandshake {
    fn feed(&mut self, input: &[u8]) -> Result<(), HandshakeError> {
        if self.state == State::Failed {
            return Err(HandshakeError::Ssl("the handshake already failed".into()));
        }
        self.inbox.extend_from_slice(input);
        while self.state == State::Handshaking {
            // The TLS 1.2 limits are the looser ones, and hold for any hello.
            let take = match next_record(&self.inbox, ProtocolVersion::Tls12) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                // Not a TLS record: let OpenSSL say so (with its alert).
                Err(_) => self.inbox.len(),
            };
            if self.fed.len() + take > MAX_HANDSHAKE_BYTES {
                self.state = State::Failed;
                return Err(HandshakeError::TooLarge(MAX_HANDSHAKE_BYTES));
            }
            let rec = &self.inbox[..take];
            self.fed.extend_from_slice(rec);
            self.stream.get_mut().input.extend_from_slice(rec);
            self.inbox.drain(..take);
            self.drive()?;
            if self.stream.get_ref().output.len() > MAX_HANDSHAKE_BYTES {
                self.state = State::Failed;
                return Err(HandshakeError::TooLarge(MAX_HANDSHAKE_BYTES));
            }
        }
        Ok(())
    }

    fn poll_output(&mut self, out: &mut Vec<u8>) -> usize {
        let produced = &self.stream.get_ref().output[self.out_pos..];
        out.extend_from_slice(produced);
        let n = produced.len();
        self.out_pos += n;
        n
    }

    fn is_handshaking(&self) -> bool {
        self.state == State::Handshaking
    }

    fn secrets(&self) -> Option<&Secrets> {
        self.secrets.as_ref()
    }
}

/// Whole records at the front of `bytes` (a trailing partial one is left out).
pub(crate) fn split_records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(h) = RecordHeader::parse(rest) {
        if rest.len() < h.total_len() {
            break;
        }
        let (rec, tail) = rest.split_at(h.total_len());
        out.push(rec);
        rest = tail;
    }
    out
}

/// How many records at the end of `transcript` are protected under `keys`
/// (they must open in sequence from 0). This is the sequence number the
/// direction continues from.
fn records_under_key(
    transcript: &[u8],
    suite: CipherSuite,
    keys: &TrafficKeys,
) -> Result<u64, HandshakeError> {
    let records = split_records(transcript);
    // One opener for every trial: a failed open leaves it at seq 0, and a
    // transcript of many tiny records costs one key setup, not one each.
    let mut opener = Opener::new(suite, keys, 0)?;
    for (i, first) in records.iter().enumerate() {
        if first.first() == Some(&20) {
            continue;
        }
        if opener.open_in_place(&mut first.to_vec()).is_err() {
            continue;
        }
        for rec in &records[i + 1..] {
            opener.open_in_place(&mut rec.to_vec()).map_err(|_| {
                HandshakeError::KeyMismatch(
                    "a record after the first one under the traffic key does not open",
                )
            })?;
        }
        return Ok((records.len() - i) as u64);
    }
    Ok(0)
}

/// The max_fragment_length (RFC 6066) in the last ClientHello among the
/// plaintext handshake records of `fed`, if it offered a valid one (OpenSSL
/// accepts a valid offer, so it is in force).
fn client_hello_max_fragment_len(fed: &[u8], version: ProtocolVersion) -> Option<usize> {
    let mut hs = Vec::new();
    for rec in split_records(fed) {
        match rec[0] {
            22 => hs.extend_from_slice(&rec[HEADER_LEN..]),
            // TLS 1.2: what follows ChangeCipherSpec is encrypted.
            20 if version == ProtocolVersion::Tls12 => break,
            _ => {}
        }
    }
    let mut found = None;
    let mut p = Reader(&hs);
    while let (Some(typ), Some(len)) = (p.u8(), p.u24()) {
        let Some(body) = p.take(len) else { break };
        if typ == 1 {
            found = client_hello_mfl(body);
        }
    }
    found
}

fn client_hello_mfl(body: &[u8]) -> Option<usize> {
    let mut p = Reader(body);
    p.take(2 + 32)?;
    let n = p.u8()?;
    p.take(n.into())?;
    let n = p.u16()?;
    p.take(n.into())?;
    let n = p.u8()?;
    p.take(n.into())?;
    let n = p.u16()?;
    let mut ext = Reader(p.take(n.into())?);
    while let (Some(typ), Some(len)) = (ext.u16(), ext.u16()) {
        let data = ext.take(len.into())?;
        if typ == 1 {
            return match data {
                [code @ 1..=4] => Some(1usize << (8 + code)),
                _ => None,
            };
        }
    }
    None
}

/// Big-endian fields off the front of a byte string (handshake messages).
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keylog_lines_parse_and_junk_is_ignored() {
        let cr = "11".repeat(32);
        let mut log = KeyLog::default();
        log.push_line(&format!("CLIENT_TRAFFIC_SECRET_0 {cr} {}", "aa".repeat(32)));
        log.push_line(&format!("SERVER_TRAFFIC_SECRET_0 {cr} {}", "bb".repeat(48)));
        log.push_line(&format!(
            "SERVER_HANDSHAKE_TRAFFIC_SECRET {cr} {}",
            "cc".repeat(32)
        ));
        log.push_line("CLIENT_RANDOM zz 00");
        log.push_line(&format!("CLIENT_RANDOM {cr} {}", "dd".repeat(49)));
        log.push_line("");
        let s = log
            .secrets(
                Side::Server,
                CipherSuite::Tls13Aes256GcmSha384,
                &[0x11; 32],
                &[0; 32],
            )
            .unwrap();
        match s.material {
            SecretMaterial::Tls13 { client, server } => {
                assert_eq!(client.as_bytes(), &[0xaa; 32]);
                assert_eq!(server.as_bytes(), &[0xbb; 48]);
            }
            SecretMaterial::Tls12 { .. } => panic!("wrong material"),
        }
        assert!(matches!(
            log.secrets(
                Side::Server,
                CipherSuite::EcdheEcdsaAes128GcmSha256,
                &[0x11; 32],
                &[0; 32]
            ),
            Err(HandshakeError::MissingSecret(_))
        ));
        assert!(matches!(
            log.secrets(
                Side::Server,
                CipherSuite::Tls13Aes256GcmSha384,
                &[0x12; 32],
                &[0; 32]
            ),
            Err(HandshakeError::KeyMismatch(_))
        ));
    }

    fn client_hello(exts: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(exts);
        let mut msg = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        msg.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1, (msg.len() >> 8) as u8, msg.len() as u8];
        rec.extend_from_slice(&msg);
        rec
    }

    #[test]
    fn max_fragment_length_is_read_from_the_client_hello() {
        let with = client_hello(&[0, 0x0a, 0, 2, 0, 0x17, 0, 1, 0, 1, 2]);
        assert_eq!(
            client_hello_max_fragment_len(&with, ProtocolVersion::Tls13),
            Some(1024)
        );
        let bad = client_hello(&[0, 1, 0, 1, 9]);
        assert_eq!(
            client_hello_max_fragment_len(&bad, ProtocolVersion::Tls13),
            None
        );
        let without = client_hello(&[0, 0x0a, 0, 2, 0, 0x17]);
        assert_eq!(
            client_hello_max_fragment_len(&without, ProtocolVersion::Tls12),
            None
        );
        // Truncated garbage never panics.
        for cut in 0..with.len() {
            let _ = client_hello_max_fragment_len(&with[..cut], ProtocolVersion::Tls13);
        }
    }
}

//! The record layer of one established connection: application data both
//! ways, and the control records (alerts, close_notify, KeyUpdate,
//! NewSessionTicket, TLS 1.2 renegotiation refusals) handled in place.
//!
//! Sans-IO: bytes in through [`RecordLayer::open_next`], bytes out through
//! [`RecordLayer::write_app_data`] and [`RecordLayer::poll_output`]. Poll
//! order per loop turn: feed everything received to `open_next` until it
//! says `NeedMore` (or fails), then `poll_output`, then write application
//! data. `write_app_data` drains pending control records first, so a
//! KeyUpdate answer always precedes data sealed under the new key.

use crate::error::{AlertDescription, ErrorKind, TlsError};
use crate::handshake::Reader;
use crate::keys::{
    Secret, SecretMaterial, Secrets, TrafficKeys, tls13_next_secret, tls13_traffic_keys,
};
use crate::ktls::{CryptoInfo, Direction};
use crate::record::{ContentType, MAX_PLAINTEXT, Opener, Sealer, next_record};
use crate::suite::{Aead, CipherSuite, ProtocolVersion, Side};

/// Handshake message types seen after the handshake.
const HS_HELLO_REQUEST: u8 = 0;
const HS_CLIENT_HELLO: u8 = 1;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;

/// Alert levels.
const LEVEL_WARNING: u8 = 1;
const LEVEL_FATAL: u8 = 2;

/// Every limit of the record layer, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest plaintext per record we send (1..=16384). Lowered when the
    /// peer negotiated max_fragment_length.
    pub max_fragment_len: usize,
    /// TLS 1.3: once this many records went under one key, send a KeyUpdate
    /// (itself the last record under that key) before the next data record.
    /// `None`: 2^24 for AES-GCM (under the 2^24.5 of RFC
    /// 8446 §5.5), unlimited for ChaCha20-Poly1305. TLS 1.2 cannot rekey,
    /// so there the connection closes at the limit.
    pub key_update_after_records: Option<u64>,
    /// Largest post-handshake handshake message we buffer (a NewSessionTicket
    /// from OpenSSL is a few hundred bytes).
    pub max_handshake_message_len: usize,
    /// Consecutive empty application-data records before we call it abuse.
    pub max_empty_records: u32,
}

/// Records under one AES-GCM key before we rekey (2^24 < 2^24.5).
pub const DEFAULT_AES_GCM_KEY_UPDATE_AFTER: u64 = 1 << 24;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_fragment_len: MAX_PLAINTEXT,
            key_update_after_records: None,
            max_handshake_message_len: 65_536,
            max_empty_records: 32,
        }
    }
}

/// A record layer's state as it moves (see [`RecordLayer::snapshot`]).
#[derive(Debug, Clone)]
pub struct RecordState {
    /// Suite, side, the current traffic secrets and both sequence numbers.
    pub secrets: Secrets,
    /// Sealed control records (KeyUpdate, alerts) not yet handed out.
    pub pending: Vec<u8>,
    /// A post-handshake handshake message received in part.
    pub partial_handshake: Vec<u8>,
    /// A KeyUpdate answer is already queued in `pending`.
    pub key_update_answer_queued: bool,
    /// The peer sent close_notify.
    pub peer_closed: bool,
    /// We sent (or queued) close_notify.
    pub closed_for_writing: bool,
    /// The connection's counters so far.
    pub stats: Stats,
}

/// Counters of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records opened successfully.
    pub records_in: u64,
    /// Records sealed (data and control).
    pub records_out: u64,
    /// Application bytes delivered.
    pub app_bytes_in: u64,
    /// Application bytes sealed.
    pub app_bytes_out: u64,
    /// KeyUpdates received (TLS 1.3).
    pub key_updates_received: u64,
    /// KeyUpdates sent (answers, requests and limit-driven).
    pub key_updates_sent: u64,
    /// NewSessionTickets received and dropped (client side).
    pub tickets_ignored: u64,
    /// Warning alerts received and ignored.
    pub warnings_received: u64,
    /// Errors, indexed by [`ErrorKind::index`].
    pub errors: [u64; ErrorKind::COUNT],
}

impl Stats {
    /// Errors of one kind.
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()]
    }
}

/// What one call to [`RecordLayer::open_next`] found.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// No whole record at the front of the buffer yet; read more.
    NeedMore,
    /// Authenticated application data, decrypted in place in the caller's
    /// buffer (may be empty).
    AppData(&'a mut [u8]),
    /// A control record was handled; [`RecordLayer::poll_output`] may have
    /// something to send.
    Control,
    /// The peer sent close_notify. Later calls consume and ignore whatever
    /// follows (reporting `CloseNotify` again, or `NeedMore` when given
    /// nothing).
    CloseNotify,
}

/// Result of [`RecordLayer::open_next`].
#[derive(Debug)]
pub struct Opened<'a> {
    /// Bytes of the buffer used up (0 with `NeedMore`).
    pub consumed: usize,
    /// What they were.
    pub incoming: Incoming<'a>,
}

/// An established connection's record layer.
#[derive(Debug)]
pub struct RecordLayer {
    side: Side,
    suite: CipherSuite,
    /// TLS 1.2's master secret and randoms (its keys never change), kept
    /// for [`RecordLayer::snapshot`]; TLS 1.3 carries `tx_secret`/`rx_secret`.
    tls12_material: Option<SecretMaterial>,
    tx: Sealer,
    rx: Opener,
    tx_secret: Option<Secret>,
    rx_secret: Option<Secret>,
    limits: Limits,
    /// Partial post-handshake handshake message.
    hs_buf: Vec<u8>,
    /// Sealed control records not yet handed out.
    pending: Vec<u8>,
    key_update_answer_queued: bool,
    empty_run: u32,
    rx_closed: bool,
    tx_closed: bool,
    failed: bool,
    stats: Stats,
}

impl RecordLayer {
    /// A record layer continuing from `secrets` (sequence numbers included).
    pub fn new(secrets: &Secrets, limits: Limits) -> Result<Self, TlsError> {
        let keys = secrets.derive()?;
        let mut limits = limits;
        limits.max_fragment_len = limits.max_fragment_len.clamp(1, MAX_PLAINTEXT);
        Ok(RecordLayer {
            side: secrets.side,
            suite: secrets.suite,
            tls12_material: match &secrets.material {
                m @ SecretMaterial::Tls12 { .. } => Some(m.clone()),
                SecretMaterial::Tls13 { .. } => None,
            },
            tx: Sealer::new(secrets.suite, &keys.tx, secrets.tx_seq)?,
            rx: Opener::new(secrets.suite, &keys.rx, secrets.rx_seq)?,
            tx_secret: keys.tx_secret,
            rx_secret: keys.rx_secret,
            limits,
            hs_buf: Vec::new(),
            pending: Vec::new(),
            key_update_answer_queued: false,
            empty_run: 0,
            rx_closed: false,
            tx_closed: false,
            failed: false,
            stats: Stats::default(),
        })
    }

    /// Everything needed to continue this connection's records elsewhere
    /// (another data path, another record layer): the current secrets
    /// (after every KeyUpdate so far) with both sequence numbers, the
    /// control records sealed and not yet handed out, a partial
    /// post-handshake message, and the close state. Fails with
    /// [`TlsError::Closed`] once the layer has failed.
    ///
    /// The snapshot holds traffic secrets: keep it no longer than the move
    /// (its [`Secret`]s are wiped when dropped).
    pub fn snapshot(&self) -> Result<RecordState, TlsError> {
        if self.failed {
            return Err(TlsError::Closed("record layer failed"));
        }
        let material = match (&self.tls12_material, &self.tx_secret, &self.rx_secret) {
            (Some(m), _, _) => m.clone(),
            (None, Some(tx), Some(rx)) => {
                let (client, server) = match self.side {
                    Side::Client => (tx.clone(), rx.clone()),
                    Side::Server => (rx.clone(), tx.clone()),
                };
                SecretMaterial::Tls13 { client, server }
            }
            _ => unreachable!("a TLS 1.3 record layer keeps both traffic secrets"),
        };
        Ok(RecordState {
            secrets: Secrets {
                side: self.side,
                suite: self.suite,
                material,
                tx_seq: self.tx.seq(),
                rx_seq: self.rx.seq(),
            },
            pending: self.pending.clone(),
            partial_handshake: self.hs_buf.clone(),
            key_update_answer_queued: self.key_update_answer_queued,
            peer_closed: self.rx_closed,
            closed_for_writing: self.tx_closed,
            stats: self.stats.clone(),
        })
    }

    /// A record layer continuing exactly where `state` was taken
    /// ([`Self::snapshot`]), under `limits`.
    pub fn resume(state: &RecordState, limits: Limits) -> Result<Self, TlsError> {
        let mut rl = Self::new(&state.secrets, limits)?;
        rl.pending = state.pending.clone();
        rl.hs_buf = state.partial_handshake.clone();
        rl.key_update_answer_queued = state.key_update_answer_queued;
        rl.rx_closed = state.peer_closed;
        rl.tx_closed = state.closed_for_writing;
        rl.stats = state.stats.clone();
        Ok(rl)
    }

    /// Our side.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The suite.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The version.
    pub fn version(&self) -> ProtocolVersion {
        self.suite.version()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sequence number of the next record we send.
    pub fn tx_seq(&self) -> u64 {
        self.tx.seq()
    }

    /// Sequence number of the next record we expect.
    pub fn rx_seq(&self) -> u64 {
        self.rx.seq()
    }

    /// The peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.rx_closed
    }

    /// We sent (or queued) close_notify or a fatal alert.
    pub fn closed_for_writing(&self) -> bool {
        self.tx_closed
    }

    /// A fatal error happened; only `poll_output` is useful now.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// True when control records wait for [`Self::poll_output`].
    pub fn has_pending_output(&self) -> bool {
        !self.pending.is_empty()
    }

    /// kTLS `crypto_info` for one direction, from the current keys and
    /// sequence number (the layout `setsockopt(SOL_TLS, TLS_TX/TLS_RX)`
    /// takes). Nothing in the proxy installs it: the fuzz target's
    /// reference AEAD and the tests read the keys from it.
    pub fn ktls_crypto_info(&self, direction: Direction) -> CryptoInfo {
        match direction {
            Direction::Tx => CryptoInfo::new(self.suite, self.tx.keys(), self.tx.seq()),
            Direction::Rx => CryptoInfo::new(self.suite, self.rx.keys(), self.rx.seq()),
        }
    }

    /// Open the record at the front of `buf`, in place.
    ///
    /// Returns how many bytes it used and what it was. Call again with the
    /// rest of the buffer until `NeedMore`. Every error is fatal: the alert
    /// is queued (see [`Self::poll_output`]), the error is counted by kind,
    /// and later calls fail with [`TlsError::Closed`].
    pub fn open_next<'a>(&mut self, buf: &'a mut [u8]) -> Result<Opened<'a>, TlsError> {
        if self.failed {
            return Err(TlsError::Closed("the connection already failed"));
        }
        if self.rx_closed {
            // RFC 8446 §6.1: data after a closure alert is ignored. An empty
            // buffer says NeedMore, so a read loop never spins here.
            let incoming = if buf.is_empty() {
                Incoming::NeedMore
            } else {
                Incoming::CloseNotify
            };
            return Ok(Opened {
                consumed: buf.len(),
                incoming,
            });
        }
        let len = match next_record(buf, self.version()) {
            Ok(Some(len)) => len,
            Ok(None) => {
                return Ok(Opened {
                    consumed: 0,
                    incoming: Incoming::NeedMore,
                });
            }
            Err(e) => return Err(self.fail(e)),
        };
        match self.process(&mut buf[..len]) {
            Ok(incoming) => Ok(Opened {
                consumed: len,
                incoming,
            }),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn fail(&mut self, e: TlsError) -> TlsError {
        self.stats.errors[e.kind().index()] += 1;
        self.failed = true;
        self.hs_buf.clear();
        if let Some(alert) = e.alert()
            && !self.tx_closed
        {
            // Best effort: if even the alert cannot be sealed, close bare.
            let _ = self.queue_alert(LEVEL_FATAL, alert);
        }
        self.tx_closed = true;
        e
    }

    fn process<'a>(&mut self, record: &'a mut [u8]) -> Result<Incoming<'a>, TlsError> {
        let opened = self.rx.open_in_place(record)?;
        self.stats.records_in += 1;
        let tls13 = self.version() == ProtocolVersion::Tls13;
        match ContentType::from_code(opened.content_type) {
            Some(ContentType::ApplicationData) => {
                if tls13 && !self.hs_buf.is_empty() {
                    return Err(TlsError::UnexpectedMessage(
                        "application data inside a fragmented handshake message",
                    ));
                }
                if opened.plaintext.is_empty() {
                    self.empty_run += 1;
                    if self.empty_run > self.limits.max_empty_records {
                        return Err(TlsError::UnexpectedMessage("run of empty records"));
                    }
                } else {
                    self.empty_run = 0;
                }
                self.stats.app_bytes_in += opened.plaintext.len() as u64;
                Ok(Incoming::AppData(opened.plaintext))
            }
            Some(ContentType::Alert) => {
                if tls13 && !self.hs_buf.is_empty() {
                    return Err(TlsError::UnexpectedMessage(
                        "alert inside a fragmented handshake message",
                    ));
                }
                self.handle_alert(opened.plaintext)
            }
            Some(ContentType::Handshake) => {
                if opened.plaintext.is_empty() {
                    return Err(TlsError::UnexpectedMessage("empty handshake record"));
                }
                self.handle_handshake(opened.plaintext)?;
                Ok(Incoming::Control)
            }
            _ => Err(TlsError::UnexpectedMessage("record content type")),
        }
    }

    fn handle_alert<'a>(&mut self, body: &[u8]) -> Result<Incoming<'a>, TlsError> {
        let &[level, code] = body else {
            return Err(TlsError::Malformed {
                what: "alert (not 2 bytes)",
                alert: AlertDescription::DecodeError,
            });
        };
        if level != LEVEL_WARNING && level != LEVEL_FATAL {
            return Err(TlsError::Malformed {
                what: "alert level",
                alert: AlertDescription::IllegalParameter,
            });
        }
        match AlertDescription::from_code(code) {
            AlertDescription::CloseNotify => {
                self.rx_closed = true;
                self.hs_buf.clear();
                Ok(Incoming::CloseNotify)
            }
            // user_canceled is followed by close_notify (RFC 8446 §6.1);
            // TLS 1.2 warnings (no_renegotiation, ...) do not end the connection.
            AlertDescription::UserCanceled => {
                self.stats.warnings_received += 1;
                Ok(Incoming::Control)
            }
            _ if level == LEVEL_WARNING && self.version() == ProtocolVersion::Tls12 => {
                self.stats.warnings_received += 1;
                Ok(Incoming::Control)
            }
            other => Err(TlsError::PeerAlert(other)),
        }
    }

    fn handle_handshake(&mut self, data: &[u8]) -> Result<(), TlsError> {
        let mut buf = std::mem::take(&mut self.hs_buf);
        buf.extend_from_slice(data);
        let mut pos = 0;
        let result = loop {
            let mut rest = Reader(&buf[pos..]);
            let (Some(typ), Some(len)) = (rest.u8(), rest.u24()) else {
                break Ok(());
            };
            if len > self.limits.max_handshake_message_len {
                break Err(TlsError::Malformed {
                    what: "post-handshake message over the limit",
                    alert: AlertDescription::IllegalParameter,
                });
            }
            let Some(body) = rest.take(len) else {
                break Ok(());
            };
            let at_record_end = rest.0.is_empty();
            if let Err(e) = self.handle_message(typ, body, at_record_end) {
                break Err(e);
            }
            pos += 4 + len;
        };
        buf.drain(..pos);
        self.hs_buf = buf;
        result
    }

    fn handle_message(
        &mut self,
        typ: u8,
        body: &[u8],
        at_record_end: bool,
    ) -> Result<(), TlsError> {
        match (self.version(), typ) {
            (ProtocolVersion::Tls13, HS_KEY_UPDATE) => {
                let &[request] = body else {
                    return Err(TlsError::Malformed {
                        what: "KeyUpdate length",
                        alert: AlertDescription::DecodeError,
                    });
                };
                // RFC 8446 §5.1: messages must not span a key change.
                if !at_record_end {
                    return Err(TlsError::UnexpectedMessage(
                        "data after KeyUpdate in the same record",
                    ));
                }
                let requested = match request {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(TlsError::Malformed {
                            what: "KeyUpdate request_update",
                            alert: AlertDescription::IllegalParameter,
                        });
                    }
                };
                self.update_rx_keys()?;
                self.stats.key_updates_received += 1;
                // One answer however many requests arrive while we are
                // silent (RFC 8446 §4.6.3).
                if requested && !self.key_update_answer_queued && !self.tx_closed {
                    self.queue_key_update(false)?;
                    self.key_update_answer_queued = true;
                }
                Ok(())
            }
            (ProtocolVersion::Tls13, HS_NEW_SESSION_TICKET) if self.side == Side::Client => {
                // We do not resume sessions: drop the ticket, keep the sequence.
                self.stats.tickets_ignored += 1;
                Ok(())
            }
            (ProtocolVersion::Tls12, HS_HELLO_REQUEST) if self.side == Side::Client => {
                self.queue_alert(LEVEL_WARNING, AlertDescription::NoRenegotiation)
            }
            (ProtocolVersion::Tls12, HS_CLIENT_HELLO) if self.side == Side::Server => {
                self.queue_alert(LEVEL_WARNING, AlertDescription::NoRenegotiation)
            }
            _ => Err(TlsError::UnexpectedMessage(
                "post-handshake handshake message",
            )),
        }
    }

    fn update_rx_keys(&mut self) -> Result<(), TlsError> {
        let (next, keys) = next_generation(self.suite, self.rx_secret.as_ref())?;
        self.rx.rekey(&keys)?;
        self.rx_secret = Some(next);
        Ok(())
    }

    fn update_tx_keys(&mut self) -> Result<(), TlsError> {
        let (next, keys) = next_generation(self.suite, self.tx_secret.as_ref())?;
        self.tx.rekey(&keys)?;
        self.tx_secret = Some(next);
        Ok(())
    }

    fn queue_record(&mut self, ct: ContentType, payload: &[u8]) -> Result<(), TlsError> {
        let start = self.pending.len();
        let parts = [payload];
        let mut src = Gather::new(&parts);
        if let Err(e) = seal_append(&mut self.tx, ct, &mut src, payload.len(), &mut self.pending) {
            self.pending.truncate(start);
            return Err(e);
        }
        self.stats.records_out += 1;
        Ok(())
    }

    fn queue_alert(&mut self, level: u8, alert: AlertDescription) -> Result<(), TlsError> {
        self.queue_record(ContentType::Alert, &[level, alert.code()])
    }

    fn queue_key_update(&mut self, request_peer: bool) -> Result<(), TlsError> {
        self.queue_record(
            ContentType::Handshake,
            &[HS_KEY_UPDATE, 0, 0, 1, u8::from(request_peer)],
        )?;
        self.update_tx_keys()?;
        self.stats.key_updates_sent += 1;
        Ok(())
    }

    /// Send a KeyUpdate now (TLS 1.3), optionally asking the peer to update
    /// too. The record waits in [`Self::poll_output`].
    pub fn request_key_update(&mut self, request_peer: bool) -> Result<(), TlsError> {
        self.check_writable()?;
        if self.version() != ProtocolVersion::Tls13 {
            return Err(TlsError::UnexpectedMessage("KeyUpdate outside TLS 1.3"));
        }
        self.queue_key_update(request_peer)
    }

    /// Queue close_notify; nothing can be written after it. Idempotent.
    pub fn send_close_notify(&mut self) -> Result<(), TlsError> {
        if self.tx_closed {
            return Ok(());
        }
        self.tx_closed = true;
        self.queue_alert(LEVEL_WARNING, AlertDescription::CloseNotify)
    }

    /// Move sealed control records (alerts, KeyUpdates) to `out`. Returns
    /// the number of bytes added.
    #[must_use]
    pub fn poll_output(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.pending.len();
        out.extend_from_slice(&self.pending);
        self.pending.clear();
        self.key_update_answer_queued = false;
        n
    }

    fn check_writable(&self) -> Result<(), TlsError> {
        if self.failed {
            Err(TlsError::Closed("the connection failed"))
        } else if self.tx_closed {
            Err(TlsError::Closed("close_notify already sent"))
        } else {
            Ok(())
        }
    }

    fn key_limit(&self) -> u64 {
        self.limits
            .key_update_after_records
            .unwrap_or(match self.suite.aead() {
                Aead::Aes128Gcm | Aead::Aes256Gcm => DEFAULT_AES_GCM_KEY_UPDATE_AFTER,
                // No practical limit before the sequence number would wrap.
                Aead::Chacha20Poly1305 => u64::MAX - 1,
            })
    }

    /// Before sealing a data record: rekey (TLS 1.3) or close (TLS 1.2) at
    /// the key's record limit, then move control records to `out`.
    fn before_data_record(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        if self.tx.seq() >= self.key_limit() {
            match self.version() {
                ProtocolVersion::Tls13 => self.queue_key_update(false)?,
                ProtocolVersion::Tls12 => {
                    let seq = self.tx.seq();
                    self.send_close_notify()?;
                    let _ = self.poll_output(out);
                    let e = TlsError::KeyExhausted(seq);
                    self.stats.errors[e.kind().index()] += 1;
                    return Err(e);
                }
            }
        }
        let _ = self.poll_output(out);
        Ok(())
    }

    /// Seal `data` as application-data records of up to
    /// `limits.max_fragment_len` bytes, appended to `out` after any pending
    /// control records. Empty `data` seals no record (pending control
    /// records still move to `out`).
    pub fn write_app_data(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.write_app_data_vectored(&[data], out)
    }

    /// Like [`Self::write_app_data`] for several buffers, coalesced into
    /// full-size records: this is how small writes of one loop turn share
    /// records.
    pub fn write_app_data_vectored(
        &mut self,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        self.check_writable()?;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let frag = self.limits.max_fragment_len;
        out.reserve(total + total.div_ceil(frag) * self.tx.overhead() + self.pending.len());
        let mut cursor = Gather::new(parts);
        let mut remaining = total;
        let _ = self.poll_output(out);
        while remaining > 0 {
            self.before_data_record(out)?;
            let n = remaining.min(frag);
            let start = out.len();
            let sealed = seal_append(
                &mut self.tx,
                ContentType::ApplicationData,
                &mut cursor,
                n,
                out,
            );
            if let Err(e) = sealed {
                out.truncate(start);
                return Err(self.fail(e));
            }
            self.stats.records_out += 1;
            self.stats.app_bytes_out += n as u64;
            remaining -= n;
        }
        Ok(())
    }

    /// Seal one application-data record in a buffer the caller owns (a TCP
    /// send buffer): `record[self.tx_header_len()..][..payload_len]` holds
    /// the plaintext, and `record` has `payload_len + self.tx_overhead()`
    /// bytes. Control records that must go first (a KeyUpdate answer or a
    /// limit-driven KeyUpdate) are appended to `control_out`; send those
    /// before the record. Returns the record length.
    pub fn seal_app_data_in_place(
        &mut self,
        record: &mut [u8],
        payload_len: usize,
        control_out: &mut Vec<u8>,
    ) -> Result<usize, TlsError> {
        self.check_writable()?;
        if payload_len > self.limits.max_fragment_len {
            return Err(TlsError::RecordOverflow {
                len: payload_len,
                limit: self.limits.max_fragment_len,
                what: "plaintext to seal",
            });
        }
        self.before_data_record(control_out)?;
        match self
            .tx
            .seal_in_place(ContentType::ApplicationData, record, payload_len)
        {
            Ok(n) => {
                self.stats.records_out += 1;
                self.stats.app_bytes_out += payload_len as u64;
                Ok(n)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Bytes in front of the payload in records we seal.
    pub fn tx_header_len(&self) -> usize {
        self.tx.header_len()
    }

    /// Record length minus payload length for records we seal.
    pub fn tx_overhead(&self) -> usize {
        self.tx.overhead()
    }
}

struct Gather<'p> {
    parts: &'p [&'p [u8]],
    idx: usize,
    off: usize,
}

impl<'p> Gather<'p> {
    fn new(parts: &'p [&'p [u8]]) -> Self {
        Gather {
            parts,
            idx: 0,
            off: 0,
        }
    }

    /// Append the next `n` bytes to `out`.
    fn copy_to(&mut self, mut n: usize, out: &mut Vec<u8>) {
        while n > 0 {
            let part = self.parts[self.idx];
            let take = (part.len() - self.off).min(n);
            out.extend_from_slice(&part[self.off..self.off + take]);
            self.off += take;
            n -= take;
            if self.off == part.len() {
                self.idx += 1;
                self.off = 0;
            }
        }
    }
}

/// Append one sealed record of the next `n` bytes of `src` to `out`: header
/// room, the plaintext copied once, tag room; then seal in place.
fn seal_append(
    tx: &mut Sealer,
    ct: ContentType,
    src: &mut Gather<'_>,
    n: usize,
    out: &mut Vec<u8>,
) -> Result<usize, TlsError> {
    let start = out.len();
    out.resize(start + tx.header_len(), 0);
    src.copy_to(n, out);
    out.resize(start + n + tx.overhead(), 0);
    tx.seal_in_place(ct, &mut out[start..], n)
}

/// TLS 1.3 KeyUpdate: the next traffic secret after `secret` and its keys.
fn next_generation(
    suite: CipherSuite,
    secret: Option<&Secret>,
) -> Result<(Secret, TrafficKeys), TlsError> {
    let Some(secret) = secret else {
        return Err(TlsError::UnexpectedMessage("KeyUpdate outside TLS 1.3"));
    };
    let next = tls13_next_secret(suite, secret)?;
    let keys = tls13_traffic_keys(suite, next.as_bytes())?;
    Ok((next, keys))
}

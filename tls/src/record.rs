//! Record framing and AEAD protection, one direction at a time.
//!
//! [`Sealer`] and [`Opener`] each own one OpenSSL `EVP_CIPHER_CTX`, keyed
//! once; per record only the nonce is set, then AAD, the payload in place,
//! and the tag. Nothing is allocated per record.
//!
//! Layouts (RFC 8446 §5.2, RFC 5246 §6.2.3.3, RFC 5288, RFC 7905):
//!
//! ```text
//! TLS 1.3:          hdr(5) | ciphertext(content ‖ type ‖ zeros) | tag(16)   AAD = hdr
//! TLS 1.2 AES-GCM:  hdr(5) | explicit nonce(8) | ciphertext | tag(16)        AAD = seq ‖ type ‖ ver ‖ len
//! TLS 1.2 ChaCha:   hdr(5) | ciphertext | tag(16)                            AAD = seq ‖ type ‖ ver ‖ len
//! ```

use std::fmt;

use openssl::cipher::CipherRef;
use openssl::cipher_ctx::CipherCtx;

use crate::aead;
use crate::error::TlsError;
use crate::keys::TrafficKeys;
use crate::suite::{Aead, CipherSuite, ProtocolVersion};

/// Bytes in a record header.
pub const HEADER_LEN: usize = 5;
/// Largest plaintext fragment (2^14).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest TLS 1.3 ciphertext (2^14 + 256).
pub const MAX_CIPHERTEXT_TLS13: usize = MAX_PLAINTEXT + 256;
/// Largest TLS 1.2 ciphertext (2^14 + 2048).
pub const MAX_CIPHERTEXT_TLS12: usize = MAX_PLAINTEXT + 2048;

const TAG_LEN: usize = Aead::TAG_LEN;
const EXPLICIT_NONCE_LEN: usize = 8;

/// Record content types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// 20.
    ChangeCipherSpec,
    /// 21.
    Alert,
    /// 22.
    Handshake,
    /// 23.
    ApplicationData,
}

impl ContentType {
    /// The wire value.
    pub fn code(self) -> u8 {
        match self {
            Self::ChangeCipherSpec => 20,
            Self::Alert => 21,
            Self::Handshake => 22,
            Self::ApplicationData => 23,
        }
    }

    /// From the wire value; `None` for anything else (24 heartbeat included).
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            20 => Self::ChangeCipherSpec,
            21 => Self::Alert,
            22 => Self::Handshake,
            23 => Self::ApplicationData,
            _ => return None,
        })
    }
}

/// A parsed record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Content type byte as sent (outer type in TLS 1.3).
    pub content_type: u8,
    /// legacy_record_version.
    pub version: u16,
    /// Length of what follows the header.
    pub len: usize,
}

impl RecordHeader {
    /// Parse the first 5 bytes; `None` if fewer are present.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let h = buf.get(..HEADER_LEN)?;
        Some(RecordHeader {
            content_type: h[0],
            version: u16::from_be_bytes([h[1], h[2]]),
            len: usize::from(u16::from_be_bytes([h[3], h[4]])),
        })
    }

    /// Header plus body.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.len
    }
}

/// Split the next protected record off the front of `buf`.
///
/// Returns `Ok(None)` until the whole record is present, and rejects a
/// header that cannot start a valid record under `version` before any of
/// its body is buffered: an unknown type, a major version other than 3, or
/// a length over the ciphertext limit. This is the deframer the fuzz target
/// drives.
pub fn next_record(buf: &[u8], version: ProtocolVersion) -> Result<Option<usize>, TlsError> {
    let Some(h) = RecordHeader::parse(buf) else {
        return Ok(None);
    };
    if ContentType::from_code(h.content_type).is_none() {
        return Err(TlsError::UnexpectedMessage("record content type"));
    }
    if h.version >> 8 != 3 {
        return Err(TlsError::ProtocolVersion(h.version));
    }
    let limit = match version {
        ProtocolVersion::Tls13 => MAX_CIPHERTEXT_TLS13,
        ProtocolVersion::Tls12 => MAX_CIPHERTEXT_TLS12,
    };
    if h.len > limit {
        return Err(TlsError::RecordOverflow {
            len: h.len,
            limit,
            what: "ciphertext",
        });
    }
    if buf.len() < h.total_len() {
        return Ok(None);
    }
    Ok(Some(h.total_len()))
}

fn nonce_for(suite: CipherSuite, iv: &[u8], seq: u64, explicit: Option<[u8; 8]>) -> [u8; 12] {
    let mut n = [0u8; Aead::NONCE_LEN];
    if suite.tls12_explicit_nonce() {
        n[..4].copy_from_slice(iv);
        n[4..].copy_from_slice(&explicit.unwrap_or(seq.to_be_bytes()));
    } else {
        n.copy_from_slice(iv);
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
    }
    n
}

fn tls12_aad(seq: u64, content_type: u8, plaintext_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = content_type;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(plaintext_len as u16).to_be_bytes());
    aad
}

/// What [`Sealer`] and [`Opener`] share: the suite, one cipher context keyed
/// once per key, the keys, and the next sequence number.
struct Keyed {
    suite: CipherSuite,
    ctx: CipherCtx,
    keys: TrafficKeys,
    seq: u64,
    encrypt: bool,
}

impl Keyed {
    fn new(
        suite: CipherSuite,
        keys: &TrafficKeys,
        seq: u64,
        encrypt: bool,
    ) -> Result<Self, TlsError> {
        let mut k = Keyed {
            suite,
            ctx: CipherCtx::new()?,
            keys: keys.clone(),
            seq,
            encrypt,
        };
        k.init(Some(suite.aead().cipher()), keys)?;
        Ok(k)
    }

    fn init(&mut self, cipher: Option<&CipherRef>, keys: &TrafficKeys) -> Result<(), TlsError> {
        if !keys.fits(self.suite) {
            return Err(TlsError::BadLength(
                "key or iv length does not fit the suite",
            ));
        }
        if self.encrypt {
            self.ctx.encrypt_init(cipher, Some(keys.key()), None)?;
        } else {
            self.ctx.decrypt_init(cipher, Some(keys.key()), None)?;
        }
        Ok(())
    }

    fn rekey(&mut self, keys: &TrafficKeys) -> Result<(), TlsError> {
        self.init(None, keys)?;
        self.keys = keys.clone();
        self.seq = 0;
        Ok(())
    }

    /// The sequence number for the next record, unless the space is used up.
    fn next_seq(&self) -> Result<u64, TlsError> {
        if self.seq == u64::MAX {
            return Err(TlsError::KeyExhausted(self.seq));
        }
        Ok(self.seq)
    }

    fn fmt(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("suite", &self.suite)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Seals records for one direction.
pub struct Sealer(Keyed);

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt("Sealer", f)
    }
}

impl Sealer {
    /// A sealer for `suite` whose next record has sequence number `seq`.
    pub fn new(suite: CipherSuite, keys: &TrafficKeys, seq: u64) -> Result<Self, TlsError> {
        Keyed::new(suite, keys, seq, true).map(Sealer)
    }

    /// Sequence number of the next record.
    pub fn seq(&self) -> u64 {
        self.0.seq
    }

    /// The current keys (for kTLS hand-over).
    pub fn keys(&self) -> &TrafficKeys {
        &self.0.keys
    }

    /// Bytes before the payload: the header, plus the explicit nonce in
    /// TLS 1.2 AES-GCM.
    pub fn header_len(&self) -> usize {
        if self.0.suite.tls12_explicit_nonce() {
            HEADER_LEN + EXPLICIT_NONCE_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Record size minus payload size.
    pub fn overhead(&self) -> usize {
        let inner_type = usize::from(self.0.suite.version() == ProtocolVersion::Tls13);
        self.header_len() + inner_type + TAG_LEN
    }

    /// Switch to new keys (TLS 1.3 KeyUpdate); the sequence restarts at 0.
    pub fn rekey(&mut self, keys: &TrafficKeys) -> Result<(), TlsError> {
        self.0.rekey(keys)
    }

    /// Seal one record in place.
    ///
    /// `record[self.header_len()..][..payload_len]` holds the payload;
    /// `record` must be at least `payload_len + self.overhead()` long. The
    /// header (and explicit nonce) is written in front, the tag behind.
    /// Returns the record length.
    pub fn seal_in_place(
        &mut self,
        content_type: ContentType,
        record: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, TlsError> {
        self.seal_inner(content_type, record, payload_len, None)
    }

    /// Like [`Self::seal_in_place`] for TLS 1.2 AES-GCM with a chosen explicit
    /// nonce (OpenSSL starts its explicit nonces at a random value; this lets
    /// a capture be re-sealed byte for byte). Our own records use the
    /// sequence number, as RFC 5288 allows.
    pub fn seal_in_place_with_explicit_nonce(
        &mut self,
        content_type: ContentType,
        record: &mut [u8],
        payload_len: usize,
        explicit_nonce: [u8; 8],
    ) -> Result<usize, TlsError> {
        if !self.0.suite.tls12_explicit_nonce() {
            return Err(TlsError::UnexpectedMessage(
                "explicit nonce for a suite without one",
            ));
        }
        self.seal_inner(content_type, record, payload_len, Some(explicit_nonce))
    }

    fn seal_inner(
        &mut self,
        content_type: ContentType,
        record: &mut [u8],
        payload_len: usize,
        explicit: Option<[u8; 8]>,
    ) -> Result<usize, TlsError> {
        if payload_len > MAX_PLAINTEXT {
            return Err(TlsError::RecordOverflow {
                len: payload_len,
                limit: MAX_PLAINTEXT,
                what: "plaintext to seal",
            });
        }
        let total = payload_len + self.overhead();
        if record.len() < total {
            return Err(TlsError::BadLength("seal buffer shorter than the record"));
        }
        let seq = self.0.next_seq()?;
        let hl = self.header_len();
        let tls13 = self.0.suite.version() == ProtocolVersion::Tls13;
        let ct = content_type.code();
        let nonce = nonce_for(self.0.suite, self.0.keys.iv(), seq, explicit);
        let record = &mut record[..total];
        // TLS 1.3 hides the type inside (the outer one is always 23) and
        // authenticates the header; TLS 1.2 authenticates seq ‖ type ‖ ver ‖ len.
        let outer_type = if tls13 {
            ContentType::ApplicationData.code()
        } else {
            ct
        };
        let [len_hi, len_lo] = ((total - HEADER_LEN) as u16).to_be_bytes();
        let header = [outer_type, 3, 3, len_hi, len_lo];
        record[..HEADER_LEN].copy_from_slice(&header);
        if hl > HEADER_LEN {
            record[HEADER_LEN..hl].copy_from_slice(&nonce[4..]);
        }
        let aad12;
        let (aad, inner_len): (&[u8], usize) = if tls13 {
            record[hl + payload_len] = ct;
            (&header, payload_len + 1)
        } else {
            aad12 = tls12_aad(seq, ct, payload_len);
            (&aad12, payload_len)
        };
        let (inner, tag) = record[hl..].split_at_mut(inner_len);
        let tag: &mut [u8; TAG_LEN] = tag
            .try_into()
            .map_err(|_| TlsError::BadLength("seal buffer shorter than the record"))?;
        let way = aead::NonceWay::for_aead(self.0.suite.aead());
        aead::seal(&mut self.0.ctx, way, &nonce, aad, inner, tag)?;
        self.0.seq += 1;
        Ok(total)
    }
}

/// An opened record: its (inner) content type and where the plaintext lies.
#[derive(Debug)]
pub struct OpenedRecord<'a> {
    /// The content type (the inner type in TLS 1.3).
    pub content_type: u8,
    /// The plaintext, decrypted in place inside the record buffer.
    pub plaintext: &'a mut [u8],
    /// The sequence number the record was opened at.
    pub seq: u64,
}

/// Opens records for one direction.
pub struct Opener(Keyed);

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt("Opener", f)
    }
}

impl Opener {
    /// An opener for `suite` whose next record has sequence number `seq`.
    pub fn new(suite: CipherSuite, keys: &TrafficKeys, seq: u64) -> Result<Self, TlsError> {
        Keyed::new(suite, keys, seq, false).map(Opener)
    }

    /// Sequence number of the next record.
    pub fn seq(&self) -> u64 {
        self.0.seq
    }

    /// The current keys (for kTLS hand-over).
    pub fn keys(&self) -> &TrafficKeys {
        &self.0.keys
    }

    /// Switch to new keys (TLS 1.3 KeyUpdate); the sequence restarts at 0.
    pub fn rekey(&mut self, keys: &TrafficKeys) -> Result<(), TlsError> {
        self.0.rekey(keys)
    }

    /// Open one whole record (header included) in place.
    ///
    /// Checks the header against the suite's version and limits, decrypts
    /// and authenticates, and in TLS 1.3 strips the padding and recovers
    /// the inner type. On any error the buffer may hold garbage and nothing
    /// of it may be used; the sequence number only advances on success.
    pub fn open_in_place<'a>(
        &mut self,
        record: &'a mut [u8],
    ) -> Result<OpenedRecord<'a>, TlsError> {
        let h = RecordHeader::parse(record).ok_or(TlsError::BadLength("short record header"))?;
        if h.total_len() != record.len() {
            return Err(TlsError::BadLength(
                "record length disagrees with its header",
            ));
        }
        let seq = self.0.next_seq()?;
        let opened = match self.0.suite.version() {
            ProtocolVersion::Tls13 => self.open13(h, record, seq)?,
            ProtocolVersion::Tls12 => self.open12(h, record, seq)?,
        };
        self.0.seq += 1;
        Ok(opened)
    }

    /// Decrypt `ct` in place and check `tag`. On a bad tag, leave no
    /// unauthenticated plaintext in the caller's buffer.
    fn decrypt(
        &mut self,
        nonce: &[u8; Aead::NONCE_LEN],
        aad: &[u8],
        ct: &mut [u8],
        tag: &[u8],
    ) -> Result<(), TlsError> {
        let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| TlsError::BadRecordMac)?;
        let way = aead::NonceWay::for_aead(self.0.suite.aead());
        if !aead::open(&mut self.0.ctx, way, nonce, aad, ct, tag)? {
            ct.fill(0);
            return Err(TlsError::BadRecordMac);
        }
        Ok(())
    }

    fn open13<'a>(
        &mut self,
        h: RecordHeader,
        record: &'a mut [u8],
        seq: u64,
    ) -> Result<OpenedRecord<'a>, TlsError> {
        if h.content_type != ContentType::ApplicationData.code() {
            return Err(TlsError::UnexpectedMessage(
                "unprotected record after the handshake",
            ));
        }
        if h.len > MAX_CIPHERTEXT_TLS13 {
            return Err(TlsError::RecordOverflow {
                len: h.len,
                limit: MAX_CIPHERTEXT_TLS13,
                what: "ciphertext",
            });
        }
        if h.len < TAG_LEN + 1 {
            return Err(TlsError::BadLength("record shorter than tag and type"));
        }
        let nonce = nonce_for(self.0.suite, self.0.keys.iv(), seq, None);
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let (ct, tag) = body.split_at_mut(h.len - TAG_LEN);
        self.decrypt(&nonce, header, ct, tag)?;
        // Inner plaintext: content ‖ type ‖ zeros.
        let Some(type_at) = ct.iter().rposition(|&b| b != 0) else {
            return Err(TlsError::UnexpectedMessage(
                "record without an inner content type",
            ));
        };
        if type_at > MAX_PLAINTEXT {
            return Err(TlsError::RecordOverflow {
                len: ct.len(),
                limit: MAX_PLAINTEXT + 1,
                what: "inner plaintext",
            });
        }
        let content_type = ct[type_at];
        Ok(OpenedRecord {
            content_type,
            plaintext: &mut ct[..type_at],
            seq,
        })
    }

    fn open12<'a>(
        &mut self,
        h: RecordHeader,
        record: &'a mut [u8],
        seq: u64,
    ) -> Result<OpenedRecord<'a>, TlsError> {
        if h.version != 0x0303 {
            return Err(TlsError::ProtocolVersion(h.version));
        }
        match ContentType::from_code(h.content_type) {
            Some(ContentType::Alert | ContentType::Handshake | ContentType::ApplicationData) => {}
            _ => {
                return Err(TlsError::UnexpectedMessage(
                    "record type after the handshake",
                ));
            }
        }
        let explicit_len = if self.0.suite.tls12_explicit_nonce() {
            EXPLICIT_NONCE_LEN
        } else {
            0
        };
        if h.len < explicit_len + TAG_LEN {
            return Err(TlsError::BadLength("record shorter than nonce and tag"));
        }
        let pt_len = h.len - explicit_len - TAG_LEN;
        if pt_len > MAX_PLAINTEXT {
            return Err(TlsError::RecordOverflow {
                len: pt_len,
                limit: MAX_PLAINTEXT,
                what: "plaintext",
            });
        }
        let explicit = (explicit_len > 0).then(|| explicit_nonce(record)).flatten();
        let nonce = nonce_for(self.0.suite, self.0.keys.iv(), seq, explicit);
        let aad = tls12_aad(seq, h.content_type, pt_len);
        let (ct, tag) = record[HEADER_LEN + explicit_len..].split_at_mut(pt_len);
        self.decrypt(&nonce, &aad, ct, tag)?;
        Ok(OpenedRecord {
            content_type: h.content_type,
            plaintext: ct,
            seq,
        })
    }
}

/// The explicit nonce of a TLS 1.2 AES-GCM record (bytes 5..13), if it has one.
pub fn explicit_nonce(record: &[u8]) -> Option<[u8; 8]> {
    record.get(HEADER_LEN..HEADER_LEN + 8)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::reference_seal13;

    fn keys(suite: CipherSuite) -> TrafficKeys {
        let key: Vec<u8> = (0..suite.aead().key_len() as u8).collect();
        let iv: Vec<u8> = (100..100 + suite.fixed_iv_len() as u8).collect();
        TrafficKeys::new(&key, &iv).unwrap()
    }

    fn seal(s: &mut Sealer, ct: ContentType, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; payload.len() + s.overhead()];
        let hl = s.header_len();
        buf[hl..hl + payload.len()].copy_from_slice(payload);
        let n = s.seal_in_place(ct, &mut buf, payload.len()).unwrap();
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn round_trip_every_suite_and_size() {
        for suite in CipherSuite::ALL {
            let k = keys(suite);
            let mut s = Sealer::new(suite, &k, 5).unwrap();
            let mut o = Opener::new(suite, &k, 5).unwrap();
            for len in [0usize, 1, 15, 16, 17, 255, 1024, MAX_PLAINTEXT] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let mut rec = seal(&mut s, ContentType::ApplicationData, &payload);
                assert_eq!(next_record(&rec, suite.version()).unwrap(), Some(rec.len()));
                let opened = o.open_in_place(&mut rec).unwrap();
                assert_eq!(opened.content_type, 23);
                assert_eq!(opened.plaintext, &payload[..], "{suite} len {len}");
            }
            assert_eq!((s.seq(), o.seq()), (13, 13));
        }
    }

    #[test]
    fn every_flipped_bit_of_a_small_record_is_rejected() {
        for suite in CipherSuite::ALL {
            let k = keys(suite);
            let mut s = Sealer::new(suite, &k, 0).unwrap();
            let rec = seal(&mut s, ContentType::ApplicationData, b"hello");
            for bit in 0..rec.len() * 8 {
                let mut bad = rec.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                let mut o = Opener::new(suite, &k, 0).unwrap();
                assert!(o.open_in_place(&mut bad).is_err(), "{suite} bit {bit}");
                assert_eq!(o.seq(), 0, "a failed open must not advance the sequence");
            }
        }
    }

    #[test]
    fn a_failed_tag_check_leaves_no_openssl_error_and_no_plaintext() {
        for suite in CipherSuite::ALL {
            let k = keys(suite);
            let mut s = Sealer::new(suite, &k, 0).unwrap();
            let mut rec = seal(&mut s, ContentType::ApplicationData, b"secret payload");
            let last = rec.len() - 1;
            rec[last] ^= 0x80;
            let mut o = Opener::new(suite, &k, 0).unwrap();
            assert!(matches!(
                o.open_in_place(&mut rec),
                Err(TlsError::BadRecordMac)
            ));
            assert!(
                openssl::error::ErrorStack::get().errors().is_empty(),
                "{suite}: the failed check's error is left on the queue"
            );
            assert!(
                !rec.windows(6).any(|w| w == b"secret"),
                "{suite}: unauthenticated plaintext left in the buffer"
            );
        }
    }

    #[test]
    fn wrong_sequence_number_fails_authentication() {
        for suite in CipherSuite::ALL {
            let k = keys(suite);
            let mut s = Sealer::new(suite, &k, 7).unwrap();
            let mut rec = seal(&mut s, ContentType::ApplicationData, b"x");
            let mut o = Opener::new(suite, &k, 8).unwrap();
            assert!(matches!(
                o.open_in_place(&mut rec),
                Err(TlsError::BadRecordMac)
            ));
        }
    }

    #[test]
    fn limits_are_enforced_at_the_boundary() {
        let suite = CipherSuite::Tls13Aes128GcmSha256;
        let k = keys(suite);
        let mut s = Sealer::new(suite, &k, 0).unwrap();
        let mut big = vec![0u8; MAX_PLAINTEXT + 1 + s.overhead()];
        assert!(matches!(
            s.seal_in_place(ContentType::ApplicationData, &mut big, MAX_PLAINTEXT + 1),
            Err(TlsError::RecordOverflow { .. })
        ));
        assert_eq!(s.seq(), 0);
        // A header at exactly the TLS 1.3 limit deframes; one more byte does not.
        let mut hdr = vec![23, 3, 3];
        hdr.extend_from_slice(&(MAX_CIPHERTEXT_TLS13 as u16).to_be_bytes());
        assert_eq!(next_record(&hdr, ProtocolVersion::Tls13).unwrap(), None);
        hdr[3..5].copy_from_slice(&((MAX_CIPHERTEXT_TLS13 + 1) as u16).to_be_bytes());
        assert!(matches!(
            next_record(&hdr, ProtocolVersion::Tls13),
            Err(TlsError::RecordOverflow { .. })
        ));
        assert_eq!(next_record(&hdr, ProtocolVersion::Tls12).unwrap(), None);
        // Too short for the tag: rejected before any decryption.
        let mut o = Opener::new(suite, &k, 0).unwrap();
        let mut short = vec![23, 3, 3, 0, 16];
        short.extend_from_slice(&[0; 16]);
        assert!(matches!(
            o.open_in_place(&mut short),
            Err(TlsError::BadLength(_))
        ));
    }

    #[test]
    fn tls13_padding_is_stripped_and_all_zero_is_rejected() {
        let suite = CipherSuite::Tls13Chacha20Poly1305Sha256;
        let k = keys(suite);
        let mut o = Opener::new(suite, &k, 0).unwrap();
        let mut inner = b"abc".to_vec();
        inner.push(22);
        inner.extend_from_slice(&[0; 40]);
        let mut rec = reference_seal13(suite, &k, 0, &inner).unwrap();
        let opened = o.open_in_place(&mut rec).unwrap();
        assert_eq!(
            (opened.content_type, &opened.plaintext[..]),
            (22, &b"abc"[..])
        );

        // No non-zero byte: no content type.
        let mut rec = reference_seal13(suite, &k, 1, &[0; 9]).unwrap();
        assert!(matches!(
            o.open_in_place(&mut rec),
            Err(TlsError::UnexpectedMessage(_))
        ));

        // 2^14 bytes of content plus padding is fine; 2^14 + 1 is not.
        let mut o = Opener::new(suite, &k, 0).unwrap();
        let mut inner = vec![1u8; MAX_PLAINTEXT];
        inner.push(23);
        inner.extend_from_slice(&[0; 200]);
        let mut rec = reference_seal13(suite, &k, 0, &inner).unwrap();
        assert_eq!(
            o.open_in_place(&mut rec).unwrap().plaintext.len(),
            MAX_PLAINTEXT
        );
        let mut inner = vec![1u8; MAX_PLAINTEXT + 1];
        inner.push(23);
        let mut rec = reference_seal13(suite, &k, 1, &inner).unwrap();
        assert!(matches!(
            o.open_in_place(&mut rec),
            Err(TlsError::RecordOverflow { .. })
        ));
    }

    #[test]
    fn sealer_matches_an_independent_one_shot_aead() {
        for suite in CipherSuite::ALL
            .into_iter()
            .filter(|s| s.version() == ProtocolVersion::Tls13)
        {
            let k = keys(suite);
            let mut s = Sealer::new(suite, &k, 41).unwrap();
            let rec = seal(&mut s, ContentType::Handshake, b"key update?");
            let mut inner = b"key update?".to_vec();
            inner.push(22);
            assert_eq!(
                rec,
                reference_seal13(suite, &k, 41, &inner).unwrap(),
                "{suite}"
            );
        }
    }

    #[test]
    fn tls12_gcm_uses_the_sequence_as_explicit_nonce() {
        let suite = CipherSuite::EcdheEcdsaAes256GcmSha384;
        let k = keys(suite);
        let mut s = Sealer::new(suite, &k, 0x0102).unwrap();
        let rec = seal(&mut s, ContentType::ApplicationData, b"z");
        assert_eq!(explicit_nonce(&rec), Some(0x0102u64.to_be_bytes()));
        assert_eq!(rec.len(), 5 + 8 + 1 + 16);
        assert_eq!(&rec[..5], &[23, 3, 3, 0, 25]);
    }
}

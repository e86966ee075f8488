//! Errors of the record layer and the alert each one sends.

use std::fmt;

/// TLS alert descriptions we send or name (RFC 8446 §6, RFC 5246 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertDescription {
    /// 0: orderly close.
    CloseNotify,
    /// 10.
    UnexpectedMessage,
    /// 20.
    BadRecordMac,
    /// 22.
    RecordOverflow,
    /// 47.
    IllegalParameter,
    /// 50.
    DecodeError,
    /// 70.
    ProtocolVersion,
    /// 80.
    InternalError,
    /// 90.
    UserCanceled,
    /// 100 (TLS 1.2 only).
    NoRenegotiation,
    /// Anything else, by number.
    Other(u8),
}

impl AlertDescription {
    /// The wire value.
    pub fn code(self) -> u8 {
        match self {
            Self::CloseNotify => 0,
            Self::UnexpectedMessage => 10,
            Self::BadRecordMac => 20,
            Self::RecordOverflow => 22,
            Self::IllegalParameter => 47,
            Self::DecodeError => 50,
            Self::ProtocolVersion => 70,
            Self::InternalError => 80,
            Self::UserCanceled => 90,
            Self::NoRenegotiation => 100,
            Self::Other(c) => c,
        }
    }

    /// From the wire value.
    pub fn from_code(c: u8) -> Self {
        match c {
            0 => Self::CloseNotify,
            10 => Self::UnexpectedMessage,
            20 => Self::BadRecordMac,
            22 => Self::RecordOverflow,
            47 => Self::IllegalParameter,
            50 => Self::DecodeError,
            70 => Self::ProtocolVersion,
            80 => Self::InternalError,
            90 => Self::UserCanceled,
            100 => Self::NoRenegotiation,
            c => Self::Other(c),
        }
    }
}

impl fmt::Display for AlertDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CloseNotify => f.write_str("close_notify"),
            Self::UnexpectedMessage => f.write_str("unexpected_message"),
            Self::BadRecordMac => f.write_str("bad_record_mac"),
            Self::RecordOverflow => f.write_str("record_overflow"),
            Self::IllegalParameter => f.write_str("illegal_parameter"),
            Self::DecodeError => f.write_str("decode_error"),
            Self::ProtocolVersion => f.write_str("protocol_version"),
            Self::InternalError => f.write_str("internal_error"),
            Self::UserCanceled => f.write_str("user_canceled"),
            Self::NoRenegotiation => f.write_str("no_renegotiation"),
            Self::Other(c) => write!(f, "alert({c})"),
        }
    }
}

/// What went wrong, coarsely, for counters. Each [`TlsError`] maps to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A record failed AEAD authentication.
    BadRecordMac,
    /// A length that cannot be right: a record shorter than its header, or
    /// than its tag plus explicit nonce (TLS 1.2 AES-GCM) or inner type
    /// (TLS 1.3); a record whose length disagrees with its header; a seal
    /// buffer shorter than the record; keys that do not fit the suite. (A
    /// control message of the wrong length is [`Self::Malformed`].)
    BadLength,
    /// A record or plaintext over the protocol limit.
    RecordOverflow,
    /// A record type or message not allowed here.
    UnexpectedMessage,
    /// A malformed control message or field value.
    Malformed,
    /// A record header whose major version is not 3, or a TLS 1.2 record
    /// whose version is not 0x0303. (A header whose type byte is not a TLS
    /// content type, such as plain HTTP, is [`Self::UnexpectedMessage`].)
    ProtocolVersion,
    /// The peer sent a fatal alert.
    PeerAlert,
    /// Our sending key or sequence space is used up (TLS 1.2 has no KeyUpdate).
    KeyExhausted,
    /// Use after close or after a failure (a caller bug, not the peer's).
    Closed,
    /// OpenSSL reported an error in the AEAD or KDF itself.
    Crypto,
}

impl ErrorKind {
    /// Number of kinds (size of a per-kind counter array).
    pub const COUNT: usize = 10;

    /// Every kind, in counter order.
    pub const ALL: [ErrorKind; Self::COUNT] = [
        Self::BadRecordMac,
        Self::BadLength,
        Self::RecordOverflow,
        Self::UnexpectedMessage,
        Self::Malformed,
        Self::ProtocolVersion,
        Self::PeerAlert,
        Self::KeyExhausted,
        Self::Closed,
        Self::Crypto,
    ];

    /// Index into a per-kind counter array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short stable name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadRecordMac => "bad_record_mac",
            Self::BadLength => "bad_length",
            Self::RecordOverflow => "record_overflow",
            Self::UnexpectedMessage => "unexpected_message",
            Self::Malformed => "malformed",
            Self::ProtocolVersion => "protocol_version",
            Self::PeerAlert => "peer_alert",
            Self::KeyExhausted => "key_exhausted",
            Self::Closed => "closed",
            Self::Crypto => "crypto",
        }
    }
}

/// A record-layer error. Every error from [`crate::RecordLayer::open_next`]
/// is fatal: the layer has queued the alert (if any) and refuses further
/// records; the caller sends what [`crate::RecordLayer::poll_output`] gives
/// and closes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// AEAD authentication failed.
    #[error("record failed authentication")]
    BadRecordMac,
    /// A record, seal buffer or key whose length is impossible here (see
    /// [`ErrorKind::BadLength`]).
    #[error("bad length: {0}")]
    BadLength(&'static str),
    /// Over the 2^14 plaintext / ciphertext limit.
    #[error("record over the limit: {len} > {limit} bytes ({what})")]
    RecordOverflow {
        /// The offending length.
        len: usize,
        /// The limit it exceeded.
        limit: usize,
        /// Ciphertext or plaintext.
        what: &'static str,
    },
    /// A record type or handshake message not allowed at this point.
    #[error("unexpected {0}")]
    UnexpectedMessage(&'static str),
    /// A control message with an invalid field.
    #[error("malformed {what}")]
    Malformed {
        /// What was malformed.
        what: &'static str,
        /// The alert to send (decode_error or illegal_parameter).
        alert: AlertDescription,
    },
    /// Wrong record-layer version.
    #[error("record version {0:#06x} is not TLS 1.2/1.3")]
    ProtocolVersion(u16),
    /// The peer sent a fatal alert.
    #[error("peer sent alert {0}")]
    PeerAlert(AlertDescription),
    /// We may not seal more records under this key and cannot rekey.
    #[error("sending key exhausted after {0} records")]
    KeyExhausted(u64),
    /// The connection is closed for writing, or already failed.
    #[error("connection is closed: {0}")]
    Closed(&'static str),
    /// OpenSSL failed inside the AEAD or KDF.
    #[error("crypto library error: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

impl TlsError {
    /// The kind, for counters.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadRecordMac => ErrorKind::BadRecordMac,
            Self::BadLength(_) => ErrorKind::BadLength,
            Self::RecordOverflow { .. } => ErrorKind::RecordOverflow,
            Self::UnexpectedMessage(_) => ErrorKind::UnexpectedMessage,
            Self::Malformed { .. } => ErrorKind::Malformed,
            Self::ProtocolVersion(_) => ErrorKind::ProtocolVersion,
            Self::PeerAlert(_) => ErrorKind::PeerAlert,
            Self::KeyExhausted(_) => ErrorKind::KeyExhausted,
            Self::Closed(_) => ErrorKind::Closed,
            Self::Crypto(_) => ErrorKind::Crypto,
        }
    }

    /// The fatal alert we send for this error, if any. A peer's alert is not
    /// answered; an exhausted key ends with close_notify instead.
    pub fn alert(&self) -> Option<AlertDescription> {
        match self {
            Self::BadRecordMac => Some(AlertDescription::BadRecordMac),
            Self::BadLength(_) => Some(AlertDescription::DecodeError),
            Self::RecordOverflow { .. } => Some(AlertDescription::RecordOverflow),
            Self::UnexpectedMessage(_) => Some(AlertDescription::UnexpectedMessage),
            Self::Malformed { alert, .. } => Some(*alert),
            Self::ProtocolVersion(_) => Some(AlertDescription::ProtocolVersion),
            Self::Crypto(_) => Some(AlertDescription::InternalError),
            Self::PeerAlert(_) | Self::KeyExhausted(_) | Self::Closed(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_codes_round_trip() {
        for c in 0..=255u8 {
            assert_eq!(AlertDescription::from_code(c).code(), c);
        }
    }

    #[test]
    fn kind_indices_are_dense() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}

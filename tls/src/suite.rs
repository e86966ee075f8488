//! Protocol versions and the cipher suites the record layer implements.

use std::fmt;

use openssl::cipher::{Cipher, CipherRef};
use openssl::md::{Md, MdRef};

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// We accepted the connection.
    Server,
    /// We opened the connection.
    Client,
}

/// TLS protocol version of an established connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// TLS 1.2 (RFC 5246).
    Tls12,
    /// TLS 1.3 (RFC 8446).
    Tls13,
}

impl ProtocolVersion {
    /// The wire value (0x0303 / 0x0304), also the kTLS `version` field.
    pub fn wire(self) -> u16 {
        match self {
            Self::Tls12 => 0x0303,
            Self::Tls13 => 0x0304,
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tls12 => "TLSv1.2",
            Self::Tls13 => "TLSv1.3",
        })
    }
}

/// The AEAD under a suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aead {
    /// AES-128-GCM.
    Aes128Gcm,
    /// AES-256-GCM.
    Aes256Gcm,
    /// ChaCha20-Poly1305 (RFC 8439).
    Chacha20Poly1305,
}

impl Aead {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::Aes256Gcm | Self::Chacha20Poly1305 => 32,
        }
    }

    /// Authentication tag length in bytes (16 for all three).
    pub const TAG_LEN: usize = 16;

    /// Nonce length in bytes (12 for all three).
    pub const NONCE_LEN: usize = 12;

    /// The OpenSSL cipher.
    pub fn cipher(self) -> &'static CipherRef {
        match self {
            Self::Aes128Gcm => Cipher::aes_128_gcm(),
            Self::Aes256Gcm => Cipher::aes_256_gcm(),
            Self::Chacha20Poly1305 => Cipher::chacha20_poly1305(),
        }
    }
}

/// The handshake hash of a suite (HKDF in TLS 1.3, PRF in TLS 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
}

impl HashAlg {
    /// Output length in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
        }
    }

    /// The OpenSSL digest.
    pub fn md(self) -> &'static MdRef {
        match self {
            Self::Sha256 => Md::sha256(),
            Self::Sha384 => Md::sha384(),
        }
    }

    pub(crate) fn message_digest(self) -> openssl::hash::MessageDigest {
        match self {
            Self::Sha256 => openssl::hash::MessageDigest::sha256(),
            Self::Sha384 => openssl::hash::MessageDigest::sha384(),
        }
    }
}

/// A cipher suite the record layer can carry. TLS 1.2 suites are listed per
/// authentication type because the IANA code points differ; the record
/// protection is the same for the ECDSA and RSA variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// TLS_AES_128_GCM_SHA256 (0x1301).
    Tls13Aes128GcmSha256,
    /// TLS_AES_256_GCM_SHA384 (0x1302).
    Tls13Aes256GcmSha384,
    /// TLS_CHACHA20_POLY1305_SHA256 (0x1303).
    Tls13Chacha20Poly1305Sha256,
    /// ECDHE-ECDSA-AES128-GCM-SHA256 (0xC02B).
    EcdheEcdsaAes128GcmSha256,
    /// ECDHE-RSA-AES128-GCM-SHA256 (0xC02F).
    EcdheRsaAes128GcmSha256,
    /// ECDHE-ECDSA-AES256-GCM-SHA384 (0xC02C).
    EcdheEcdsaAes256GcmSha384,
    /// ECDHE-RSA-AES256-GCM-SHA384 (0xC030).
    EcdheRsaAes256GcmSha384,
    /// ECDHE-ECDSA-CHACHA20-POLY1305 (0xCCA9).
    EcdheEcdsaChacha20Poly1305,
    /// ECDHE-RSA-CHACHA20-POLY1305 (0xCCA8).
    EcdheRsaChacha20Poly1305,
}

/// OpenSSL `SSL_CTX_set_ciphersuites` string for every TLS 1.3 suite we carry.
pub const TLS13_CIPHERSUITES: &str =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

/// OpenSSL `SSL_CTX_set_cipher_list` string for every TLS 1.2 suite we carry.
pub const TLS12_CIPHER_LIST: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

impl CipherSuite {
    /// Every suite, TLS 1.3 first.
    pub const ALL: [CipherSuite; 9] = [
        Self::Tls13Aes128GcmSha256,
        Self::Tls13Aes256GcmSha384,
        Self::Tls13Chacha20Poly1305Sha256,
        Self::EcdheEcdsaAes128GcmSha256,
        Self::EcdheRsaAes128GcmSha256,
        Self::EcdheEcdsaAes256GcmSha384,
        Self::EcdheRsaAes256GcmSha384,
        Self::EcdheEcdsaChacha20Poly1305,
        Self::EcdheRsaChacha20Poly1305,
    ];

    /// Look a suite up by its IANA code point.
    pub fn from_iana(id: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.iana() == id)
    }

    /// The IANA code point.
    pub fn iana(self) -> u16 {
        match self {
            Self::Tls13Aes128GcmSha256 => 0x1301,
            Self::Tls13Aes256GcmSha384 => 0x1302,
            Self::Tls13Chacha20Poly1305Sha256 => 0x1303,
            Self::EcdheEcdsaAes128GcmSha256 => 0xC02B,
            Self::EcdheRsaAes128GcmSha256 => 0xC02F,
            Self::EcdheEcdsaAes256GcmSha384 => 0xC02C,
            Self::EcdheRsaAes256GcmSha384 => 0xC030,
            Self::EcdheEcdsaChacha20Poly1305 => 0xCCA9,
            Self::EcdheRsaChacha20Poly1305 => 0xCCA8,
        }
    }

    /// The name OpenSSL uses (IANA names for TLS 1.3).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tls13Aes128GcmSha256 => "TLS_AES_128_GCM_SHA256",
            Self::Tls13Aes256GcmSha384 => "TLS_AES_256_GCM_SHA384",
            Self::Tls13Chacha20Poly1305Sha256 => "TLS_CHACHA20_POLY1305_SHA256",
            Self::EcdheEcdsaAes128GcmSha256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
            Self::EcdheRsaAes128GcmSha256 => "ECDHE-RSA-AES128-GCM-SHA256",
            Self::EcdheEcdsaAes256GcmSha384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
            Self::EcdheRsaAes256GcmSha384 => "ECDHE-RSA-AES256-GCM-SHA384",
            Self::EcdheEcdsaChacha20Poly1305 => "ECDHE-ECDSA-CHACHA20-POLY1305",
            Self::EcdheRsaChacha20Poly1305 => "ECDHE-RSA-CHACHA20-POLY1305",
        }
    }

    /// The protocol version this suite belongs to.
    pub fn version(self) -> ProtocolVersion {
        match self {
            Self::Tls13Aes128GcmSha256
            | Self::Tls13Aes256GcmSha384
            | Self::Tls13Chacha20Poly1305Sha256 => ProtocolVersion::Tls13,
            _ => ProtocolVersion::Tls12,
        }
    }

    /// The record AEAD.
    pub fn aead(self) -> Aead {
        match self {
            Self::Tls13Aes128GcmSha256
            | Self::EcdheEcdsaAes128GcmSha256
            | Self::EcdheRsaAes128GcmSha256 => Aead::Aes128Gcm,
            Self::Tls13Aes256GcmSha384
            | Self::EcdheEcdsaAes256GcmSha384
            | Self::EcdheRsaAes256GcmSha384 => Aead::Aes256Gcm,
            Self::Tls13Chacha20Poly1305Sha256
            | Self::EcdheEcdsaChacha20Poly1305
            | Self::EcdheRsaChacha20Poly1305 => Aead::Chacha20Poly1305,
        }
    }

    /// The suite hash (HKDF / PRF).
    pub fn hash(self) -> HashAlg {
        match self {
            Self::Tls13Aes256GcmSha384
            | Self::EcdheEcdsaAes256GcmSha384
            | Self::EcdheRsaAes256GcmSha384 => HashAlg::Sha384,
            _ => HashAlg::Sha256,
        }
    }

    /// Length of the IV material each direction holds: 12 bytes, except the
    /// 4-byte implicit salt of TLS 1.2 AES-GCM (RFC 5288), whose other 8
    /// nonce bytes travel in each record.
    pub fn fixed_iv_len(self) -> usize {
        if self.tls12_explicit_nonce() {
            4
        } else {
            Aead::NONCE_LEN
        }
    }

    /// True for TLS 1.2 AES-GCM, whose records carry an 8-byte explicit nonce.
    pub fn tls12_explicit_nonce(self) -> bool {
        self.version() == ProtocolVersion::Tls12 && self.aead() != Aead::Chacha20Poly1305
    }
}

impl fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iana_round_trip_and_names_are_distinct() {
        for s in CipherSuite::ALL {
            assert_eq!(CipherSuite::from_iana(s.iana()), Some(s));
        }
        let mut names: Vec<_> = CipherSuite::ALL.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CipherSuite::ALL.len());
        assert_eq!(CipherSuite::from_iana(0x1304), None, "CCM is not carried");
    }

    #[test]
    fn openssl_strings_name_every_suite() {
        for s in CipherSuite::ALL {
            let list = match s.version() {
                ProtocolVersion::Tls13 => TLS13_CIPHERSUITES,
                ProtocolVersion::Tls12 => TLS12_CIPHER_LIST,
            };
            assert!(list.split(':').any(|n| n == s.name()), "{s} missing");
        }
    }

    #[test]
    fn aead_key_lengths_match_openssl() {
        for a in [Aead::Aes128Gcm, Aead::Aes256Gcm, Aead::Chacha20Poly1305] {
            assert_eq!(a.cipher().key_length(), a.key_len());
            assert_eq!(a.cipher().iv_length(), Aead::NONCE_LEN);
        }
    }
}

//! kTLS `crypto_info` (linux/tls.h) built from the record layer's keys.
//!
//! These are plain `#[repr(C)]` byte layouts with the kernel's field order
//! and sizes; [`CryptoInfo::as_bytes`] is exactly the `optval` of
//! `setsockopt(fd, SOL_TLS, TLS_TX | TLS_RX, optval, optlen)`. The same
//! struct names serve TLS 1.2 and 1.3 (the `version` field tells them apart).
//!
//! Nothing in the proxy passes them to the kernel: kernel mode lets OpenSSL
//! install kTLS itself (`SSL_OP_ENABLE_KTLS`). Here they are an independent
//! view of the keys: the fuzz target's reference AEAD
//! ([`crate::fuzz::reference_open`]) opens records from it, and the tests
//! check the layouts and bytes against known values.
//!
//! How the 12-byte nonce material splits: AES-GCM puts 4 bytes in `salt`
//! and 8 in `iv`; ChaCha20-Poly1305 has no salt and a 12-byte `iv`. For
//! TLS 1.2 AES-GCM, `iv` is the next explicit nonce, which our sealer keeps
//! equal to the sequence number. `rec_seq` is the next sequence number,
//! big-endian, as the kernel increments it.

use std::fmt;

use zerocopy::{Immutable, IntoBytes, KnownLayout};
use zeroize::Zeroize;

use crate::keys::TrafficKeys;
use crate::suite::{Aead, CipherSuite};

/// `TLS_CIPHER_AES_GCM_128`.
pub const TLS_CIPHER_AES_GCM_128: u16 = 51;
/// `TLS_CIPHER_AES_GCM_256`.
pub const TLS_CIPHER_AES_GCM_256: u16 = 52;
/// `TLS_CIPHER_CHACHA20_POLY1305`.
pub const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

/// Which way the keys protect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// What we send (`TLS_TX`).
    Tx,
    /// What we receive (`TLS_RX`).
    Rx,
}

/// `struct tls_crypto_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, IntoBytes, Immutable, KnownLayout)]
pub struct TlsCryptoInfo {
    /// The wire version (`TLS_1_2_VERSION` 0x0303 or `TLS_1_3_VERSION`
    /// 0x0304, see [`crate::ProtocolVersion::wire`]).
    pub version: u16,
    /// `TLS_CIPHER_*`.
    pub cipher_type: u16,
}

/// `struct tls12_crypto_info_aes_gcm_128` (40 bytes).
#[repr(C)]
#[derive(Clone, PartialEq, Eq, IntoBytes, Immutable, KnownLayout)]
pub struct Tls12CryptoInfoAesGcm128 {
    /// Header.
    pub info: TlsCryptoInfo,
    /// Nonce bytes 4..12.
    pub iv: [u8; 8],
    /// AES-128 key.
    pub key: [u8; 16],
    /// Nonce bytes 0..4.
    pub salt: [u8; 4],
    /// Next record sequence number, big-endian.
    pub rec_seq: [u8; 8],
}

/// `struct tls12_crypto_info_aes_gcm_256` (56 bytes).
#[repr(C)]
#[derive(Clone, PartialEq, Eq, IntoBytes, Immutable, KnownLayout)]
pub struct Tls12CryptoInfoAesGcm256 {
    /// Header.
    pub info: TlsCryptoInfo,
    /// Nonce bytes 4..12.
    pub iv: [u8; 8],
    /// AES-256 key.
    pub key: [u8; 32],
    /// Nonce bytes 0..4.
    pub salt: [u8; 4],
    /// Next record sequence number, big-endian.
    pub rec_seq: [u8; 8],
}

/// `struct tls12_crypto_info_chacha20_poly1305` (56 bytes; `salt[0]`).
#[repr(C)]
#[derive(Clone, PartialEq, Eq, IntoBytes, Immutable, KnownLayout)]
pub struct Tls12CryptoInfoChacha20Poly1305 {
    /// Header.
    pub info: TlsCryptoInfo,
    /// The whole 12-byte nonce base.
    pub iv: [u8; 12],
    /// ChaCha20 key.
    pub key: [u8; 32],
    /// Zero-length salt, as in the kernel header.
    pub salt: [u8; 0],
    /// Next record sequence number, big-endian.
    pub rec_seq: [u8; 8],
}

macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("info", &self.info)
                    .field("rec_seq", &u64::from_be_bytes(self.rec_seq))
                    .finish_non_exhaustive()
            }
        }
    )*};
}

redacted_debug!(
    Tls12CryptoInfoAesGcm128,
    Tls12CryptoInfoAesGcm256,
    Tls12CryptoInfoChacha20Poly1305
);

/// One of the three layouts, wiped on drop, `Debug` without key bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum CryptoInfo {
    /// AES-128-GCM.
    AesGcm128(Tls12CryptoInfoAesGcm128),
    /// AES-256-GCM.
    AesGcm256(Tls12CryptoInfoAesGcm256),
    /// ChaCha20-Poly1305.
    Chacha20Poly1305(Tls12CryptoInfoChacha20Poly1305),
}

impl CryptoInfo {
    /// Build from one direction's keys and next sequence number.
    ///
    /// `keys` must fit `suite` (as every key the record layer holds does).
    pub fn new(suite: CipherSuite, keys: &TrafficKeys, seq: u64) -> Self {
        let info = |cipher_type| TlsCryptoInfo {
            version: suite.version().wire(),
            cipher_type,
        };
        let rec_seq = seq.to_be_bytes();
        let iv = keys.iv();
        // TLS 1.2 GCM keeps only the salt; the explicit part is our sequence.
        let (salt, iv8): ([u8; 4], [u8; 8]) = if suite.tls12_explicit_nonce() {
            (copy_array(iv), rec_seq)
        } else {
            (copy_array(&iv[..4]), copy_array(&iv[4..]))
        };
        match suite.aead() {
            Aead::Aes128Gcm => Self::AesGcm128(Tls12CryptoInfoAesGcm128 {
                info: info(TLS_CIPHER_AES_GCM_128),
                iv: iv8,
                key: copy_array(keys.key()),
                salt,
                rec_seq,
            }),
            Aead::Aes256Gcm => Self::AesGcm256(Tls12CryptoInfoAesGcm256 {
                info: info(TLS_CIPHER_AES_GCM_256),
                iv: iv8,
                key: copy_array(keys.key()),
                salt,
                rec_seq,
            }),
            Aead::Chacha20Poly1305 => Self::Chacha20Poly1305(Tls12CryptoInfoChacha20Poly1305 {
                info: info(TLS_CIPHER_CHACHA20_POLY1305),
                iv: copy_array(iv),
                key: copy_array(keys.key()),
                salt: [],
                rec_seq,
            }),
        }
    }

    /// The header fields.
    pub fn info(&self) -> TlsCryptoInfo {
        match self {
            Self::AesGcm128(c) => c.info,
            Self::AesGcm256(c) => c.info,
            Self::Chacha20Poly1305(c) => c.info,
        }
    }

    /// The bytes to pass to setsockopt.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::AesGcm128(c) => c.as_bytes(),
            Self::AesGcm256(c) => c.as_bytes(),
            Self::Chacha20Poly1305(c) => c.as_bytes(),
        }
    }
}

/// Copy a slice into an array of the same length; shorter slices are
/// zero-padded (lengths are fixed by the suite, so this never truncates).
fn copy_array<const N: usize>(src: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = src.len().min(N);
    a[..n].copy_from_slice(&src[..n]);
    a
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        match self {
            Self::AesGcm128(c) => {
                c.key.zeroize();
                c.iv.zeroize();
                c.salt.zeroize();
            }
            Self::AesGcm256(c) => {
                c.key.zeroize();
                c.iv.zeroize();
                c.salt.zeroize();
            }
            Self::Chacha20Poly1305(c) => {
                c.key.zeroize();
                c.iv.zeroize();
            }
        }
    }
}

impl fmt::Debug for CryptoInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.info();
        f.debug_struct("CryptoInfo")
            .field("version", &format_args!("{:#06x}", info.version))
            .field("cipher_type", &info.cipher_type)
            .field("len", &self.as_bytes().len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layouts_match_linux_tls_h() {
        assert_eq!(size_of::<TlsCryptoInfo>(), 4);
        assert_eq!(size_of::<Tls12CryptoInfoAesGcm128>(), 40);
        assert_eq!(offset_of!(Tls12CryptoInfoAesGcm128, iv), 4);
        assert_eq!(offset_of!(Tls12CryptoInfoAesGcm128, key), 12);
        assert_eq!(offset_of!(Tls12CryptoInfoAesGcm128, salt), 28);
        assert_eq!(offset_of!(Tls12CryptoInfoAesGcm128, rec_seq), 32);
        assert_eq!(size_of::<Tls12CryptoInfoAesGcm256>(), 56);
        assert_eq!(offset_of!(Tls12CryptoInfoAesGcm256, key), 12);
        assert_eq!(offset_of!(Tls12CryptoInfoAesGcm256, salt), 44);
        assert_eq!(offset_of!(Tls12CryptoInfoAesGcm256, rec_seq), 48);
        assert_eq!(size_of::<Tls12CryptoInfoChacha20Poly1305>(), 56);
        assert_eq!(offset_of!(Tls12CryptoInfoChacha20Poly1305, iv), 4);
        assert_eq!(offset_of!(Tls12CryptoInfoChacha20Poly1305, key), 16);
        assert_eq!(offset_of!(Tls12CryptoInfoChacha20Poly1305, rec_seq), 48);
    }

    fn seq_bytes(n: u8) -> Vec<u8> {
        (n..n + 32).collect()
    }

    #[test]
    fn field_split_per_suite() {
        let key32 = seq_bytes(0x40);
        let iv12 = seq_bytes(0xA0)[..12].to_vec();
        // TLS 1.3 AES-256-GCM at seq 0x0102: salt = iv[..4], iv = iv[4..].
        let k = TrafficKeys::new(&key32, &iv12).unwrap();
        let c = CryptoInfo::new(CipherSuite::Tls13Aes256GcmSha384, &k, 0x0102);
        let mut want = vec![0x04, 0x03, 52, 0];
        want.extend(&iv12[4..]);
        want.extend(&key32);
        want.extend(&iv12[..4]);
        want.extend([0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(c.as_bytes(), &want[..]);
        // ChaCha20-Poly1305 (either version): the whole iv, no salt.
        for (suite, v) in [
            (CipherSuite::Tls13Chacha20Poly1305Sha256, [0x04, 0x03]),
            (CipherSuite::EcdheRsaChacha20Poly1305, [0x03, 0x03]),
        ] {
            let c = CryptoInfo::new(suite, &k, 7);
            let mut want = vec![v[0], v[1], 54, 0];
            want.extend(&iv12);
            want.extend(&key32);
            want.extend([0, 0, 0, 0, 0, 0, 0, 7]);
            assert_eq!(c.as_bytes(), &want[..], "{suite}");
        }
        // TLS 1.2 AES-128-GCM: 4-byte salt; the explicit nonce continues
        // from the sequence number, as our sealer writes it.
        let k = TrafficKeys::new(&key32[..16], &iv12[..4]).unwrap();
        let c = CryptoInfo::new(CipherSuite::EcdheEcdsaAes128GcmSha256, &k, 9);
        let mut want = vec![0x03, 0x03, 51, 0];
        want.extend([0, 0, 0, 0, 0, 0, 0, 9]);
        want.extend(&key32[..16]);
        want.extend(&iv12[..4]);
        want.extend([0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(c.as_bytes(), &want[..]);
    }

    #[test]
    fn debug_does_not_print_keys() {
        let keys = TrafficKeys::new(&[0xEE; 16], &[0xDD; 12]).unwrap();
        let c = CryptoInfo::new(CipherSuite::Tls13Aes128GcmSha256, &keys, 0);
        let d = format!("{c:?}");
        assert!(
            !d.contains("238") && !d.to_lowercase().contains("ee, "),
            "{d}"
        );
    }
}

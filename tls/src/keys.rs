//! Key schedule pieces the record layer needs: HKDF-Expand-Label (TLS 1.3),
//! the TLS 1.2 PRF key block, and the secrets a handshake hands over.
//!
//! OpenSSL does the handshake; we only expand the traffic secrets it logs.
//! HKDF runs through OpenSSL's `EVP_PKEY_HKDF` in expand-only mode. rust-openssl
//! has no TLS1-PRF binding, so the TLS 1.2 PRF is P_hash (RFC 5246 §5) over
//! OpenSSL HMAC.

use std::fmt;

use openssl::error::ErrorStack;
use openssl::pkey::{Id, PKey};
use openssl::pkey_ctx::{HkdfMode, PkeyCtx};
use openssl::sign::Signer;
use zeroize::Zeroize;

use crate::suite::{Aead, CipherSuite, HashAlg, Side};

/// A secret of up to 48 bytes (a SHA-384 traffic secret or a TLS 1.2 master
/// secret). Wiped on drop; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    bytes: [u8; 48],
    len: u8,
}

impl Secret {
    /// Copy `bytes` (at most 48) into a secret.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > 48 || bytes.is_empty() {
            return None;
        }
        let mut s = Secret {
            bytes: [0; 48],
            len: bytes.len() as u8,
        };
        s.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(s)
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.len)
    }
}

/// One direction's AEAD key and IV. For TLS 1.2 AES-GCM the IV is the 4-byte
/// implicit salt; otherwise 12 bytes. Wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct TrafficKeys {
    key: [u8; 32],
    key_len: u8,
    iv: [u8; 12],
    iv_len: u8,
}

impl TrafficKeys {
    /// Build from raw parts (lengths must fit the suite; checked by users).
    pub fn new(key: &[u8], iv: &[u8]) -> Option<Self> {
        if key.len() > 32 || iv.len() > 12 {
            return None;
        }
        let mut k = TrafficKeys {
            key: [0; 32],
            key_len: key.len() as u8,
            iv: [0; 12],
            iv_len: iv.len() as u8,
        };
        k.key[..key.len()].copy_from_slice(key);
        k.iv[..iv.len()].copy_from_slice(iv);
        Some(k)
    }

    /// The AEAD key.
    pub fn key(&self) -> &[u8] {
        &self.key[..self.key_len as usize]
    }

    /// The IV (or TLS 1.2 GCM salt).
    pub fn iv(&self) -> &[u8] {
        &self.iv[..self.iv_len as usize]
    }

    pub(crate) fn fits(&self, suite: CipherSuite) -> bool {
        self.key().len() == suite.aead().key_len() && self.iv().len() == suite.fixed_iv_len()
    }
}

impl Drop for TrafficKeys {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl fmt::Debug for TrafficKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TrafficKeys({}-byte key, {}-byte iv)",
            self.key_len, self.iv_len
        )
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty or given context.
pub fn hkdf_expand_label(
    hash: HashAlg,
    secret: &[u8],
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<(), ErrorStack> {
    // HkdfLabel: uint16 length, opaque label<7..255> = "tls13 " + label,
    // opaque context<0..255>. Labels and contexts here are short constants.
    let mut info = Vec::with_capacity(4 + 6 + label.len() + context.len());
    info.extend_from_slice(&(out.len() as u16).to_be_bytes());
    info.push((6 + label.len()) as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
    ctx.derive_init()?;
    ctx.set_hkdf_mode(HkdfMode::EXPAND_ONLY)?;
    ctx.set_hkdf_md(hash.md())?;
    ctx.set_hkdf_key(secret)?;
    ctx.add_hkdf_info(&info)?;
    ctx.derive(Some(out))?;
    Ok(())
}

/// The TLS 1.2 PRF (RFC 5246 §5): P_hash(secret, label ‖ seed).
pub fn tls12_prf(
    hash: HashAlg,
    secret: &[u8],
    label: &[u8],
    seed: &[u8],
    out: &mut [u8],
) -> Result<(), ErrorStack> {
    let key = PKey::hmac(secret)?;
    let md = hash.message_digest();
    let hmac = |parts: &[&[u8]]| -> Result<Vec<u8>, ErrorStack> {
        let mut s = Signer::new(md, &key)?;
        for p in parts {
            s.update(p)?;
        }
        s.sign_to_vec()
    };
    // A(1) = HMAC(secret, label ‖ seed); A(i) = HMAC(secret, A(i-1)).
    let mut a = hmac(&[label, seed])?;
    let mut filled = 0;
    while filled < out.len() {
        let mut block = hmac(&[&a, label, seed])?;
        let n = block.len().min(out.len() - filled);
        out[filled..filled + n].copy_from_slice(&block[..n]);
        filled += n;
        block.zeroize();
        let next = hmac(&[&a])?;
        a.zeroize();
        a = next;
    }
    a.zeroize();
    Ok(())
}

/// TLS 1.3: key and iv from a traffic secret.
pub fn tls13_traffic_keys(suite: CipherSuite, secret: &[u8]) -> Result<TrafficKeys, ErrorStack> {
    let aead = suite.aead();
    let mut key = [0u8; 32];
    let mut iv = [0u8; Aead::NONCE_LEN];
    hkdf_expand_label(
        suite.hash(),
        secret,
        b"key",
        &[],
        &mut key[..aead.key_len()],
    )?;
    hkdf_expand_label(suite.hash(), secret, b"iv", &[], &mut iv)?;
    let keys = TrafficKeys::new(&key[..aead.key_len()], &iv).expect("fixed sizes fit");
    key.zeroize();
    iv.zeroize();
    Ok(keys)
}

/// TLS 1.3: application_traffic_secret_N+1 from N (RFC 8446 §7.2).
pub fn tls13_next_secret(suite: CipherSuite, secret: &Secret) -> Result<Secret, ErrorStack> {
    let hash = suite.hash();
    let mut next = [0u8; 48];
    hkdf_expand_label(
        hash,
        secret.as_bytes(),
        b"traffic upd",
        &[],
        &mut next[..hash.len()],
    )?;
    let s = Secret::new(&next[..hash.len()]).expect("hash length fits");
    next.zeroize();
    Ok(s)
}

/// TLS 1.2: the client-write and server-write keys from the key block
/// PRF(master, "key expansion", server_random ‖ client_random). AEAD suites
/// have no MAC keys.
pub fn tls12_traffic_keys(
    suite: CipherSuite,
    master: &[u8],
    client_random: &[u8; 32],
    server_random: &[u8; 32],
) -> Result<(TrafficKeys, TrafficKeys), ErrorStack> {
    let k = suite.aead().key_len();
    let iv = suite.fixed_iv_len();
    let mut seed = [0u8; 64];
    seed[..32].copy_from_slice(server_random);
    seed[32..].copy_from_slice(client_random);
    let mut block = [0u8; 2 * 32 + 2 * 12];
    let block = &mut block[..2 * k + 2 * iv];
    tls12_prf(suite.hash(), master, b"key expansion", &seed, block)?;
    let client = TrafficKeys::new(&block[..k], &block[2 * k..2 * k + iv]).expect("fits");
    let server = TrafficKeys::new(&block[k..2 * k], &block[2 * k + iv..]).expect("fits");
    block.zeroize();
    Ok((client, server))
}

/// What a finished handshake leaves for the record layer: the suite, the
/// traffic secrets (TLS 1.3) or master secret and randoms (TLS 1.2), and the
/// sequence number each direction continues from.
#[derive(Clone, Debug)]
pub struct Secrets {
    /// Which side we are.
    pub side: Side,
    /// The negotiated suite (implies the version).
    pub suite: CipherSuite,
    /// The key material.
    pub material: SecretMaterial,
    /// Sequence number of the next record we send. A TLS 1.3 server has
    /// already sent its NewSessionTickets under the application key; TLS 1.2
    /// has sent Finished at 0.
    pub tx_seq: u64,
    /// Sequence number of the next record we expect.
    pub rx_seq: u64,
}

/// Key material per version.
#[derive(Clone, Debug)]
pub enum SecretMaterial {
    /// TLS 1.3 application traffic secrets (generation 0 or later).
    Tls13 {
        /// client_application_traffic_secret_N.
        client: Secret,
        /// server_application_traffic_secret_N.
        server: Secret,
    },
    /// TLS 1.2 master secret and the hello randoms.
    Tls12 {
        /// The 48-byte master secret (extended or not).
        master: Secret,
        /// ClientHello.random.
        client_random: [u8; 32],
        /// ServerHello.random.
        server_random: [u8; 32],
    },
}

/// Both directions' keys, from our point of view.
#[derive(Debug)]
pub struct DirectionalKeys {
    /// Keys for what we send.
    pub tx: TrafficKeys,
    /// Keys for what we receive.
    pub rx: TrafficKeys,
    /// TLS 1.3 secret behind `tx` (for KeyUpdate).
    pub tx_secret: Option<Secret>,
    /// TLS 1.3 secret behind `rx`.
    pub rx_secret: Option<Secret>,
}

impl Secrets {
    /// Secrets at the start of the traffic keys: both sequence numbers 0
    /// (callers that continue a connection set them).
    pub fn new(side: Side, suite: CipherSuite, material: SecretMaterial) -> Self {
        Secrets {
            side,
            suite,
            material,
            tx_seq: 0,
            rx_seq: 0,
        }
    }

    /// Derive both directions' keys, oriented for `self.side`.
    pub fn derive(&self) -> Result<DirectionalKeys, ErrorStack> {
        let (client, server, cs, ss) = match &self.material {
            SecretMaterial::Tls13 { client, server } => (
                tls13_traffic_keys(self.suite, client.as_bytes())?,
                tls13_traffic_keys(self.suite, server.as_bytes())?,
                Some(client.clone()),
                Some(server.clone()),
            ),
            SecretMaterial::Tls12 {
                master,
                client_random,
                server_random,
            } => {
                let (c, s) = tls12_traffic_keys(
                    self.suite,
                    master.as_bytes(),
                    client_random,
                    server_random,
                )?;
                (c, s, None, None)
            }
        };
        Ok(match self.side {
            Side::Client => DirectionalKeys {
                tx: client,
                rx: server,
                tx_secret: cs,
                rx_secret: ss,
            },
            Side::Server => DirectionalKeys {
                tx: server,
                rx: client,
                tx_secret: ss,
                rx_secret: cs,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    // The TLS 1.2 PRF vectors circulated on the IETF TLS list (msg03416),
    // the ones most TLS stacks test against.
    #[test]
    fn tls12_prf_sha256_vector() {
        let mut out = [0u8; 100];
        tls12_prf(
            HashAlg::Sha256,
            &h("9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35"),
            b"test label",
            &h("a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c"),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out.to_vec(),
            h("e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53 c2 aa b2 1d 07 c3 d4 95 32 9b 52 d4 e6 1e db 5a
               6b 30 17 91 e9 0d 35 c9 c9 a4 6b 4e 14 ba f9 af 0f a0 22 f7 07 7d ef 17 ab fd 37 97 c0 56 4b ab
               4f bc 91 66 6e 9d ef 9b 97 fc e3 4f 79 67 89 ba a4 80 82 d1 22 ee 42 c5 a7 2e 5a 51 10 ff f7 01
               87 34 7b 66")
        );
    }

    #[test]
    fn tls12_prf_sha384_vector() {
        let mut out = [0u8; 148];
        tls12_prf(
            HashAlg::Sha384,
            &h("b8 0b 73 3d 6c ee fc dc 71 56 6e a4 8e 55 67 df"),
            b"test label",
            &h("cd 66 5c f6 a8 44 7d d6 ff 8b 27 55 5e db 74 65"),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out.to_vec(),
            h("7b 0c 18 e9 ce d4 10 ed 18 04 f2 cf a3 4a 33 6a 1c 14 df fb 49 00 bb 5f d7 94 21 07 e8 1c 83 cd
               e9 ca 0f aa 60 be 9f e3 4f 82 b1 23 3c 91 46 a0 e5 34 cb 40 0f ed 27 00 88 4f 9d c2 36 f8 0e dd
               8b fa 96 11 44 c9 e8 d7 92 ec a7 22 a7 b3 2f c3 d4 16 d4 73 eb c2 c5 fd 4a bf da d0 5d 91 84 25
               9b 5b f8 cd 4d 90 fa 0d 31 e2 de c4 79 e4 f1 a2 60 66 f2 ee a9 a6 92 36 a3 e5 26 55 c9 e9 ae e6
               91 c8 f3 a2 68 54 30 8d 5e aa 3b e8 5e 09 90 70 3d 73 e5 6f")
        );
    }

    #[test]
    fn secret_rejects_bad_sizes_and_hides_bytes() {
        assert!(Secret::new(&[]).is_none());
        assert!(Secret::new(&[1; 49]).is_none());
        let s = Secret::new(&[0xAB; 32]).unwrap();
        assert_eq!(s.as_bytes(), &[0xAB; 32]);
        assert!(!format!("{s:?}").contains("171"), "{s:?}");
        assert!(!format!("{s:?}").to_lowercase().contains("ab"));
    }

    #[test]
    fn tls12_key_block_layout() {
        // The key block is client key, server key, client iv, server iv;
        // check the split against one PRF call over the same inputs.
        let master = [7u8; 48];
        let (cr, sr) = ([1u8; 32], [2u8; 32]);
        for suite in [
            CipherSuite::EcdheEcdsaAes128GcmSha256,
            CipherSuite::EcdheRsaAes256GcmSha384,
            CipherSuite::EcdheEcdsaChacha20Poly1305,
        ] {
            let (c, s) = tls12_traffic_keys(suite, &master, &cr, &sr).unwrap();
            let (k, iv) = (suite.aead().key_len(), suite.fixed_iv_len());
            let mut block = vec![0u8; 2 * k + 2 * iv];
            let mut seed = sr.to_vec();
            seed.extend_from_slice(&cr);
            tls12_prf(suite.hash(), &master, b"key expansion", &seed, &mut block).unwrap();
            assert_eq!(c.key(), &block[..k]);
            assert_eq!(s.key(), &block[k..2 * k]);
            assert_eq!(c.iv(), &block[2 * k..2 * k + iv]);
            assert_eq!(s.iv(), &block[2 * k + iv..]);
            assert!(c.fits(suite) && s.fits(suite));
        }
    }
}

//! Test keys and tokens, made with OpenSSL and jsonwebtoken at test time.
#![allow(dead_code)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;

/// A signing key with its public halves.
pub struct TestKey {
    pub pkey: PKey<Private>,
    pub kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl TestKey {
    pub fn new(kind: Kind) -> Self {
        let pkey = match kind {
            Kind::Rsa => PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
            Kind::P256 => PKey::from_ec_key(
                EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
            )
            .unwrap(),
            Kind::P384 => PKey::from_ec_key(
                EcKey::generate(&EcGroup::from_curve_name(Nid::SECP384R1).unwrap()).unwrap(),
            )
            .unwrap(),
            Kind::Ed25519 => PKey::generate_ed25519().unwrap(),
        };
        Self { pkey, kind }
    }

    pub fn public_pem(&self) -> Vec<u8> {
        self.pkey.public_key_to_pem().unwrap()
    }

    fn encoding_key(&self) -> EncodingKey {
        let pem = self.pkey.private_key_to_pem_pkcs8().unwrap();
        match self.kind {
            Kind::Rsa => EncodingKey::from_rsa_pem(&pem).unwrap(),
            Kind::P256 | Kind::P384 => EncodingKey::from_ec_pem(&pem).unwrap(),
            Kind::Ed25519 => EncodingKey::from_ed_pem(&pem).unwrap(),
        }
    }

    /// A signed token.
    pub fn sign(&self, alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, claims, &self.encoding_key()).unwrap()
    }

    /// This key as a JWK (public part).
    pub fn jwk(&self, kid: &str, alg: Option<&str>) -> serde_json::Value {
        let mut v = match self.kind {
            Kind::Rsa => {
                let rsa = self.pkey.rsa().unwrap();
                serde_json::json!({"kty":"RSA","n":B64.encode(rsa.n().to_vec()),"e":B64.encode(rsa.e().to_vec())})
            }
            Kind::P256 | Kind::P384 => {
                let ec = self.pkey.ec_key().unwrap();
                let mut ctx = openssl::bn::BigNumContext::new().unwrap();
                let mut x = openssl::bn::BigNum::new().unwrap();
                let mut y = openssl::bn::BigNum::new().unwrap();
                ec.public_key()
                    .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)
                    .unwrap();
                let (crv, len) = if self.kind == Kind::P256 {
                    ("P-256", 32)
                } else {
                    ("P-384", 48)
                };
                serde_json::json!({"kty":"EC","crv":crv,
                    "x":B64.encode(x.to_vec_padded(len).unwrap()),
                    "y":B64.encode(y.to_vec_padded(len).unwrap())})
            }
            Kind::Ed25519 => serde_json::json!({"kty":"OKP","crv":"Ed25519",
                "x":B64.encode(self.pkey.raw_public_key().unwrap())}),
        };
        v["kid"] = kid.into();
        v["use"] = "sig".into();
        if let Some(a) = alg {
            v["alg"] = a.into();
        }
        v
    }
}

pub fn jwks(keys: &[serde_json::Value]) -> Vec<u8> {
    serde_json::json!({ "keys": keys }).to_string().into_bytes()
}

pub fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

//! A self-signed certificate for demos and tests (EC P-256, SAN for
//! 127.0.0.1 and localhost). Production deployments pass their own PEMs.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// OpenSSL refused a step.
    #[error("certificate: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn write(path: &Path, pem: &[u8]) -> Result<(), CertError> {
    std::fs::write(path, pem).map_err(|source| CertError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Write `cert` and `key` PEM files for a certificate valid `days` days.
pub fn write_self_signed(cert: &Path, key: &Path, days: u32) -> Result<(), CertError> {
    write_self_signed_for(cert, key, days, &[])
}

/// [`write_self_signed`], the certificate also naming the addresses `ips`.
pub fn write_self_signed_for(
    cert: &Path,
    key: &Path,
    days: u32,
    ips: &[std::net::IpAddr],
) -> Result<(), CertError> {
    let (x509, pkey) = self_signed_for(days, ips)?;
    write(cert, &x509.to_pem()?)?;
    write(key, &pkey.private_key_to_pem_pkcs8()?)?;
    Ok(())
}

/// A fresh self-signed certificate valid `days` days and its key, in
/// memory (what [`write_self_signed`] writes).
pub fn self_signed(days: u32) -> Result<(X509, PKey<Private>), CertError> {
    self_signed_for(days, &[])
}

/// [`self_signed`], naming the addresses `ips` as well as 127.0.0.1 and
/// localhost.
pub fn self_signed_for(
    days: u32,
    ips: &[std::net::IpAddr],
) -> Result<(X509, PKey<Private>), CertError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let pkey = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "localhost")?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&pkey)?;
    let not_before = Asn1Time::days_from_now(0)?;
    let not_after = Asn1Time::days_from_now(days)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    let mut san = SubjectAlternativeName::new();
    san.ip("127.0.0.1").dns("localhost");
    for ip in ips {
        san.ip(&ip.to_string());
    }
    let san = san.build(&b.x509v3_context(None, None))?;
    b.append_extension(san)?;
    b.sign(&pkey, MessageDigest::sha256())?;
    Ok((b.build(), pkey))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_into_a_tls_context() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        write_self_signed(&c, &k, 1).unwrap();
        let mut b = crate::server_builder(&c, &k).expect("cert and key load and match");
        crate::alpn_http11(&mut b);
        let ip: std::net::IpAddr = "10.77.250.1".parse().unwrap();
        let (x, _) = self_signed_for(1, &[ip]).unwrap();
        let names: Vec<String> = x
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.ipaddress().map(|b| format!("{b:?}")))
            .collect();
        assert_eq!(names, ["[127, 0, 0, 1]", "[10, 77, 250, 1]"]);
        let e = write_self_signed(&dir.path().join("no/such/dir/c.pem"), &k, 1).unwrap_err();
        assert!(e.to_string().contains("no/such/dir/c.pem"), "{e}");
    }
}

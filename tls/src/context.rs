//! Server TLS context set-up shared by both data paths: the certificate
//! chain and key (loaded from PEM files and checked to match) and HTTP/1.1
//! as the only ALPN protocol. Each path adds its own options (kernel mode:
//! kTLS; DPDK mode: the memory-BIO handshake of [`crate::HandshakeConfig`]).

use std::path::Path;

use openssl::ssl::{AlpnError, SslContextBuilder, SslFiletype, SslMethod};

/// Why a server context could not be built. Each message names the file.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct ContextError(String);

/// A server context builder holding the PEM certificate chain `cert` and
/// private key `key`, checked to match.
pub fn server_builder(cert: &Path, key: &Path) -> Result<SslContextBuilder, ContextError> {
    let tls = |what: &str, e: openssl::error::ErrorStack| ContextError(format!("{what}: {e}"));
    for (what, path) in [("certificate", cert), ("private key", key)] {
        std::fs::File::open(path)
            .map_err(|e| ContextError(format!("cannot read {what} {}: {e}", path.display())))?;
    }
    let mut b = SslContextBuilder::new(SslMethod::tls_server()).map_err(|e| tls("context", e))?;
    b.set_certificate_chain_file(cert)
        .map_err(|e| tls(&format!("certificate {}", cert.display()), e))?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(|e| tls(&format!("private key {}", key.display()), e))?;
    b.check_private_key()
        .map_err(|e| tls("certificate and key do not match", e))?;
    Ok(b)
}

/// Offer HTTP/1.1 as the only ALPN protocol (a client that offers only
/// others gets no ALPN answer, not a failed handshake).
pub fn alpn_http11(b: &mut SslContextBuilder) {
    b.set_alpn_select_callback(|_, client| {
        openssl::ssl::select_next_proto(b"\x08http/1.1", client).ok_or(AlpnError::NOACK)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named() {
        let Err(e) = server_builder(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        ) else {
            panic!("a missing certificate must fail");
        };
        let e = e.to_string();
        assert!(
            e.contains("cannot read certificate /nonexistent/c.pem"),
            "{e}"
        );
    }
}

//! Kernel TLS availability, probed once at start.
//!
//! OpenSSL tries kTLS on its own (`SSL_OP_ENABLE_KTLS`) and falls back
//! silently. Operators need to know which path they got and why, so the
//! data path probes the kernel directly: `setsockopt(TCP_ULP, "tls")` on a
//! connected loopback socket is exactly the call OpenSSL would make. On a
//! kernel without `CONFIG_TLS` it fails with ENOENT.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

/// Result of the kTLS probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtlsSupport {
    /// Whether the kernel accepted the `tls` upper-layer protocol.
    pub available: bool,
    /// Human-readable explanation (always set).
    pub reason: String,
    /// The errno of the failed setsockopt, if any.
    pub errno: Option<i32>,
}

/// Attach the `tls` ULP to a connected TCP socket.
fn set_tls_ulp(sock: &TcpStream) -> io::Result<()> {
    const ULP: &[u8] = b"tls";
    // SAFETY: the fd is a valid open TCP socket owned by `sock`; the option
    // value points to 3 readable bytes and its length is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            ULP.as_ptr().cast(),
            ULP.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Probe whether this kernel can do kTLS.
pub fn probe() -> KtlsSupport {
    let attempt = || -> io::Result<()> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (_server, _) = listener.accept()?;
        set_tls_ulp(&client)
    };
    match attempt() {
        Ok(()) => KtlsSupport {
            available: true,
            reason: "kernel accepted TCP_ULP \"tls\"".into(),
            errno: None,
        },
        Err(e) => {
            let errno = e.raw_os_error();
            let why = match errno {
                Some(libc::ENOENT) => {
                    "setsockopt(TCP_ULP, \"tls\") failed with ENOENT: the kernel has no tls module (CONFIG_TLS unset)"
                        .to_string()
                }
                Some(libc::ENOPROTOOPT) => {
                    "setsockopt(TCP_ULP) failed with ENOPROTOOPT: kernel too old for ULPs".to_string()
                }
                _ => format!("setsockopt(TCP_ULP, \"tls\") failed: {e}"),
            };
            KtlsSupport {
                available: false,
                reason: why,
                errno,
            }
        }
    }
}

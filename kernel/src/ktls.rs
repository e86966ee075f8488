//! Kernel TLS availability, probed once at start.
//!
//! OpenSSL tries kTLS on its own (`SSL_OP_ENABLE_KTLS`) and falls back
//! silently. Operators need to know which path they got and why, so the
//! data path probes the kernel directly: `setsockopt(TCP_ULP, "tls")` on a
//! connected loopback socket is exactly the call OpenSSL would make. On a
//! kernel without `CONFIG_TLS` it fails with ENOENT.
//!
//! [`install_carried`] installs kTLS from a session's carried state (a
//! connection moved in from the DPDK path, whose handshake OpenSSL never
//! saw on this socket): `TLS_TX`/`TLS_RX` from the current traffic keys
//! and sequence numbers, read back with `getsockopt(SOL_TLS)`. It is
//! tested up to the syscall (this machine has no kTLS: the ULP fails with
//! ENOENT) and has never run on a kernel with kTLS; the live mode switch
//! does not call it yet (moved connections keep our record layer).

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use dpuproxy_tls::session::SessionState;
use dpuproxy_tls::{CryptoInfo, Direction, Limits, RecordLayer};

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
fn set_tls_ulp(sock: &impl AsRawFd) -> io::Result<()> {
    setsockopt_bytes(sock.as_raw_fd(), libc::SOL_TCP, libc::TCP_ULP, b"tls")
}

/// `setsockopt(fd, level, opt, value)`.
fn setsockopt_bytes(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket for the call (the callers borrow its
    // owner); the option value points to `value.len()` readable bytes and
    // that length is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(fd, level, opt)` into `buf`: how many bytes came.
fn getsockopt_bytes(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `fd` is an open socket for the call; `buf` is writable for
    // `len` bytes and `len` is a valid in/out length.
    let rc = unsafe { libc::getsockopt(fd, level, opt, buf.as_mut_ptr().cast(), &mut len) };
    if rc == 0 {
        Ok(len as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Why kTLS was not installed from a carried state.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The state is not at a record boundary in both directions (bytes of
    /// a record half received, sealed records not yet written, a control
    /// record queued, a handshake message in part): the kernel can only
    /// take over between whole records. Write out or finish those first.
    #[error("not at a record boundary: {0}")]
    NotAtRecordBoundary(&'static str),
    /// The carried TLS state itself is unusable.
    #[error("carried TLS state: {0}")]
    State(String),
    /// The kernel has no kTLS (`TCP_ULP` "tls" failed).
    #[error("kTLS unavailable: setsockopt(TCP_ULP, \"tls\") failed: {0}")]
    Unavailable(io::Error),
    /// `setsockopt(SOL_TLS, TLS_TX/TLS_RX)` failed.
    #[error("setsockopt(SOL_TLS, {which}) failed: {err}")]
    Install {
        /// `TLS_TX` or `TLS_RX`.
        which: &'static str,
        /// The error.
        err: io::Error,
    },
    /// What `getsockopt(SOL_TLS)` read back differs from what was set.
    #[error("getsockopt(SOL_TLS, {0}) read back other parameters than were set")]
    ReadBack(&'static str),
}

/// The `crypto_info` of each direction ([`Direction::Tx`] first) for a
/// carried session: its current traffic keys (after any KeyUpdate) and the
/// next record sequence number of each way.
pub fn carried_crypto_info(
    state: &SessionState,
    limits: Limits,
) -> Result<(CryptoInfo, CryptoInfo), InstallError> {
    let rl = RecordLayer::resume(&state.records, limits)
        .map_err(|e| InstallError::State(e.to_string()))?;
    Ok((
        rl.ktls_crypto_info(Direction::Tx),
        rl.ktls_crypto_info(Direction::Rx),
    ))
}

/// Install kTLS on `sock` (an established, restored connection) from the
/// carried `state`, and check it by reading both directions back.
/// Untested on a kernel that has kTLS (see the module docs).
pub fn install_carried(
    sock: &impl AsRawFd,
    state: &SessionState,
    limits: Limits,
) -> Result<(), InstallError> {
    let boundary = if !state.inbuf.is_empty() {
        Some("part of a record was received")
    } else if !state.outbuf.is_empty() {
        Some("sealed records are not written yet")
    } else if !state.records.pending.is_empty() {
        Some("a control record is queued")
    } else if !state.records.partial_handshake.is_empty() {
        Some("a handshake message arrived in part")
    } else {
        None
    };
    if let Some(why) = boundary {
        return Err(InstallError::NotAtRecordBoundary(why));
    }
    let (tx, rx) = carried_crypto_info(state, limits)?;
    set_tls_ulp(sock).map_err(InstallError::Unavailable)?;
    let fd = sock.as_raw_fd();
    for (which, opt, info) in [("TLS_TX", TLS_TX, &tx), ("TLS_RX", TLS_RX, &rx)] {
        setsockopt_bytes(fd, libc::SOL_TLS, opt, info.as_bytes())
            .map_err(|err| InstallError::Install { which, err })?;
        let mut back = vec![0u8; info.as_bytes().len()];
        let n = getsockopt_bytes(fd, libc::SOL_TLS, opt, &mut back)
            .map_err(|err| InstallError::Install { which, err })?;
        if back[..n] != *info.as_bytes() {
            return Err(InstallError::ReadBack(which));
        }
    }
    Ok(())
}

/// `TLS_TX` (linux/tls.h).
const TLS_TX: libc::c_int = 1;
/// `TLS_RX` (linux/tls.h).
const TLS_RX: libc::c_int = 2;

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

#[cfg(test)]
mod tests {
    use super::*;
    use dpuproxy_tls::keys::tls13_traffic_keys;
    use dpuproxy_tls::{CipherSuite, Secret, SecretMaterial, Secrets, Side};

    const SUITE: CipherSuite = CipherSuite::Tls13Aes128GcmSha256;

    /// A server session's carried state after `tx_seq` records out and
    /// `rx_seq` in.
    fn carried(tx_seq: u64, rx_seq: u64) -> SessionState {
        let material = SecretMaterial::Tls13 {
            client: Secret::new(&[0x11; 32]).unwrap(),
            server: Secret::new(&[0x22; 32]).unwrap(),
        };
        let mut secrets = Secrets::new(Side::Server, SUITE, material);
        secrets.tx_seq = tx_seq;
        secrets.rx_seq = rx_seq;
        let rl = RecordLayer::new(&secrets, Limits::default()).unwrap();
        SessionState {
            records: rl.snapshot().unwrap(),
            inbuf: Vec::new(),
            outbuf: Vec::new(),
        }
    }

    #[test]
    fn carried_keys_and_sequence_numbers_become_the_crypto_info() {
        let (tx, rx) = carried_crypto_info(&carried(7, 0x0102), Limits::default()).unwrap();
        // tls12_crypto_info_aes_gcm_128: version 0x0304 and cipher 51
        // (little-endian u16s), iv[4..12], key, salt = iv[0..4], rec_seq.
        let server = tls13_traffic_keys(SUITE, &[0x22; 32]).unwrap();
        let client = tls13_traffic_keys(SUITE, &[0x11; 32]).unwrap();
        for (info, keys, seq) in [(&tx, &server, 7u64), (&rx, &client, 0x0102)] {
            let b = info.as_bytes();
            assert_eq!(b.len(), 40);
            assert_eq!(&b[..4], &[0x04, 0x03, 51, 0]);
            assert_eq!(&b[4..12], &keys.iv()[4..]);
            assert_eq!(&b[12..28], keys.key());
            assert_eq!(&b[28..32], &keys.iv()[..4]);
            assert_eq!(&b[32..], &seq.to_be_bytes());
        }
    }

    fn connected_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (c, l.accept().unwrap().0)
    }

    #[test]
    fn install_waits_for_a_record_boundary() {
        let (sock, _peer) = connected_pair();
        let mut state = carried(1, 1);
        state.inbuf = vec![0x17, 0x03];
        let e = install_carried(&sock, &state, Limits::default()).unwrap_err();
        assert!(matches!(e, InstallError::NotAtRecordBoundary(_)), "{e}");
        let mut state = carried(1, 1);
        state.outbuf = vec![0x17];
        let e = install_carried(&sock, &state, Limits::default()).unwrap_err();
        assert!(e.to_string().contains("not written yet"), "{e}");
    }

    #[test]
    fn install_on_this_kernel_does_what_the_probe_says() {
        let (sock, _peer) = connected_pair();
        let probe = probe();
        match install_carried(&sock, &carried(3, 4), Limits::default()) {
            Ok(()) => assert!(probe.available, "installed where the probe found no kTLS"),
            Err(InstallError::Unavailable(e)) => {
                assert!(!probe.available, "the probe found kTLS: {}", probe.reason);
                assert_eq!(e.raw_os_error(), probe.errno, "{e}");
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
}

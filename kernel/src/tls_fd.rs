//! OpenSSL driven directly on a socket fd (`SSL_set_fd`).
//!
//! This is the only way OpenSSL can switch a connection to kernel TLS: a
//! `SslStream` over a Rust stream has no fd for OpenSSL to hand to the
//! kernel. With `SSL_OP_ENABLE_KTLS` set on the context, OpenSSL tries
//! `setsockopt(TCP_ULP, "tls")` after the handshake and, when the kernel
//! accepts, moves record processing into the kernel; `BIO_get_ktls_send`
//! and `BIO_get_ktls_recv` then report it. When the kernel refuses, OpenSSL
//! keeps doing records in userspace, which is the fallback we report.
//!
//! All `unsafe` of the kernel data path lives in this module and [`crate::ktls`].

use std::ffi::{c_int, c_long, c_void};
use std::io;
use std::os::fd::AsRawFd;

use foreign_types_shared::ForeignTypeRef;
use mio::net::TcpStream;
use openssl::error::ErrorStack;
use openssl::ssl::{Ssl, SslContext, SslRef};

/// `SSL_OP_ENABLE_KTLS` (OpenSSL 3.0 `ssl.h`: `SSL_OP_BIT(3)`).
pub const SSL_OP_ENABLE_KTLS: u64 = 0x8;
/// `BIO_CTRL_GET_KTLS_SEND` (`bio.h`).
const BIO_CTRL_GET_KTLS_SEND: c_int = 73;
/// `BIO_CTRL_GET_KTLS_RECV` (`bio.h`).
const BIO_CTRL_GET_KTLS_RECV: c_int = 76;
/// `SSL_R_UNEXPECTED_EOF_WHILE_READING` (OpenSSL 3 `sslerr.h`): the peer
/// closed TCP without close_notify.
const SSL_R_UNEXPECTED_EOF_WHILE_READING: c_int = 294;

unsafe extern "C" {
    // Not bound by openssl-sys; provided by libssl, which openssl-sys links.
    fn SSL_set_fd(ssl: *mut openssl_sys::SSL, fd: c_int) -> c_int;
}

/// How records are processed on one connection after its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPath {
    /// The kernel encrypts what we send.
    pub ktls_tx: bool,
    /// The kernel decrypts what we receive.
    pub ktls_rx: bool,
}

impl RecordPath {
    /// Short label for logs: `ktls-tx+rx`, `ktls-tx`, `ktls-rx` or `openssl`.
    pub fn label(self) -> &'static str {
        match (self.ktls_tx, self.ktls_rx) {
            (true, true) => "ktls-tx+rx",
            (true, false) => "ktls-tx",
            (false, true) => "ktls-rx",
            (false, false) => "openssl",
        }
    }
}

/// Outcome of one handshake step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Finished.
    Done,
    /// Needs the socket to become readable or writable again.
    WouldBlock,
}

/// A server-side TLS connection over a non-blocking kernel socket.
///
/// Field order matters: `ssl` is dropped (SSL_free) before `stream` closes
/// the fd that OpenSSL was given.
pub struct FdTls {
    ssl: Ssl,
    stream: TcpStream,
}

impl std::fmt::Debug for FdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdTls")
            .field("fd", &self.stream.as_raw_fd())
            .finish()
    }
}

fn ssl_error(ssl: &SslRef, rc: c_int, what: &str) -> io::Error {
    // SAFETY: `ssl` is a live SSL object; SSL_get_error only reads its state
    // and the thread's error queue.
    let code = unsafe { openssl_sys::SSL_get_error(ssl.as_ptr(), rc) };
    match code {
        openssl_sys::SSL_ERROR_WANT_READ | openssl_sys::SSL_ERROR_WANT_WRITE => {
            io::ErrorKind::WouldBlock.into()
        }
        openssl_sys::SSL_ERROR_ZERO_RETURN => {
            io::Error::new(io::ErrorKind::UnexpectedEof, "TLS close_notify")
        }
        openssl_sys::SSL_ERROR_SYSCALL => {
            let os = io::Error::last_os_error();
            let stack = ErrorStack::get();
            if !stack.errors().is_empty() {
                io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {stack}"))
            } else if os.raw_os_error().unwrap_or(0) != 0 {
                os
            } else {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed without close_notify",
                )
            }
        }
        _ => {
            let stack = ErrorStack::get();
            // OpenSSL 3 reports a TCP close without close_notify as an SSL
            // error; it is an end of stream (the L7 core tells a truncated
            // request from a whole one), not a TLS failure.
            if stack
                .errors()
                .iter()
                .any(|e| e.reason_code() == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            {
                return io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed without close_notify",
                );
            }
            io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {stack}"))
        }
    }
}

fn clear_error_queue() {
    // SAFETY: ERR_clear_error only touches this thread's OpenSSL error queue.
    unsafe { openssl_sys::ERR_clear_error() };
}

impl FdTls {
    /// Wrap an accepted socket for a server-side handshake.
    pub fn accept(ctx: &SslContext, stream: TcpStream) -> Result<Self, ErrorStack> {
        let ssl = Ssl::new(ctx)?;
        // SAFETY: `ssl` is a freshly created, valid SSL object and the fd
        // belongs to `stream`, which this struct keeps open for as long as
        // `ssl` lives (see the field order). SSL_set_fd creates a socket BIO
        // with BIO_NOCLOSE, so OpenSSL never closes the fd itself.
        let rc = unsafe { SSL_set_fd(ssl.as_ptr(), stream.as_raw_fd()) };
        if rc != 1 {
            return Err(ErrorStack::get());
        }
        // SAFETY: valid SSL object; sets server mode before any I/O.
        unsafe { openssl_sys::SSL_set_accept_state(ssl.as_ptr()) };
        Ok(Self { ssl, stream })
    }

    /// Register the socket with a mio registry. The socket itself is never
    /// handed out mutably: replacing it would leave OpenSSL with a dead fd.
    pub fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interest: mio::Interest,
    ) -> io::Result<()> {
        registry.register(&mut self.stream, token, interest)
    }

    /// Remove the socket from a mio registry.
    pub fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        registry.deregister(&mut self.stream)
    }

    /// Stop sending (TCP FIN) after close_notify, keeping the read side
    /// open so that a lingering close can drain what the client still sends.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Make the close that follows (the drop) abortive: TCP RST, queued
    /// bytes discarded, no close_notify (nothing is sent on drop).
    pub fn set_abortive_close(&self) {
        set_linger_zero(&self.stream);
    }

    /// Whether the peer sent anything yet (`Err`: it closed, or the socket
    /// failed, before sending a byte).
    pub fn has_input(&self) -> Result<bool, ()> {
        peer_sent_bytes(&self.stream)
    }

    /// One non-blocking handshake step.
    pub fn handshake(&mut self) -> io::Result<Handshake> {
        clear_error_queue();
        // SAFETY: valid SSL object bound to an open non-blocking fd.
        let rc = unsafe { openssl_sys::SSL_accept(self.ssl.as_ptr()) };
        if rc == 1 {
            return Ok(Handshake::Done);
        }
        let e = ssl_error(&self.ssl, rc, "TLS handshake");
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(Handshake::WouldBlock)
        } else {
            Err(e)
        }
    }

    /// Read plaintext. `Ok(0)` is the end of the stream (close_notify, or a
    /// TCP FIN without it); `WouldBlock` means wait for the socket; an
    /// `InvalidData` error is a TLS protocol error (OpenSSL sent an alert),
    /// any other a broken connection.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        clear_error_queue();
        let mut n = 0usize;
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes and `n` is
        // a valid out-pointer; the SSL object is live.
        let rc = unsafe {
            openssl_sys::SSL_read_ex(
                self.ssl.as_ptr(),
                buf.as_mut_ptr().cast::<c_void>(),
                buf.len(),
                &mut n,
            )
        };
        if rc == 1 {
            return Ok(n);
        }
        let e = ssl_error(&self.ssl, rc, "TLS read");
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return Ok(0);
        }
        Err(e)
    }

    /// Write plaintext; returns how much was taken (partial writes are
    /// enabled on the context). `WouldBlock` means wait for the socket.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        clear_error_queue();
        let mut n = 0usize;
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes and `n` is a
        // valid out-pointer. The context sets ACCEPT_MOVING_WRITE_BUFFER, so
        // a retry after WANT_WRITE may pass a different buffer address.
        let rc = unsafe {
            openssl_sys::SSL_write_ex(
                self.ssl.as_ptr(),
                buf.as_ptr().cast::<c_void>(),
                buf.len(),
                &mut n,
            )
        };
        if rc == 1 {
            return Ok(n);
        }
        Err(ssl_error(&self.ssl, rc, "TLS write"))
    }

    /// Send close_notify (best effort, non-blocking).
    pub fn shutdown(&mut self) {
        clear_error_queue();
        // SAFETY: valid SSL object; SSL_shutdown on a non-blocking socket
        // either queues close_notify or reports WANT_WRITE, both fine here.
        let _ = unsafe { openssl_sys::SSL_shutdown(self.ssl.as_ptr()) };
        clear_error_queue();
    }

    /// Whether kTLS carries each direction (meaningful after the handshake).
    pub fn record_path(&self) -> RecordPath {
        // SAFETY: SSL_get_wbio/rbio return borrowed BIO pointers owned by the
        // live SSL object (or null); BIO_ctrl with GET_KTLS_* only reads BIO
        // flags and accepts a null parg.
        unsafe {
            let w = openssl_sys::SSL_get_wbio(self.ssl.as_ptr());
            let r = openssl_sys::SSL_get_rbio(self.ssl.as_ptr());
            let send = !w.is_null()
                && openssl_sys::BIO_ctrl(
                    w,
                    BIO_CTRL_GET_KTLS_SEND,
                    0 as c_long,
                    std::ptr::null_mut(),
                ) != 0;
            let recv = !r.is_null()
                && openssl_sys::BIO_ctrl(
                    r,
                    BIO_CTRL_GET_KTLS_RECV,
                    0 as c_long,
                    std::ptr::null_mut(),
                ) != 0;
            RecordPath {
                ktls_tx: send,
                ktls_rx: recv,
            }
        }
    }

    /// Negotiated protocol and cipher, for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} {}",
            self.ssl.version_str(),
            self.ssl
                .current_cipher()
                .map(|c| c.name())
                .unwrap_or("no-cipher")
        )
    }
}

/// Whether the peer of a fresh connection sent anything yet, by one
/// `MSG_PEEK` (`Err`: it closed, or the socket failed, before sending a
/// byte).
pub(crate) fn peer_sent_bytes(stream: &TcpStream) -> Result<bool, ()> {
    let mut probe = [0u8; 1];
    match stream.peek(&mut probe) {
        Ok(0) => Err(()),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(_) => Err(()),
    }
}

/// `SO_LINGER` {on, 0 s}: the next close of the socket sends RST.
pub(crate) fn set_linger_zero(socket: &impl AsRawFd) {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is a valid open socket owned by the caller; the option
    // value points to a `linger` struct of exactly the size passed.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const lg).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

//! A client whose TLS records are ours on a kernel socket: OpenSSL runs
//! only the handshake, over memory buffers ([`ServerSession`]), and our
//! record layer seals and opens every record, as in DPDK mode. This is how
//! kernel mode carries a connection whose TLS it did not handshake (one
//! moved from the DPDK path; there is no kTLS here to install its keys in),
//! and what `[tls] records = "ours"` selects for every kernel-mode
//! connection instead of OpenSSL's `SSL_read`/`SSL_write`.
//!
//! Contract: the same non-blocking, edge-triggered behaviour as [`FdTls`]
//! towards the transport. Sealed bytes the socket does not take wait in the
//! session (bounded, see [`MAX_TLS_BUFFER`]) and go out on `flush`; after
//! close_notify is out, the write side is shut (TCP FIN) and the read side
//! stays open for a lingering close.
//!
//! [`FdTls`]: crate::tls_fd::FdTls

use std::io::{self, Read, Write};

use dpuproxy_driver::{Failure, HandshakeStep, Io};
use dpuproxy_tls::session::{MAX_TLS_BUFFER, SessionState, Step};
use dpuproxy_tls::{HandshakeConfig, ServerSession};
use mio::net::TcpStream;

use crate::tls_fd::peer_sent_bytes;

/// A kernel socket with our TLS session on it.
#[derive(Debug)]
pub(crate) struct FdRecords {
    stream: TcpStream,
    config: Option<HandshakeConfig>,
    /// Made when the client's first bytes arrive (a connection that has
    /// sent nothing costs no OpenSSL state), or carried in by a move.
    session: Option<ServerSession>,
    /// close_notify is queued: shut the write side once it is out.
    fin_pending: bool,
}

impl FdRecords {
    /// An accepted socket about to handshake with `config`.
    pub(crate) fn accept(stream: TcpStream, config: HandshakeConfig) -> Self {
        Self {
            stream,
            config: Some(config),
            session: None,
            fin_pending: false,
        }
    }

    /// A socket continuing `session`, resumed from `state` (a moved
    /// connection).
    pub(crate) fn with_session(
        stream: TcpStream,
        session: ServerSession,
        state: &SessionState,
    ) -> Self {
        Self {
            stream,
            config: None,
            session: Some(session),
            // Moved after close_notify was queued: the FIN still follows it.
            fin_pending: state.records.closed_for_writing,
        }
    }

    pub(crate) fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Its socket, the session dropped.
    pub(crate) fn into_stream(self) -> TcpStream {
        self.stream
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The session's state, once established (for a move).
    pub(crate) fn snapshot(&self) -> Option<SessionState> {
        self.session.as_ref()?.snapshot()
    }

    /// Whether the peer sent anything yet (`Err`: it closed, or the socket
    /// failed, before sending a byte).
    pub(crate) fn has_input(&self) -> Result<bool, ()> {
        if self.session.is_some() {
            return Ok(true);
        }
        peer_sent_bytes(&self.stream)
    }

    fn session(&mut self) -> Option<&mut ServerSession> {
        if self.session.is_none() {
            let config = self.config.as_ref()?;
            match ServerSession::new(config) {
                Ok(s) => self.session = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create TLS state");
                    return None;
                }
            }
        }
        self.session.as_mut()
    }

    /// Read the socket once into the session's input: bytes read, and
    /// whether the peer ended TCP.
    fn pull(&mut self, scratch: &mut [u8]) -> Result<(usize, bool), ()> {
        let Some(session) = self.session.as_mut() else {
            return Err(());
        };
        if session.inbuf_full() {
            return Ok((0, false));
        }
        loop {
            return match self.stream.read(scratch) {
                Ok(0) => Ok((0, true)),
                Ok(n) => {
                    session.inbuf().extend_from_slice(&scratch[..n]);
                    Ok((n, false))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((0, false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => Err(()),
            };
        }
    }

    /// Write what is sealed, as far as the socket takes it.
    pub(crate) fn flush(&mut self) -> Io {
        let Some(session) = self.session.as_mut() else {
            return Io::Done(0);
        };
        let mut moved = 0;
        while session.out_len() > 0 {
            match self.stream.write(session.pending_out()) {
                Ok(0) => return Io::Failed(Failure::Broken),
                Ok(n) => {
                    session.consume_out(n);
                    moved += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if moved > 0 {
                        Io::Done(moved)
                    } else {
                        Io::WouldBlock
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Io::Failed(Failure::Broken),
            }
        }
        if self.fin_pending {
            self.fin_pending = false;
            self.shutdown_write();
        }
        Io::Done(moved)
    }

    /// Nothing sealed waits for the socket.
    pub(crate) fn flushed(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.out_len() == 0)
    }

    /// One handshake step: everything the socket holds is fed.
    pub(crate) fn handshake(&mut self, scratch: &mut [u8]) -> HandshakeStep {
        if self.session().is_none() {
            return HandshakeStep::Failed;
        }
        loop {
            let (n, eof) = match self.pull(scratch) {
                Ok(r) => r,
                Err(()) => return HandshakeStep::Failed,
            };
            let step = self
                .session
                .as_mut()
                .map_or(Step::Failed, |s| s.handshake());
            if let Io::Failed(_) = self.flush() {
                return HandshakeStep::Failed;
            }
            match step {
                Step::Done => return HandshakeStep::Done,
                Step::Failed => return HandshakeStep::Failed,
                Step::Pending if eof => return HandshakeStep::Failed,
                Step::Pending if n == 0 => return HandshakeStep::Pending,
                Step::Pending => {}
            }
        }
    }

    /// Read and open what the client sent, handing plaintext to `sink`.
    pub(crate) fn read(&mut self, scratch: &mut [u8], sink: &mut dyn FnMut(&[u8])) -> Io {
        let (pulled, tcp_end) = match self.pull(scratch) {
            Ok(r) => r,
            Err(()) => return Io::Failed(Failure::Broken),
        };
        let Some(session) = self.session.as_mut() else {
            return Io::Failed(Failure::Broken);
        };
        let opened = session.open(sink);
        // KeyUpdate answers and alerts; a full socket keeps them queued.
        if let Io::Failed(f) = self.flush() {
            return Io::Failed(f);
        }
        if opened.error {
            return Io::Failed(Failure::Tls);
        }
        if opened.close_notify || (tcp_end && opened.consumed == 0) {
            return Io::Eof;
        }
        match pulled.max(opened.consumed) {
            0 => Io::WouldBlock,
            n => Io::Done(n),
        }
    }

    /// Seal `data` and send what the socket takes.
    pub(crate) fn write(&mut self, data: &[u8]) -> Io {
        let Some(session) = self.session.as_mut() else {
            return Io::Failed(Failure::Broken);
        };
        if session.out_len() >= MAX_TLS_BUFFER {
            if let Io::Failed(f) = self.flush() {
                return Io::Failed(f);
            }
            if self
                .session
                .as_ref()
                .is_none_or(|s| s.out_len() >= MAX_TLS_BUFFER)
            {
                return Io::WouldBlock;
            }
        }
        let Some(session) = self.session.as_mut() else {
            return Io::Failed(Failure::Broken);
        };
        if let Err(e) = session.seal(data) {
            tracing::debug!(error = %e, "TLS seal failed");
            return Io::Failed(Failure::Broken);
        }
        match self.flush() {
            Io::Failed(f) => Io::Failed(f),
            _ => Io::Done(data.len()),
        }
    }

    /// Queue close_notify; the FIN follows once it is out.
    pub(crate) fn shutdown(&mut self) {
        if let Some(s) = self.session.as_mut() {
            s.close_notify();
        }
        self.fin_pending = true;
        let _ = self.flush();
    }

    /// Stop sending (TCP FIN), keeping the read side open.
    pub(crate) fn shutdown_write(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// TLS bytes held outside the socket buffers.
    pub(crate) fn buffered(&self) -> usize {
        self.session.as_ref().map_or(0, ServerSession::buffered)
    }

    /// Negotiated protocol and cipher, for logs.
    pub(crate) fn describe(&self) -> String {
        match self.session.as_ref().and_then(ServerSession::record_layer) {
            Some(rl) => format!("{:?} {}", rl.version(), rl.suite()),
            None => "handshaking".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! A TLS connection served by our record layer on a kernel socket is
    //! moved, mid-stream, to a new socket: TCP state by `TCP_REPAIR`, TLS
    //! state by a session snapshot. OpenSSL's own client on the other end
    //! keeps streaming and sees every byte echoed, no alert, no reconnect.
    //! Needs CAP_NET_ADMIN (CI runs as root), like `tests/repair.rs`.

    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

    use super::*;
    use crate::repair;
    use dpuproxy_tls::Limits;

    const ROUNDS: usize = 40;
    const CHUNK: usize = 8000;

    fn chunk(i: usize) -> Vec<u8> {
        (0..CHUNK).map(|j| (i * 31 + j * 7) as u8).collect()
    }

    #[test]
    fn a_tls_connection_moves_to_a_new_socket_mid_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        dpuproxy_tls::certs::write_self_signed(&cert, &key, 1).unwrap();
        let config = crate::handshake_config(&cert, &key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
            b.set_verify(SslVerifyMode::NONE);
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let port = tcp.local_addr().unwrap().port();
            let mut tls = b.build().connect("localhost", tcp).unwrap();
            for i in 0..ROUNDS {
                let sent = chunk(i);
                tls.write_all(&sent).unwrap();
                let mut back = vec![0u8; CHUNK];
                tls.read_exact(&mut back).unwrap();
                assert_eq!(back, sent, "round {i}");
            }
            tls.shutdown().unwrap();
            assert_eq!(tls.get_ref().local_addr().unwrap().port(), port);
        });

        let (sock, _) = listener.accept().unwrap();
        sock.set_nonblocking(true).unwrap();
        let mut server = FdRecords::accept(TcpStream::from_std(sock), config);
        let mut scratch = vec![0u8; 16 * 1024];
        let started = Instant::now();
        let limit = Duration::from_secs(20);
        while server.handshake(&mut scratch) != HandshakeStep::Done {
            assert!(started.elapsed() < limit, "handshake timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut echoed = 0;
        let mut moved = false;
        let mut pending: Vec<u8> = Vec::new();
        loop {
            assert!(
                started.elapsed() < limit,
                "echo timed out at {echoed} bytes"
            );
            let io = server.read(&mut scratch, &mut |d| pending.extend_from_slice(d));
            if let Io::Failed(f) = io {
                panic!("server failed: {f:?}");
            }
            // No steering on loopback: the move happens while the client
            // waits for an echo (a whole chunk read, none of it echoed),
            // after its delayed ACKs had time to go, so no segment arrives
            // between the close and the restore (the host would answer it
            // with RST; on the DPU the steering holds such frames).
            if !moved && echoed >= ROUNDS * CHUNK / 2 && pending.len() == CHUNK {
                std::thread::sleep(Duration::from_millis(50));
                let mut tls = server.snapshot().expect("established");
                let tcp = repair::capture(server.stream()).unwrap();
                // Closed in repair mode: the client sees nothing.
                drop(server);
                let restored = repair::restore(&tcp).unwrap();
                // TCP bytes that did not fit the new socket yet go first.
                let mut out = restored.pending;
                out.extend_from_slice(&tls.outbuf);
                tls.outbuf = out;
                restored.stream.set_nonblocking(true).unwrap();
                server = FdRecords::with_session(
                    TcpStream::from_std(restored.stream),
                    ServerSession::resume(&tls, Limits::default()).unwrap(),
                    &tls,
                );
                moved = true;
            }
            if !pending.is_empty() {
                let w = server.write(&pending);
                assert_eq!(w, Io::Done(pending.len()));
                echoed += pending.len();
                pending.clear();
            }
            let _ = server.flush();
            match io {
                Io::Eof => break,
                Io::WouldBlock => std::thread::sleep(Duration::from_micros(200)),
                _ => {}
            }
        }
        assert!(moved);
        assert_eq!(echoed, ROUNDS * CHUNK);
        client.join().expect("client saw every byte, no alert");
        let stats = server
            .session
            .as_ref()
            .and_then(ServerSession::record_layer)
            .map(|rl| rl.stats().clone())
            .unwrap();
        assert_eq!(stats.errors, [0; dpuproxy_tls::ErrorKind::COUNT]);
    }
}

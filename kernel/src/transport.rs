//! The kernel data path as a [`Transport`] for the shared driver: clients
//! are OpenSSL sessions on kernel sockets ([`FdTls`], kTLS when the kernel
//! takes it), backends are non-blocking kernel TCP sockets, and readiness
//! comes from mio (epoll, edge-triggered). Each socket is registered under
//! a token that encodes its driver slot (index and generation) and side.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use dpuproxy_driver::{
    Close, ConnectStatus, Failure, HandshakeStep, Io, Linger, Side, SlotId, Transport,
};
use dpuproxy_l7::Shared;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::KernelMetrics;
use crate::tls_fd::{FdTls, Handshake, set_linger_zero};

const READ_CHUNK: usize = 16 * 1024;
/// Tokens at or above this are the worker's own (listener, waker).
pub(crate) const RESERVED: usize = 1 << (usize::BITS - 1);
/// Bits of a token below the generation: side (1) and slot index (32).
const GEN_SHIFT: u32 = 33;
/// The driver's generations (they fit between the index and the reserved
/// top bit of a 64-bit token).
const GEN_MASK: usize = (1 << dpuproxy_driver::GENERATION_BITS) - 1;
const _: () = assert!(
    GEN_SHIFT + dpuproxy_driver::GENERATION_BITS < usize::BITS,
    "tokens need 64-bit usize"
);

/// The mio token of one side of a slot.
pub(crate) fn token(id: SlotId, side: Side) -> Token {
    let gen_bits = (id.generation as usize & GEN_MASK) << GEN_SHIFT;
    let side_bit = usize::from(side == Side::Backend);
    Token(gen_bits | ((id.index as usize) << 1) | side_bit)
}

/// The slot and side a (non-reserved) token stands for.
pub(crate) fn slot_of(t: Token) -> (SlotId, Side) {
    let side = if t.0 & 1 == 1 {
        Side::Backend
    } else {
        Side::Client
    };
    let index = ((t.0 >> 1) & 0xffff_ffff) as u32;
    let generation = ((t.0 >> GEN_SHIFT) & GEN_MASK) as u32;
    (SlotId { index, generation }, side)
}

/// A client connection of the kernel path.
#[derive(Debug)]
pub(crate) struct KernelClient {
    pub(crate) tls: FdTls,
    /// The client sent its first bytes: OpenSSL runs the handshake.
    started: bool,
    established: bool,
}

impl KernelClient {
    pub(crate) fn new(tls: FdTls) -> Self {
        Self {
            tls,
            started: false,
            established: false,
        }
    }
}

/// A backend connection of the kernel path.
#[derive(Debug)]
pub(crate) struct KernelBackend {
    stream: TcpStream,
    addr: SocketAddr,
}

/// One worker's sockets, registered with its mio poll.
pub(crate) struct KernelTransport {
    registry: Registry,
    shared: Arc<Shared>,
    metrics: Arc<KernelMetrics>,
    buf: Vec<u8>,
}

impl KernelTransport {
    pub(crate) fn new(
        registry: Registry,
        shared: Arc<Shared>,
        metrics: Arc<KernelMetrics>,
    ) -> Self {
        Self {
            registry,
            shared,
            metrics,
            buf: vec![0; READ_CHUNK],
        }
    }
}

fn both() -> Interest {
    Interest::READABLE | Interest::WRITABLE
}

/// Read a non-blocking socket once into `buf`.
fn read_stream(stream: &mut TcpStream, buf: &mut [u8], sink: &mut dyn FnMut(&[u8])) -> Io {
    loop {
        return match stream.read(buf) {
            Ok(0) => Io::Eof,
            Ok(n) => {
                sink(&buf[..n]);
                Io::Done(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => Io::Failed(Failure::Broken),
        };
    }
}

impl Transport for KernelTransport {
    type Client = KernelClient;
    type Backend = KernelBackend;

    fn attach_client(&mut self, client: &mut KernelClient, slot: SlotId) -> io::Result<()> {
        client
            .tls
            .register(&self.registry, token(slot, Side::Client), both())
    }

    fn handshake(&mut self, client: &mut KernelClient) -> HandshakeStep {
        // OpenSSL allocates tens of KiB per connection when its handshake
        // starts: a connection that has sent nothing yet costs none of it.
        if !client.started {
            match client.tls.has_input() {
                Ok(true) => client.started = true,
                Ok(false) => return HandshakeStep::Pending,
                Err(()) => return HandshakeStep::Failed,
            }
        }
        match client.tls.handshake() {
            Ok(Handshake::Done) => {
                client.established = true;
                let path = client.tls.record_path();
                self.metrics.record_path(path);
                tracing::debug!(
                    tls = %client.tls.describe(),
                    record_path = path.label(),
                    "handshake done"
                );
                HandshakeStep::Done
            }
            Ok(Handshake::WouldBlock) => HandshakeStep::Pending,
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                HandshakeStep::Failed
            }
        }
    }

    fn read(&mut self, client: &mut KernelClient, sink: &mut dyn FnMut(&[u8])) -> Io {
        match client.tls.read(&mut self.buf) {
            Ok(0) => Io::Eof,
            Ok(n) => {
                sink(&self.buf[..n]);
                Io::Done(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::debug!(error = %e, "TLS error from a client");
                Io::Failed(Failure::Tls)
            }
            Err(e) => {
                tracing::debug!(error = %e, "client read failed");
                Io::Failed(Failure::Broken)
            }
        }
    }

    fn write(&mut self, client: &mut KernelClient, data: &[u8]) -> Io {
        match client.tls.write(data) {
            Ok(n) => Io::Done(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::WouldBlock,
            Err(e) => {
                tracing::debug!(error = %e, "client write failed");
                Io::Failed(Failure::Broken)
            }
        }
    }

    fn flush(&mut self, _client: &mut KernelClient) -> Io {
        // OpenSSL writes records straight to the socket.
        Io::Done(0)
    }

    fn flushed(&self, _client: &KernelClient) -> bool {
        true
    }

    fn shutdown(&mut self, client: &mut KernelClient) -> Linger {
        if !client.established {
            return Linger::No;
        }
        client.tls.shutdown();
        client.tls.shutdown_write();
        Linger::Drain
    }

    fn close(&mut self, mut client: KernelClient, how: Close) {
        let _ = client.tls.deregister(&self.registry);
        if how == Close::Abort {
            client.tls.set_abortive_close();
        }
        // Dropping frees the SSL (which sends nothing), then closes the fd.
    }

    fn buffered(&self, _client: &KernelClient) -> usize {
        0
    }

    fn connect(&mut self, slot: SlotId, backend: usize) -> io::Result<KernelBackend> {
        if backend >= self.shared.backends.len() {
            return Err(io::Error::other("no such backend"));
        }
        let addr = self.shared.backends.get(backend).socket;
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        self.registry
            .register(&mut stream, token(slot, Side::Backend), both())?;
        Ok(KernelBackend { stream, addr })
    }

    /// A non-blocking connect is done when the socket has a peer; it failed
    /// when `SO_ERROR` is set.
    fn connect_status(&mut self, conn: &mut KernelBackend) -> ConnectStatus {
        let failed = match conn.stream.take_error() {
            Ok(Some(e)) | Err(e) => e,
            Ok(None) => match conn.stream.peer_addr() {
                Ok(_) => return ConnectStatus::Connected,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    return ConnectStatus::Pending;
                }
                Err(e) => e,
            },
        };
        tracing::debug!(backend = %conn.addr, error = %failed, "backend connect failed");
        ConnectStatus::Failed
    }

    fn backend_read(&mut self, conn: &mut KernelBackend, sink: &mut dyn FnMut(&[u8])) -> Io {
        read_stream(&mut conn.stream, &mut self.buf, sink)
    }

    fn backend_write(&mut self, conn: &mut KernelBackend, data: &[u8]) -> Io {
        loop {
            return match conn.stream.write(data) {
                Ok(n) => Io::Done(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => Io::Failed(Failure::Broken),
            };
        }
    }

    fn adopt(&mut self, conn: &mut KernelBackend, slot: SlotId) -> bool {
        self.registry
            .register(&mut conn.stream, token(slot, Side::Backend), both())
            .is_ok()
    }

    fn park(&mut self, conn: &mut KernelBackend) {
        let _ = self.registry.deregister(&mut conn.stream);
    }

    fn idle_alive(&mut self, conn: &mut KernelBackend) -> bool {
        let mut probe = [0u8; 1];
        matches!(conn.stream.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn close_backend(&mut self, mut conn: KernelBackend, how: Close) {
        let _ = self.registry.deregister(&mut conn.stream);
        if how == Close::Abort {
            set_linger_zero(&conn.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_below_the_reserved_ones() {
        let max_gen = (1 << dpuproxy_driver::GENERATION_BITS) - 1;
        for (index, generation) in [(0, 0), (7, 3), (u32::MAX, 0), (12, max_gen)] {
            for side in [Side::Client, Side::Backend] {
                let id = SlotId { index, generation };
                let t = token(id, side);
                assert!(t.0 < RESERVED, "{t:?}");
                let (back, s) = slot_of(t);
                assert_eq!(s, side);
                assert_eq!(back.index, index);
                assert_eq!(back.generation, generation);
            }
        }
    }
}

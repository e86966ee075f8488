//! What a data path provides to the driver: bytes in and out of a client
//! (TLS plaintext) and of backend connections, and closes. A transport
//! never decides anything about a connection's life; it reports what its
//! sockets did.

use crate::id::SlotId;

/// The outcome of one read, write or flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Io {
    /// Moved this many bytes (reads: bytes taken from the wire, whether or
    /// not they yielded plaintext; writes: plaintext bytes taken; flushes:
    /// bytes handed to TCP, 0 when nothing is held).
    Done(usize),
    /// Nothing can move until the transport reports readiness again.
    WouldBlock,
    /// The peer ended its side (TLS close_notify or TCP FIN); everything
    /// before it was delivered.
    Eof,
    /// The connection cannot carry more.
    Failed(Failure),
}

/// Why a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection itself is gone (reset, write error): nothing more can
    /// be delivered.
    Broken,
    /// A TLS protocol error: an alert is queued or sent; the rest of what
    /// is queued may still be flushed, then the connection closes without
    /// close_notify.
    Tls,
}

/// One step of a client's TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum HandshakeStep {
    /// Finished: application data may flow.
    Done,
    /// Needs more from the client (or room to send).
    Pending,
    /// Failed; the alert (if any) is queued.
    Failed,
}

/// Whether a backend connection has finished connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum ConnectStatus {
    /// Established.
    Connected,
    /// Still connecting.
    Pending,
    /// Refused, unreachable or reset.
    Failed,
}

/// How a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Orderly: TCP FIN after what was queued (a client's close_notify is
    /// sent by [`Transport::shutdown`] before this).
    Graceful,
    /// Abortive: no close_notify, TCP RST; queued bytes are dropped. A
    /// client must see a broken connection, never a clean end.
    Abort,
}

/// What a client needs after [`Transport::shutdown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// Our FIN is out but the socket still receives: read and discard what
    /// the client still sends until its own end (or the linger deadline),
    /// so that it is not reset before it has read our last bytes.
    Drain,
    /// Close as soon as everything is flushed (the transport discards late
    /// input itself).
    No,
}

/// The I/O side of one data path. `Client` is a client connection past
/// accept (its TCP and TLS state); `Backend` is one plain-TCP backend
/// connection. Every call is non-blocking.
///
/// Readiness is edge-triggered: after `WouldBlock` the driver does not try
/// that direction again until the data path reports an event for it
/// ([`crate::Driver::mark`]).
pub trait Transport {
    /// A client connection.
    type Client;
    /// A backend connection.
    type Backend;

    /// Bind a client to its driver slot (register its events under `slot`).
    /// On error the client is closed abortively.
    fn attach_client(&mut self, client: &mut Self::Client, slot: SlotId) -> std::io::Result<()>;
    /// One step of the client's TLS handshake.
    fn handshake(&mut self, client: &mut Self::Client) -> HandshakeStep;
    /// Read what the client sent, handing plaintext to `sink`.
    fn read(&mut self, client: &mut Self::Client, sink: &mut dyn FnMut(&[u8])) -> Io;
    /// Take plaintext for the client (sealed and queued or sent).
    fn write(&mut self, client: &mut Self::Client, data: &[u8]) -> Io;
    /// Push out what the transport still holds for the client.
    fn flush(&mut self, client: &mut Self::Client) -> Io;
    /// Nothing is held for the client any more.
    fn flushed(&self, client: &Self::Client) -> bool;
    /// Begin a graceful close: close_notify (when the TLS session is up),
    /// and a TCP FIN where the transport half-closes.
    fn shutdown(&mut self, client: &mut Self::Client) -> Linger;
    /// Close the client and give it up.
    fn close(&mut self, client: Self::Client, how: Close);
    /// Bytes the transport holds for this client outside the TCP buffers.
    fn buffered(&self, client: &Self::Client) -> usize;

    /// Start connecting to backend `backend` for `slot`; `Err` when it fails
    /// at once.
    fn connect(&mut self, slot: SlotId, backend: usize) -> std::io::Result<Self::Backend>;
    /// Whether a connect finished.
    fn connect_status(&mut self, conn: &mut Self::Backend) -> ConnectStatus;
    /// Read from a backend, handing the bytes to `sink`.
    fn backend_read(&mut self, conn: &mut Self::Backend, sink: &mut dyn FnMut(&[u8])) -> Io;
    /// Write to a backend.
    fn backend_write(&mut self, conn: &mut Self::Backend, data: &[u8]) -> Io;
    /// A pooled connection goes to `slot`; false if it cannot (it is then
    /// closed).
    fn adopt(&mut self, conn: &mut Self::Backend, slot: SlotId) -> bool;
    /// A connection goes into the idle pool: its events no longer reach a
    /// slot.
    fn park(&mut self, conn: &mut Self::Backend);
    /// A pooled connection is still usable: open, and silent (EOF or stray
    /// bytes mean the backend closed it or broke framing).
    fn idle_alive(&mut self, conn: &mut Self::Backend) -> bool;
    /// Close a backend connection.
    fn close_backend(&mut self, conn: Self::Backend, how: Close);
}

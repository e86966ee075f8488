//! The crate's error type.

/// What a stack call can fail with. None of these is fatal to the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TcpError {
    /// The handle does not name a live connection or listener (closed, or never existed).
    #[error("no such connection or listener")]
    InvalidHandle,
    /// The operation is not possible in the connection's current state
    /// (e.g. send before the handshake completed or after shutdown).
    #[error("operation not valid in this connection state")]
    InvalidState,
    /// The peer closed its sending half and every byte has been read.
    #[error("end of stream")]
    Finished,
    /// The connection was reset by the peer, refused, or timed out.
    #[error("connection reset")]
    Reset,
    /// The 4-tuple or listening port is already in use.
    #[error("address in use")]
    AddrInUse,
    /// No ephemeral port satisfies the request (range exhausted or predicate refused all).
    #[error("no local port available")]
    NoPort,
    /// The address cannot be used (unspecified, not ours, not IPv4, port 0).
    #[error("address not usable")]
    Unaddressable,
    /// A configuration value is out of range; the message names it.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

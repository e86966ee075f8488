//! dpuproxy-tls: TLS for both data paths, without any network I/O of its
//! own.
//!
//! Both paths build their server context here ([`server_builder`],
//! [`alpn_http11`]: certificate files are read once at set-up). In DPDK
//! mode there is no kernel socket and so no kernel TLS; this crate does in
//! userspace what the kernel's tls module would. (Kernel mode uses only
//! the context set-up: OpenSSL runs on the socket there and installs kTLS
//! itself.)
//!
//! Contract:
//! - [`OpensslHandshake`] runs OpenSSL's handshake over memory buffers
//!   behind the [`Handshake`] trait (bytes in, bytes out,
//!   `is_handshaking()`, `secrets()`). It is fed record by record, so OpenSSL
//!   never reads past the end of the handshake, and it hands over
//!   ([`OpensslHandshake::into_established`]) a [`RecordLayer`] that
//!   continues at exact sequence numbers, plus any bytes that followed.
//! - [`Secrets`] come from the keylog callback; keys and IVs from
//!   HKDF-Expand-Label (TLS 1.3) or the PRF key block (TLS 1.2), see [`keys`].
//! - [`RecordLayer`] seals and opens AEAD records in place, one reused
//!   cipher context per direction. It handles alerts, close_notify both
//!   ways, TLS 1.3 KeyUpdate (answering `update_requested`, and rekeying
//!   itself before the AES-GCM confidentiality limit), and drops a client's
//!   NewSessionTickets. Bad input (bad MAC, bad length, unexpected type, a
//!   record over the limit) queues an alert, is counted by kind, and ends
//!   the connection; unauthenticated bytes are never returned, and no input
//!   makes it panic.
//! - [`RecordLayer::snapshot`] gives a [`RecordState`] (current secrets
//!   after any KeyUpdate, both sequence numbers, queued control records, a
//!   partial post-handshake message, close state, counters) and
//!   [`RecordLayer::resume`] continues from it: the TLS half of moving a
//!   connection to the other data path.
//! - [`CryptoInfo`] is the kTLS `crypto_info` (linux/tls.h layout) of
//!   either direction's current keys. Nothing installs it in a kernel; it
//!   is the independent view of the keys that the fuzz target's reference
//!   AEAD ([`fuzz::reference_open`]) and the tests check against.
//!
//! Poll order for a data path, per loop turn: `feed`/`open_next` everything
//! received; then `poll_output`; then write application data. Nothing here
//! reads a clock, opens a socket or starts a thread.

// Only `aead` (the per-record EVP calls) holds unsafe code.
#![deny(unsafe_code)]

mod aead;
pub mod certs;
pub mod conn;
pub mod context;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod handshake;
pub mod keys;
pub mod ktls;
pub mod record;
pub mod session;
pub mod suite;

pub use conn::{Incoming, Limits, Opened, RecordLayer, RecordState, Stats};
pub use context::{ContextError, alpn_http11, server_builder};
pub use error::{AlertDescription, ErrorKind, TlsError};
pub use handshake::{
    Established, Handshake, HandshakeConfig, HandshakeError, HandshakeOptions, KeyLog,
    OpensslHandshake,
};
pub use keys::{Secret, SecretMaterial, Secrets, TrafficKeys};
pub use ktls::{CryptoInfo, Direction};
pub use record::{ContentType, Opener, Sealer};
pub use session::{ServerSession, SessionState};
pub use suite::{Aead, CipherSuite, HashAlg, ProtocolVersion, Side};

//! dpuproxy-tls: TLS for both data paths, without any I/O of its own.
//!
//! Contract (built out by the record-layer issue):
//! - a handshake engine: an OpenSSL `SSL` over memory BIOs behind a trait
//!   (bytes in, bytes out, `is_handshaking()`, `secrets()`), fed record by
//!   record so it never reads past the end of the handshake;
//! - traffic-secret extraction (keylog callback) and key/iv derivation for
//!   TLS 1.3 (HKDF-Expand-Label) and TLS 1.2 (PRF key block);
//! - a record layer that seals and opens AEAD records in place with one
//!   reused cipher context per direction, handles alerts, close_notify and
//!   KeyUpdate, and never passes unauthenticated bytes on;
//! - kTLS `crypto_info` built from the same secrets for the kernel path.
//!
//! Today the kernel path drives OpenSSL directly on the socket fd (see
//! `dpuproxy-kernel`), so this crate holds no code yet.

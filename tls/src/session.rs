//! One server-side TLS connection over any byte stream, sans-IO: the
//! memory-buffer handshake, then our record layer, with the TLS bytes on
//! their way in (`inbuf`) and out (`outbuf`). Both data paths drive it:
//! DPDK mode over the userspace TCP stack, kernel mode over a socket when
//! its records are ours (a connection kernel mode did not handshake itself,
//! or `records = "ours"`).
//!
//! Calling order for a transport, per readiness:
//! - bytes from TCP are appended to [`ServerSession::inbuf`] (stop at
//!   [`ServerSession::inbuf_full`]);
//! - while handshaking, [`ServerSession::handshake`]; afterwards
//!   [`ServerSession::open`] hands out application data;
//! - [`ServerSession::seal`] takes application data;
//! - [`ServerSession::pending_out`] goes to TCP, and what TCP took is
//!   [`ServerSession::consume_out`]-ed.
//!
//! Nothing is lost when a connection moves: [`ServerSession::snapshot`]
//! carries the record layer's state together with both buffers, and
//! [`ServerSession::resume`] continues from them.

use crate::conn::{Incoming, Limits, RecordLayer, RecordState};
use crate::error::TlsError;
use crate::handshake::{Handshake, HandshakeConfig, HandshakeError, OpensslHandshake};

/// TLS bytes held for one connection in each direction before reads (or
/// seals) stop.
pub const MAX_TLS_BUFFER: usize = 256 * 1024;

/// One step of the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Finished: application data may flow.
    Done,
    /// Needs more bytes from the peer.
    Pending,
    /// Failed; an alert may wait in `pending_out`.
    Failed,
}

/// What [`ServerSession::open`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Bytes of `inbuf` used (whole records).
    pub consumed: usize,
    /// The peer's close_notify arrived.
    pub close_notify: bool,
    /// A record failed (the connection is over; an alert may be queued).
    pub error: bool,
}

enum Tls {
    Handshaking(Box<OpensslHandshake>),
    Established(Box<RecordLayer>),
    Failed,
}

/// A TLS connection's state and buffers (see the module docs).
pub struct ServerSession {
    tls: Tls,
    /// TLS bytes received and not yet opened.
    inbuf: Vec<u8>,
    /// TLS bytes sealed and not yet taken by TCP.
    outbuf: OutBuf,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("established", &self.is_established())
            .field("inbuf", &self.inbuf.len())
            .field("outbuf", &self.outbuf.len())
            .finish_non_exhaustive()
    }
}

/// A session's whole state as it moves (see [`ServerSession::snapshot`]).
#[derive(Debug, Clone)]
pub struct SessionState {
    /// The record layer's state.
    pub records: RecordState,
    /// TLS bytes received and not yet opened (a partial record).
    pub inbuf: Vec<u8>,
    /// TLS bytes sealed and not yet handed to TCP.
    pub outbuf: Vec<u8>,
}

impl ServerSession {
    /// A session about to run its handshake as a server.
    pub fn new(config: &HandshakeConfig) -> Result<Self, HandshakeError> {
        Ok(Self {
            tls: Tls::Handshaking(Box::new(OpensslHandshake::new(config)?)),
            inbuf: Vec::new(),
            outbuf: OutBuf::default(),
        })
    }

    /// The established session `state` was taken from, under `limits`.
    pub fn resume(state: &SessionState, limits: Limits) -> Result<Self, TlsError> {
        let rl = RecordLayer::resume(&state.records, limits)?;
        let mut outbuf = OutBuf::default();
        outbuf.appender().extend_from_slice(&state.outbuf);
        Ok(Self {
            tls: Tls::Established(Box::new(rl)),
            inbuf: state.inbuf.clone(),
            outbuf,
        })
    }

    /// The established session's state and buffers, to continue it
    /// elsewhere; `None` while handshaking or after a failure.
    pub fn snapshot(&self) -> Option<SessionState> {
        let Tls::Established(rl) = &self.tls else {
            return None;
        };
        Some(SessionState {
            records: rl.snapshot().ok()?,
            inbuf: self.inbuf.clone(),
            outbuf: self.outbuf.pending().to_vec(),
        })
    }

    /// The handshake is done and the session has not failed.
    pub fn is_established(&self) -> bool {
        matches!(self.tls, Tls::Established(_))
    }

    /// The record layer, once established.
    pub fn record_layer(&self) -> Option<&RecordLayer> {
        match &self.tls {
            Tls::Established(rl) => Some(rl),
            _ => None,
        }
    }

    /// Where received TLS bytes go.
    pub fn inbuf(&mut self) -> &mut Vec<u8> {
        &mut self.inbuf
    }

    /// Put `bytes` before everything waiting to be sent (TLS bytes that
    /// must leave first, e.g. the part of a carried send queue a restored
    /// socket did not take yet).
    pub fn prepend_out(&mut self, bytes: &[u8]) {
        let ob = &mut self.outbuf;
        ob.buf.drain(..ob.sent);
        ob.sent = 0;
        ob.buf.splice(0..0, bytes.iter().copied());
    }

    /// Enough is buffered: stop reading until records are opened.
    pub fn inbuf_full(&self) -> bool {
        self.inbuf.len() >= MAX_TLS_BUFFER
    }

    /// Feed the buffered handshake bytes to OpenSSL (record by record);
    /// hand over to the record layer when it is done. Its output waits in
    /// `pending_out`.
    pub fn handshake(&mut self) -> Step {
        let Tls::Handshaking(hs) = &mut self.tls else {
            return if self.is_established() {
                Step::Done
            } else {
                Step::Failed
            };
        };
        if self.inbuf.is_empty() {
            return Step::Pending;
        }
        let fed = hs.feed(&self.inbuf);
        self.inbuf.clear();
        let _ = hs.poll_output(self.outbuf.appender());
        match fed {
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                self.tls = Tls::Failed;
                Step::Failed
            }
            Ok(()) if hs.is_handshaking() => Step::Pending,
            Ok(()) => {
                let Tls::Handshaking(hs) = std::mem::replace(&mut self.tls, Tls::Failed) else {
                    unreachable!("matched above")
                };
                match hs.into_established() {
                    Ok(est) => {
                        self.outbuf.appender().extend_from_slice(&est.output);
                        self.inbuf = est.leftover;
                        self.tls = Tls::Established(Box::new(est.record_layer));
                        Step::Done
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS hand-over failed");
                        Step::Failed
                    }
                }
            }
        }
    }

    /// Open every whole record in `inbuf`, handing application data to
    /// `sink`; control records' answers (KeyUpdate, alerts) go to
    /// `pending_out`. Not established: an error.
    pub fn open(&mut self, sink: &mut dyn FnMut(&[u8])) -> Opened {
        let Tls::Established(rl) = &mut self.tls else {
            return Opened {
                consumed: 0,
                close_notify: false,
                error: true,
            };
        };
        let inbuf = &mut self.inbuf;
        let mut out = Opened {
            consumed: 0,
            close_notify: false,
            error: false,
        };
        let mut used = 0;
        while used < inbuf.len() && !out.close_notify {
            match rl.open_next(&mut inbuf[used..]) {
                Ok(o) => {
                    let n = o.consumed;
                    match o.incoming {
                        Incoming::NeedMore => break,
                        Incoming::AppData(data) if !data.is_empty() => sink(data),
                        Incoming::AppData(_) | Incoming::Control => {}
                        Incoming::CloseNotify => out.close_notify = true,
                    }
                    used += n;
                    if n == 0 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "TLS record error");
                    out.error = true;
                    break;
                }
            }
        }
        inbuf.drain(..used.min(inbuf.len()));
        out.consumed = used;
        let _ = rl.poll_output(self.outbuf.appender());
        if out.error {
            self.inbuf.clear();
        }
        out
    }

    /// Seal application data into `pending_out`.
    pub fn seal(&mut self, data: &[u8]) -> Result<(), TlsError> {
        let Tls::Established(rl) = &mut self.tls else {
            return Err(TlsError::Closed("not established"));
        };
        rl.write_app_data(data, self.outbuf.appender())
    }

    /// Queue close_notify (established sessions only; it follows what is
    /// already in `pending_out`).
    pub fn close_notify(&mut self) {
        if let Tls::Established(rl) = &mut self.tls
            && rl.send_close_notify().is_ok()
        {
            let _ = rl.poll_output(self.outbuf.appender());
        }
    }

    /// Sealed bytes waiting for TCP.
    pub fn pending_out(&self) -> &[u8] {
        self.outbuf.pending()
    }

    /// TCP took `n` bytes of `pending_out`.
    pub fn consume_out(&mut self, n: usize) {
        self.outbuf.consume(n);
    }

    /// Bytes waiting for TCP.
    pub fn out_len(&self) -> usize {
        self.outbuf.len()
    }

    /// Enough is sealed and waiting: stop sealing until TCP takes some.
    pub fn outbuf_full(&self) -> bool {
        self.outbuf.len() >= MAX_TLS_BUFFER
    }

    /// TLS bytes held in both directions.
    pub fn buffered(&self) -> usize {
        self.inbuf.len() + self.outbuf.len()
    }
}

/// Sealed TLS bytes waiting for room in TCP's send buffer. A partial send
/// moves a cursor instead of shifting the rest to the front; the space
/// before the cursor is reclaimed when the buffer empties, or when it is at
/// least half the buffer and more is appended.
#[derive(Debug, Default)]
struct OutBuf {
    buf: Vec<u8>,
    sent: usize,
}

impl OutBuf {
    fn pending(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    fn len(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// `n` bytes were taken by TCP.
    fn consume(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.buf.len());
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
    }

    /// The vector to append sealed records to.
    fn appender(&mut self) -> &mut Vec<u8> {
        if self.sent > 0 && self.sent * 2 >= self.buf.len() {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::OutBuf;

    #[test]
    fn cursor_and_reclaim() {
        let mut o = OutBuf::default();
        o.appender().extend_from_slice(b"abcdef");
        o.consume(2);
        assert_eq!(o.pending(), b"cdef");
        // Less than half sent: appended behind the cursor.
        o.appender().extend_from_slice(b"gh");
        assert_eq!(o.pending(), b"cdefgh");
        o.consume(4);
        // Now more than half: reclaimed on the next append.
        o.appender().extend_from_slice(b"i");
        assert_eq!(o.pending(), b"ghi");
        o.consume(10);
        assert_eq!(o.len(), 0);
    }
}

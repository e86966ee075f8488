//! Sealed TLS bytes waiting for room in a client's TCP send buffer.

/// A partial send moves a cursor instead of shifting the rest to the
/// front; the space before the cursor is reclaimed when the buffer
/// empties, or when it is at least half the buffer and more is appended.
#[derive(Debug, Default)]
pub(crate) struct OutBuf {
    buf: Vec<u8>,
    sent: usize,
}

impl OutBuf {
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.sent
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` bytes were taken by TCP.
    pub(crate) fn consume(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.buf.len());
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
    }

    /// The vector to append sealed records to.
    pub(crate) fn appender(&mut self) -> &mut Vec<u8> {
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
        assert!(o.is_empty());
    }
}

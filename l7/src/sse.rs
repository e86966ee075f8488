//! Server-Sent Events boundary tracking.
//!
//! The relay forwards SSE bytes as they arrive and never rewrites them; this
//! tracker only watches the byte stream so that the core knows (a) how many
//! events went by and (b) whether the stream is between events, the only
//! place where a keepalive comment may be inserted or a dying stream may be
//! ended without cutting an event in half. Lines may end in CRLF, LF or CR
//! (WHATWG HTML §9.2.5).

/// Watches an event stream.
#[derive(Debug, Clone, Default)]
pub struct SseTracker {
    line_len: usize,
    event_lines: usize,
    after_cr: bool,
    events: u64,
}

impl SseTracker {
    /// A tracker at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes in order. Returns how many events were completed by them.
    pub fn feed(&mut self, data: &[u8]) -> u64 {
        let before = self.events;
        for &b in data {
            if b == b'\n' && self.after_cr {
                // The LF of a CRLF pair: the line already ended at the CR.
                self.after_cr = false;
                continue;
            }
            self.after_cr = b == b'\r';
            if b == b'\r' || b == b'\n' {
                if self.line_len == 0 {
                    if self.event_lines > 0 {
                        self.events += 1;
                    }
                    self.event_lines = 0;
                } else {
                    self.event_lines += 1;
                }
                self.line_len = 0;
            } else {
                self.line_len += 1;
            }
        }
        self.events - before
    }

    /// Whether the stream is between two events (nothing of a next event
    /// seen yet, and no CR waiting for a possible LF).
    pub fn at_boundary(&self) -> bool {
        self.line_len == 0 && self.event_lines == 0 && !self.after_cr
    }

    /// Events seen so far.
    pub fn events(&self) -> u64 {
        self.events
    }
}

/// The comment sent to keep an idle stream open (ignored by SSE parsers).
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_events_with_any_line_ending() {
        let mut t = SseTracker::new();
        assert_eq!(t.feed(b"event: message\ndata: {}\n\n"), 1);
        assert!(t.at_boundary());
        assert_eq!(t.feed(b"data: a\r\n\r\ndata: b\r\r"), 2);
        assert_eq!(t.events(), 3);
    }

    #[test]
    fn boundary_split_byte_by_byte() {
        let s = b"id: 1\r\ndata: x\r\n\r\n";
        let mut t = SseTracker::new();
        for (i, b) in s.iter().enumerate() {
            t.feed(&[*b]);
            let last = i == s.len() - 1;
            assert_eq!(t.at_boundary(), last, "after byte {i}");
        }
        assert_eq!(t.events(), 1);
    }

    #[test]
    fn keepalive_counts_as_one_block_and_ends_at_a_boundary() {
        let mut t = SseTracker::new();
        // A comment line followed by a blank line dispatches nothing in a
        // browser, but the tracker counts it as a block; so the relay does
        // not feed its own keepalives to the tracker (the core tests check
        // that `sse_events` counts backend events only).
        assert_eq!(t.feed(KEEPALIVE), 1);
        assert!(t.at_boundary());
    }
}

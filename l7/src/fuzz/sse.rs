//! Fuzz target for the SSE event tracker ([`SseTracker`]).
//!
//! Input: byte 0 selects how the stream is cut into reads ([`Cuts`]); the
//! rest is the event stream a backend sends.
//!
//! Invariants (a violation is a finding):
//! - fed one byte at a time, the tracker completes an event exactly where
//!   the independent line splitter [`reference::sse_marks`] ends one, and
//!   says "between events" exactly where the splitter does;
//! - fed in the selected reads, each read reports the events that ended
//!   inside it, and the boundary verdict after each read is the same;
//! - fed whole, the tracker counts every event and ends in the same state.

use super::reference::{self, SseMarks};
use super::{Cuts, Seed};
use crate::sse::{KEEPALIVE, SseTracker};

/// What a run saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SseOutcome {
    /// Events in the stream.
    pub events: u64,
    /// The stream ends between events.
    pub ends_at_boundary: bool,
}

/// The fuzz target. Panics on a finding.
pub fn sse(data: &[u8]) -> SseOutcome {
    let Some((&selector, stream)) = data.split_first() else {
        return SseOutcome::default();
    };
    let marks = reference::sse_marks(stream);
    byte_at_a_time(stream, &marks);
    in_reads(Cuts(selector), stream, &marks);
    let mut whole = SseTracker::new();
    let events = whole.feed(stream);
    assert_eq!(events, marks.event_ends.len() as u64, "events, fed whole");
    assert_eq!(whole.events(), events);
    assert_eq!(whole.at_boundary(), marks.boundary[stream.len()]);
    SseOutcome {
        events,
        ends_at_boundary: whole.at_boundary(),
    }
}

fn byte_at_a_time(stream: &[u8], marks: &SseMarks) {
    let mut tracker = SseTracker::new();
    let mut ends = Vec::new();
    for (i, b) in stream.iter().enumerate() {
        let completed = tracker.feed(std::slice::from_ref(b));
        assert!(completed <= 1, "one byte completed {completed} events");
        if completed == 1 {
            ends.push(i + 1);
        }
        assert_eq!(
            tracker.at_boundary(),
            marks.boundary[i + 1],
            "boundary verdict after byte {i}"
        );
    }
    assert_eq!(ends, marks.event_ends, "where events end");
}

fn in_reads(cuts: Cuts, stream: &[u8], marks: &SseMarks) {
    let mut tracker = SseTracker::new();
    let mut pos = 0;
    for read in cuts.split(stream) {
        let start = pos;
        pos += read.len();
        let inside = marks
            .event_ends
            .iter()
            .filter(|&&e| e > start && e <= pos)
            .count() as u64;
        assert_eq!(tracker.feed(read), inside, "events in read {start}..{pos}");
        assert_eq!(tracker.at_boundary(), marks.boundary[pos], "after {pos}");
        let so_far = marks.event_ends.partition_point(|&e| e <= pos) as u64;
        assert_eq!(tracker.events(), so_far, "events up to {pos}");
    }
}

/// The committed seeds: streams with every line ending, comments,
/// keepalives, events cut in the middle, each under a few ways of cutting.
pub fn seeds() -> Vec<Seed> {
    let streams: [(&str, &[u8]); 14] = [
        (
            "lf-events",
            b"event: message\ndata: {\"id\":1}\n\ndata: two\n\n",
        ),
        (
            "crlf-events",
            b"id: 1\r\ndata: x\r\n\r\nid: 2\r\ndata: y\r\n\r\n",
        ),
        ("cr-events", b"data: a\r\rdata: b\r\r"),
        (
            "mixed-endings",
            b"data: a\r\n\ndata: b\n\r\ndata: c\r\r\n\n",
        ),
        (
            "comment-and-keepalive",
            b": hello\n\n: keepalive\n\ndata: x\n\n",
        ),
        ("keepalive", KEEPALIVE),
        (
            "cut-mid-event",
            b"data: {\"jsonrpc\":\"2.0\",\"result\":{}}\n\ndata: {\"par",
        ),
        ("cut-after-cr", b"data: a\r\n\r"),
        (
            "multiline-data",
            b"data: line one\ndata: line two\ndata\n\n",
        ),
        (
            "retry-and-id",
            b"retry: 3000\nid\nid: 7\nevent: progress\ndata: 50%\n\n",
        ),
        ("blank-lines-only", b"\n\n\r\n\r\r\n"),
        (
            "bom-and-utf8",
            "\u{feff}data: caf\u{e9} \u{1f600}\n\n".as_bytes(),
        ),
        ("no-space-after-colon", b"data:x\nevent:y\n\n:\n\n"),
        ("empty", b""),
    ];
    let mut seeds = Vec::new();
    for (i, (name, stream)) in streams.iter().enumerate() {
        let selector = [Cuts::SIXTEEN, Cuts::BYTES, Cuts::RANDOM, Cuts::LINES][i % 4];
        seeds.push(Seed::new(name, [&[selector][..], stream].concat()));
    }
    let long = [b"data: ".to_vec(), vec![b'x'; 600], b"\n\n".to_vec()].concat();
    seeds.push(Seed::new("long-line", [&[7 << 2][..], &long].concat()));
    seeds
}

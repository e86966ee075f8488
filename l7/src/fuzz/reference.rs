//! Independent reference decoders the fuzz targets compare against.
//!
//! They are written differently from the production code on purpose:
//! whole-buffer and line-at-a-time where production is an incremental byte
//! state machine, so that a shared mistake is unlikely. They follow the
//! production limits where those are part of the contract (at most 15 hex
//! digits in a chunk size, lines of at most [`MAX_LINE`] bytes after the
//! size's separator or in a trailer).

/// Longest chunk extension (after its separator) or trailer line,
/// terminating CR included.
pub const MAX_LINE: usize = 4096;

/// What a reference decoder made of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The body ended after `used` bytes of input.
    Complete {
        /// Payload.
        body: Vec<u8>,
        /// Input bytes the body took (the rest belongs to what follows).
        used: usize,
    },
    /// Valid so far; more input is needed.
    Incomplete {
        /// Payload so far.
        body: Vec<u8>,
    },
    /// Not a valid body.
    Invalid {
        /// Payload decoded before the error.
        body: Vec<u8>,
    },
}

impl Decoded {
    /// The payload, whatever the verdict.
    pub fn body(&self) -> &[u8] {
        match self {
            Decoded::Complete { body, .. }
            | Decoded::Incomplete { body }
            | Decoded::Invalid { body } => body,
        }
    }
}

/// One CRLF-terminated line at the start of some input.
enum Line<'a> {
    /// A whole line (content without CRLF) and the length with CRLF.
    Whole(&'a [u8], usize),
    /// The content is whole (its CR came); its LF has not.
    AwaitingLf(&'a [u8]),
    /// No CR yet: the content so far.
    Partial(&'a [u8]),
    /// A bare LF, or a CR followed by something other than LF.
    Bad,
}

fn line(input: &[u8]) -> Line<'_> {
    let Some(end) = input.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return Line::Partial(input);
    };
    match (input[end], input.get(end + 1)) {
        (b'\n', _) => Line::Bad,
        (_, None) => Line::AwaitingLf(&input[..end]),
        (_, Some(b'\n')) => Line::Whole(&input[..end], end + 2),
        (_, Some(_)) => Line::Bad,
    }
}

/// Whether a line body of `len` bytes (plus its CR when `whole`) is over
/// [`MAX_LINE`].
fn too_long(len: usize, whole: bool) -> bool {
    len + usize::from(whole) > MAX_LINE
}

/// The size a chunk-size line (or the start of one) declares: `Ok(None)`
/// while it may still become valid, `Err(())` once it cannot.
fn chunk_size(content: &[u8], whole: bool) -> Result<Option<u64>, ()> {
    let digits = content.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > 15 || (digits == 0 && (whole || !content.is_empty())) {
        return Err(());
    }
    let ext = &content[digits..];
    if let [sep, rest @ ..] = ext
        && (!matches!(sep, b';' | b' ' | b'\t') || too_long(rest.len(), whole))
    {
        return Err(());
    }
    if !whole {
        return Ok(None);
    }
    let hex = std::str::from_utf8(&content[..digits]).map_err(|_| ())?;
    u64::from_str_radix(hex, 16).map(Some).map_err(|_| ())
}

/// Decode a chunked body at the start of `input` (RFC 9112 §7.1):
/// chunks, the last chunk, trailer lines (dropped), the final CRLF.
pub fn chunked(input: &[u8]) -> Decoded {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let size = match line(&input[at..]) {
            Line::Bad => return Decoded::Invalid { body },
            Line::Partial(c) => return unfinished_size_line(c, false, body),
            Line::AwaitingLf(c) => return unfinished_size_line(c, true, body),
            Line::Whole(c, len) => match chunk_size(c, true) {
                Ok(Some(size)) => {
                    at += len;
                    size
                }
                _ => return Decoded::Invalid { body },
            },
        };
        if size == 0 {
            return trailers(input, at, body);
        }
        let available = (input.len() - at) as u64;
        if available < size {
            body.extend_from_slice(&input[at..]);
            return Decoded::Incomplete { body };
        }
        let end = at + size as usize;
        body.extend_from_slice(&input[at..end]);
        match &input[end..] {
            [b'\r', b'\n', ..] => at = end + 2,
            [] | [b'\r'] => return Decoded::Incomplete { body },
            _ => return Decoded::Invalid { body },
        }
    }
}

/// A body that stops in a size line (`whole`: all but its LF came).
fn unfinished_size_line(content: &[u8], whole: bool, body: Vec<u8>) -> Decoded {
    match chunk_size(content, whole) {
        Ok(_) => Decoded::Incomplete { body },
        Err(()) => Decoded::Invalid { body },
    }
}

/// The trailer section after the last chunk, from `at`.
fn trailers(input: &[u8], mut at: usize, body: Vec<u8>) -> Decoded {
    loop {
        match line(&input[at..]) {
            Line::Bad => return Decoded::Invalid { body },
            Line::Partial(c) if too_long(c.len(), false) => return Decoded::Invalid { body },
            Line::AwaitingLf(c) if too_long(c.len(), true) => return Decoded::Invalid { body },
            Line::Partial(_) | Line::AwaitingLf(_) => return Decoded::Incomplete { body },
            Line::Whole([], len) => {
                return Decoded::Complete {
                    body,
                    used: at + len,
                };
            }
            Line::Whole(c, _) if too_long(c.len(), true) => return Decoded::Invalid { body },
            Line::Whole(_, len) => at += len,
        }
    }
}

/// Where an event stream's events end and where it is between events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMarks {
    /// For each completed event (a block of at least one non-empty line
    /// ended by an empty line), the stream position right after the first
    /// byte of the line end that completed it.
    pub event_ends: Vec<usize>,
    /// For each position `0..=len`: whether a stream cut there is between
    /// events (no line of a next event seen, no CR that an LF may follow).
    pub boundary: Vec<bool>,
}

/// Split an event stream into lines (CRLF, LF or CR, WHATWG HTML §9.2.5)
/// and mark its events and boundaries.
pub fn sse_marks(data: &[u8]) -> SseMarks {
    let mut marks = SseMarks {
        event_ends: Vec::new(),
        boundary: vec![false; data.len() + 1],
    };
    marks.boundary[0] = true;
    let mut start = 0;
    let mut block_lines = 0;
    while let Some(offset) = data[start..].iter().position(|&b| b == b'\r' || b == b'\n') {
        let end = start + offset;
        let crlf = data[end] == b'\r' && data.get(end + 1) == Some(&b'\n');
        let next = end + 1 + usize::from(crlf);
        if end == start {
            if block_lines > 0 {
                marks.event_ends.push(end + 1);
            }
            block_lines = 0;
            // After a lone CR the tracker cannot know yet whether an LF
            // follows (one that does belongs to this line end).
            marks.boundary[next] = data[next - 1] == b'\n';
        } else {
            block_lines += 1;
        }
        start = next;
    }
    marks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_reference() {
        let wire = b"5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\nNEXT";
        assert_eq!(
            chunked(wire),
            Decoded::Complete {
                body: b"hello".to_vec(),
                used: wire.len() - 4
            }
        );
        assert_eq!(
            chunked(b"5\r\nhel"),
            Decoded::Incomplete {
                body: b"hel".to_vec()
            }
        );
        assert_eq!(chunked(b"5\r"), Decoded::Incomplete { body: Vec::new() });
        for bad in [
            &b"zz"[..],
            b"5\nhello",
            b"3\r\nabcd",
            b"1234567890abcdef0",
            b"5x",
            b"\r",
        ] {
            assert!(matches!(chunked(bad), Decoded::Invalid { .. }), "{bad:?}");
        }
        let long = [b"1;".to_vec(), vec![b'e'; MAX_LINE - 1], b"\r\n".to_vec()].concat();
        assert!(matches!(chunked(&long), Decoded::Incomplete { .. }));
        let longer = [b"1;".to_vec(), vec![b'e'; MAX_LINE], b"\r\n".to_vec()].concat();
        assert!(matches!(chunked(&longer), Decoded::Invalid { .. }));
    }

    #[test]
    fn sse_reference() {
        let m = sse_marks(b"data: a\r\n\r\n: c\n\n\r");
        assert_eq!(m.event_ends, [10, 16]);
        assert!(m.boundary[0] && m.boundary[11] && m.boundary[16]);
        assert!(!m.boundary[10] && !m.boundary[17] && !m.boundary[3]);
    }
}

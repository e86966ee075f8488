//! Reading structured choices off the front of a fuzz input.

/// A cursor over fuzz input. Reads past the end give zeros, so every input
/// decodes to some script and short inputs end it early ([`Self::is_empty`]).
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    /// Nothing left to read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// The next two bytes, big-endian (0 past the end).
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// The next four bytes, big-endian (0 past the end).
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` next bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }

    /// `len` bytes of payload: the first `literal` of them (at most) read
    /// from the input, the rest a pattern seeded by `salt`, so large
    /// records need no large inputs.
    pub fn payload(&mut self, len: usize, literal: usize, salt: u8) -> Vec<u8> {
        let mut p = self.take(len.min(literal)).to_vec();
        let start = p.len();
        p.extend((start..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)));
        p
    }
}

/// Bytes read in small chunks before the rest arrives in large reads.
const SMALL_READS_UP_TO: usize = 4096;
/// Chunks under this size count as small.
const SMALL_READ: usize = 64;
const LARGE_READ: usize = 4096;

/// Split `stream` into reads of `chunk` bytes (at least 1), as a socket
/// might deliver it. Small reads stop after the first 4 KiB (the rest
/// arrives 4 KiB at a time), so a long stream read byte by byte does not
/// make one execution slow.
pub fn chunks(stream: &[u8], chunk: usize) -> impl Iterator<Item = &[u8]> {
    let chunk = chunk.max(1);
    let split = if chunk < SMALL_READ {
        stream.len().min(SMALL_READS_UP_TO)
    } else {
        stream.len()
    };
    let (head, tail) = stream.split_at(split);
    head.chunks(chunk).chain(tail.chunks(LARGE_READ.max(chunk)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_zero_and_short() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u16(), 0x0102);
        assert_eq!(c.take(5), &[3]);
        assert!(c.is_empty());
        assert_eq!((c.u8(), c.u32()), (0, 0));
        assert_eq!(c.take(2), &[] as &[u8]);
        let mut c = Cursor::new(&[9]);
        let p = c.payload(100, 4, 7);
        assert_eq!((p.len(), p[0], p[1]), (100, 9, 31 + 7));
    }
}

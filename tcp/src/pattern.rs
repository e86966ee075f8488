//! Checked test traffic: byte streams whose every byte depends on a stream id
//! and its position, so a dropped, reordered, shifted or flipped byte is
//! caught. Used by the tests and by `dpuproxy bench tcp`.

use crate::{ConnId, Stack, TcpError};

/// The byte at `off` of stream `id`.
pub fn pattern(id: u64, off: u64) -> u8 {
    let x = (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ off.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(off >> 7);
    (x ^ (x >> 29) ^ (x >> 47)) as u8
}

/// Progress of one direction of one connection.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    /// Bytes written into the send buffer.
    pub sent: u64,
    /// Bytes read and checked.
    pub received: u64,
    /// Of which did not match the pattern.
    pub bad: u64,
}

/// Write stream `id` into `c` until `total` bytes were sent or the send
/// buffer is full.
pub fn send_pattern(s: &mut Stack, c: ConnId, id: u64, st: &mut Stream, total: u64) {
    while st.sent < total {
        let start = st.sent;
        let n = s
            .send(c, |buf| {
                let n = buf.len().min((total - start) as usize);
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    *b = pattern(id, start + i as u64);
                }
                (n, n)
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        st.sent += n as u64;
    }
}

/// Read and check everything queued on `c` against stream `id`; the
/// stack's errors (`Finished`, `Reset`...) are passed through.
pub fn recv_pattern(s: &mut Stack, c: ConnId, id: u64, st: &mut Stream) -> Result<(), TcpError> {
    loop {
        let start = st.received;
        let (n, bad) = s.recv(c, |buf| {
            let bad = buf
                .iter()
                .enumerate()
                .filter(|(i, b)| **b != pattern(id, start + *i as u64))
                .count();
            (buf.len(), (buf.len(), bad as u64))
        })?;
        st.received += n as u64;
        st.bad += bad;
        if n == 0 {
            return Ok(());
        }
    }
}

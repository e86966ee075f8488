//! The flow table: 4-tuple → connection slot or TIME-WAIT record.

use core::hash::{BuildHasher, Hash, Hasher};

use smoltcp::wire::Ipv4Address;

/// A TCP 4-tuple seen from our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FourTuple {
    /// Our address.
    pub local_addr: Ipv4Address,
    /// Our port.
    pub local_port: u16,
    /// The peer's address.
    pub remote_addr: Ipv4Address,
    /// The peer's port.
    pub remote_port: u16,
}

impl Hash for FourTuple {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Two word-sized writes instead of four small ones.
        state.write_u64(
            u64::from(self.local_addr.to_bits()) << 32 | u64::from(self.remote_addr.to_bits()),
        );
        state.write_u64(u64::from(self.local_port) << 16 | u64::from(self.remote_port));
    }
}

/// A TIME-WAIT record: all that is left of a connection after both FINs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeWait {
    /// Real-clock microseconds at which the record expires.
    pub expires_us: i64,
    /// Our next sequence number (after our FIN).
    pub snd_nxt: u32,
    /// The peer's next sequence number (after its FIN).
    pub rcv_nxt: u32,
    /// The peer's initial sequence number, when its SYN came to one of our
    /// listeners: with `rcv_nxt` it bounds the old connection's sequence
    /// space, which only old duplicates can fall in.
    pub peer_isn: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowEntry {
    /// Index of a connection slot.
    Conn(u32),
    TimeWait(TimeWait),
    /// An exported connection's 4-tuple: its frames are dropped silently
    /// until the stack stops holding it (see `handoff`), at the latest at
    /// `expires_us` (real µs).
    Held {
        expires_us: i64,
    },
}

/// A keyed multiply-fold hash (the construction of foldhash/wyhash): cheap
/// for 16 bytes of key, and with a secret seed an attacker who picks ports
/// cannot aim at one bucket. Not cryptographic; the seed comes from the
/// stack config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowHashBuilder {
    k0: u64,
    k1: u64,
}

impl FlowHashBuilder {
    pub(crate) fn new(seed: u64) -> Self {
        let mut s = seed;
        Self {
            k0: splitmix(&mut s) | 1,
            k1: splitmix(&mut s),
        }
    }
}

impl BuildHasher for FlowHashBuilder {
    type Hasher = FlowHasher;
    fn build_hasher(&self) -> FlowHasher {
        FlowHasher {
            acc: self.k1,
            k0: self.k0,
        }
    }
}

#[derive(Debug)]
pub(crate) struct FlowHasher {
    acc: u64,
    k0: u64,
}

const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for FlowHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.acc = fold(self.acc ^ x, MUL ^ self.k0);
    }
    fn finish(&self) -> u64 {
        fold(self.acc, self.k0)
    }
}

/// SplitMix64 step: seeds derived keys and the test RNG.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(lp: u16, rp: u16) -> FourTuple {
        FourTuple {
            local_addr: Ipv4Address::new(10, 0, 0, 1),
            local_port: lp,
            remote_addr: Ipv4Address::new(10, 0, 0, 2),
            remote_port: rp,
        }
    }

    #[test]
    fn hash_spreads_sequential_ports() {
        // 64k tuples that differ only in the remote port must fill 1024 buckets
        // evenly: no bucket more than 3x the mean.
        let b = FlowHashBuilder::new(42);
        let mut buckets = vec![0u32; 1024];
        for p in 0..65536u32 {
            let h = b.hash_one(t(80, p as u16));
            buckets[(h & 1023) as usize] += 1;
        }
        let max = *buckets.iter().max().unwrap();
        assert!(max < 3 * 64, "worst bucket {max}");
    }

    #[test]
    fn seed_changes_hash() {
        let a = FlowHashBuilder::new(1).hash_one(t(80, 1234));
        let b = FlowHashBuilder::new(2).hash_one(t(80, 1234));
        assert_ne!(a, b);
        // Same seed, same key: same hash.
        assert_eq!(a, FlowHashBuilder::new(1).hash_one(t(80, 1234)));
    }
}

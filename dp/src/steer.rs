//! Flow steering across lcores: which lcore owns a TCP flow.
//!
//! Every lcore runs its own TCP stack on its own rx/tx queue pair, so all
//! packets of one connection must reach the same lcore. The owner is a
//! pure function of the packet's 4-tuple: the Toeplitz hash with our key
//! ([`RSS_KEY`]), looked up in our redirection table (bucket
//! `hash % reta.len()` → queue), exactly what a NIC computes for RSS once
//! it is given that key and table. So:
//!
//! - on a NIC that takes our key and RETA (mlx5 on a BlueField), hardware
//!   RSS already delivers every packet to its owner;
//! - on a vdev that cannot be programmed (net_tap without rte_flow here,
//!   memif, af_packet with several queues), a packet that lands on the
//!   wrong queue is handed to its owner over a lock-free ring
//!   ([`classify`] tells the lcore which packets are not its own);
//! - for backend connections the proxy opens itself, the lcore picks a
//!   source port whose *return* tuple (backend → us) hashes to itself
//!   (Seastar, F-Stack), so replies come back to it without a hand-over on
//!   hardware RSS.
//!
//! ARP replies are copied to every lcore (each stack keeps its own
//! neighbour cache); ARP requests and ICMP are answered where they land.
//!
//! Sans-IO: byte slices in, decisions out. Built in every configuration
//! so the hash is tested without DPDK.

use std::net::Ipv4Addr;

/// The Toeplitz key we program into NICs and use in software: the key of
/// Microsoft's RSS verification suite, which comes with published test
/// vectors (checked in this module's tests).
pub const RSS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Entries in the software redirection table when the port has none (a
/// power of two, like every NIC's).
pub const SOFT_RETA_SIZE: usize = 128;

/// The Toeplitz hash of `input` under `key` (RSS). `key` must be at least
/// `input.len() + 4` bytes long; missing key bits count as zero.
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let key_bit = |i: usize| -> u32 {
        key.get(i / 8)
            .map_or(0, |k| u32::from((k >> (7 - i % 8)) & 1))
    };
    let mut window = (0..32).fold(0u32, |w, i| (w << 1) | key_bit(i));
    let mut hash = 0u32;
    for (i, byte) in input.iter().enumerate() {
        for b in 0..8 {
            if byte & (0x80 >> b) != 0 {
                hash ^= window;
            }
            window = (window << 1) | key_bit(32 + i * 8 + b);
        }
    }
    hash
}

/// A TCP flow as a packet carries it on the wire towards us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    /// Sender's address.
    pub src: Ipv4Addr,
    /// Receiver's address (ours).
    pub dst: Ipv4Addr,
    /// Sender's port.
    pub sport: u16,
    /// Receiver's port.
    pub dport: u16,
}

impl FlowTuple {
    /// The RSS input: source address, destination address, source port,
    /// destination port, all in network order.
    pub fn rss_input(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.src.octets());
        b[4..8].copy_from_slice(&self.dst.octets());
        b[8..10].copy_from_slice(&self.sport.to_be_bytes());
        b[10..].copy_from_slice(&self.dport.to_be_bytes());
        b
    }
}

/// What a received Ethernet frame is, for steering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// IPv4 TCP, not fragmented: belongs to the owner of the tuple.
    Tcp(FlowTuple),
    /// An ARP reply: every lcore's neighbour cache wants it.
    ArpReply,
    /// Anything else (ARP requests, ICMP, other protocols): handled where
    /// it landed.
    Other,
}

/// Classifies an Ethernet II frame (no VLAN tags: the port strips them or
/// carries none).
pub fn classify(frame: &[u8]) -> FrameKind {
    if frame.len() < 14 {
        return FrameKind::Other;
    }
    match [frame[12], frame[13]] {
        [0x08, 0x06] => {
            // Ethernet/IPv4 ARP: opcode at bytes 6..8 of the ARP header.
            if frame.len() >= 14 + 8 && frame[14 + 6] == 0 && frame[14 + 7] == 2 {
                FrameKind::ArpReply
            } else {
                FrameKind::Other
            }
        }
        [0x08, 0x00] => {
            let ip = &frame[14..];
            if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
                return FrameKind::Other;
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            // Any fragment (more-fragments bit or an offset): the NIC hashes
            // it by addresses only, and our stack does not reassemble.
            let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
            if ihl < 20 || ip.len() < ihl + 4 || fragment {
                return FrameKind::Other;
            }
            let tcp = &ip[ihl..];
            FrameKind::Tcp(FlowTuple {
                src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
                dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
                sport: u16::from_be_bytes([tcp[0], tcp[1]]),
                dport: u16::from_be_bytes([tcp[2], tcp[3]]),
            })
        }
        _ => FrameKind::Other,
    }
}

/// Toeplitz over a fixed-length input as 12 table lookups: entry
/// `[i][v]` is the hash contribution of byte value `v` at input position
/// `i` (the hash is linear over XOR). 12 KiB, built once.
#[derive(Clone, PartialEq, Eq)]
struct ToeplitzTable(Box<[[u32; 256]; 12]>);

impl ToeplitzTable {
    fn new(key: &[u8]) -> ToeplitzTable {
        let mut t = Box::new([[0u32; 256]; 12]);
        for (i, row) in t.iter_mut().enumerate() {
            for (v, slot) in row.iter_mut().enumerate() {
                let mut input = [0u8; 12];
                input[i] = v as u8;
                *slot = toeplitz(key, &input);
            }
        }
        ToeplitzTable(t)
    }

    fn hash(&self, input: &[u8; 12]) -> u32 {
        input
            .iter()
            .zip(self.0.iter())
            .fold(0, |h, (&b, row)| h ^ row[usize::from(b)])
    }
}

impl std::fmt::Debug for ToeplitzTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ToeplitzTable")
    }
}

/// The owner function: Toeplitz with [`RSS_KEY`] and a redirection table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steering {
    reta: Vec<u16>,
    queues: u16,
    table: ToeplitzTable,
}

impl Steering {
    /// `queues` queues (at least 1) spread round-robin over a table of
    /// `reta_size` entries (the port's RETA size, or [`SOFT_RETA_SIZE`]
    /// when it has none).
    pub fn new(queues: u16, reta_size: usize) -> Steering {
        let queues = queues.max(1);
        let size = if reta_size == 0 {
            SOFT_RETA_SIZE
        } else {
            reta_size
        };
        Steering {
            reta: (0..size)
                .map(|i| (i % usize::from(queues)) as u16)
                .collect(),
            queues,
            table: ToeplitzTable::new(&RSS_KEY),
        }
    }

    /// The redirection table (entry i: the queue for hash bucket i).
    pub fn reta(&self) -> &[u16] {
        &self.reta
    }

    /// The RSS hash of a flow (what [`toeplitz`] with [`RSS_KEY`] gives,
    /// by table).
    pub fn hash(&self, t: &FlowTuple) -> u32 {
        self.table.hash(&t.rss_input())
    }

    /// The queue (lcore index) that owns the flow.
    pub fn owner(&self, t: &FlowTuple) -> u16 {
        if self.queues == 1 {
            return 0;
        }
        self.owner_of_hash(self.hash(t))
    }

    /// The queue for an RSS hash already computed ([`Steering::hash`]).
    pub fn owner_of_hash(&self, hash: u32) -> u16 {
        self.reta[hash as usize % self.reta.len()]
    }

    /// Whether a connection from `local` (port `local_port`) to `remote`
    /// is owned by `queue`: its replies, `remote → local`, hash there.
    pub fn local_port_lands_on(
        &self,
        queue: u16,
        remote: Ipv4Addr,
        remote_port: u16,
        local: Ipv4Addr,
        local_port: u16,
    ) -> bool {
        self.owner(&FlowTuple {
            src: remote,
            dst: local,
            sport: remote_port,
            dport: local_port,
        }) == queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address and port as the vectors write them.
    type Endpoint = (&'static str, u16);

    /// Microsoft's "Verifying the RSS Hash Calculation" IPv4 vectors:
    /// (destination, source, IPv4-only hash, IPv4+TCP hash).
    const VECTORS: [(Endpoint, Endpoint, u32, u32); 5] = [
        (
            ("161.142.100.80", 1766),
            ("66.9.149.187", 2794),
            0x323e_8fc2,
            0x51cc_c178,
        ),
        (
            ("65.69.140.83", 4739),
            ("199.92.111.2", 14230),
            0xd718_262a,
            0xc626_b0ea,
        ),
        (
            ("12.22.207.184", 38024),
            ("24.19.198.95", 12898),
            0xd2d0_a5de,
            0x5c2b_394a,
        ),
        (
            ("209.142.163.6", 2217),
            ("38.27.205.30", 48228),
            0x8298_9176,
            0xafc7_327f,
        ),
        (
            ("202.188.127.2", 1303),
            ("153.39.163.191", 44251),
            0x5d18_09c5,
            0x10e8_28a2,
        ),
    ];

    #[test]
    fn toeplitz_matches_the_published_vectors() {
        for ((dst, dport), (src, sport), ip_only, with_tcp) in VECTORS {
            let t = FlowTuple {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                sport,
                dport,
            };
            let input = t.rss_input();
            assert_eq!(toeplitz(&RSS_KEY, &input[..8]), ip_only, "{src} -> {dst}");
            assert_eq!(
                toeplitz(&RSS_KEY, &input),
                with_tcp,
                "{src}:{sport} -> {dst}:{dport}"
            );
        }
    }

    #[test]
    fn the_table_agrees_with_the_bitwise_hash() {
        let s = Steering::new(2, 0);
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            // xorshift: varied tuples, deterministic.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            let t = FlowTuple {
                src: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
                dst: Ipv4Addr::new(b[4], b[5], b[6], b[7]),
                sport: (x >> 16) as u16,
                dport: (x >> 40) as u16,
            };
            assert_eq!(s.hash(&t), toeplitz(&RSS_KEY, &t.rss_input()), "{t:?}");
        }
    }

    #[test]
    fn owner_follows_the_reta_and_spreads() {
        let s = Steering::new(2, 0);
        assert_eq!(s.reta().len(), SOFT_RETA_SIZE);
        let t = FlowTuple {
            src: "66.9.149.187".parse().unwrap(),
            dst: "161.142.100.80".parse().unwrap(),
            sport: 2794,
            dport: 1766,
        };
        // 0x51ccc178 % 128 = 0x78 = 120, an even bucket: queue 0.
        assert_eq!(s.owner(&t), 0);
        let mut per_queue = [0u32; 2];
        for sport in 10_000..12_000u16 {
            per_queue[usize::from(s.owner(&FlowTuple { sport, ..t }))] += 1;
        }
        assert!(per_queue.iter().all(|&n| n > 800), "{per_queue:?}");
        assert_eq!(Steering::new(1, 512).owner(&t), 0);
    }

    #[test]
    fn a_chosen_local_port_brings_replies_home() {
        let s = Steering::new(4, 512);
        let (us, backend) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for queue in 0..4 {
            let port = (40_000..41_000u16)
                .find(|&p| s.local_port_lands_on(queue, backend, 9001, us, p))
                .expect("a quarter of the ports qualify");
            let reply = FlowTuple {
                src: backend,
                dst: us,
                sport: 9001,
                dport: port,
            };
            assert_eq!(s.owner(&reply), queue);
        }
    }

    fn frame(ethertype: [u8; 2], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn classify_reads_tcp_tuples_and_arp_replies() {
        let mut ip = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        ip.extend_from_slice(&[0x23, 0x29, 0xc3, 0x50, 0, 0, 0, 0]);
        assert_eq!(
            classify(&frame([0x08, 0x00], &ip)),
            FrameKind::Tcp(FlowTuple {
                src: "10.0.0.2".parse().unwrap(),
                dst: "10.0.0.1".parse().unwrap(),
                sport: 9001,
                dport: 50000,
            })
        );
        // Options (IHL 6) move the ports.
        let mut opt = ip.clone();
        opt[0] = 0x46;
        opt.splice(20..20, [1, 1, 1, 1]);
        assert!(
            matches!(classify(&frame([0x08, 0x00], &opt)), FrameKind::Tcp(t) if t.sport == 9001)
        );
        // Fragments (a later one has no ports; the first is hashed by
        // addresses only) and UDP stay local. DF alone is no fragment.
        let mut frag = ip.clone();
        frag[7] = 1;
        assert_eq!(classify(&frame([0x08, 0x00], &frag)), FrameKind::Other);
        let mut first = ip.clone();
        first[6] = 0x20;
        assert_eq!(classify(&frame([0x08, 0x00], &first)), FrameKind::Other);
        assert!(
            matches!(classify(&frame([0x08, 0x00], &ip)), FrameKind::Tcp(_)),
            "DF set"
        );
        let mut udp = ip.clone();
        udp[9] = 17;
        assert_eq!(classify(&frame([0x08, 0x00], &udp)), FrameKind::Other);
        // Truncated headers never panic.
        for n in 0..ip.len() {
            let _ = classify(&frame([0x08, 0x00], &ip[..n]));
        }
        let arp = |op: u8| frame([0x08, 0x06], &[0, 1, 8, 0, 6, 4, 0, op]);
        assert_eq!(classify(&arp(2)), FrameKind::ArpReply);
        assert_eq!(classify(&arp(1)), FrameKind::Other);
        assert_eq!(classify(&[0u8; 5]), FrameKind::Other);
    }
}

//! Fuzz target for the flow-steering classifier ([`crate::steer`]), its
//! seed corpus, and the invariants it checks.
//!
//! Stable Rust has no cargo-fuzz, so the target is a plain function:
//! `dp/fuzz/corpus/steer/` is replayed by `cargo test` (tests/fuzz_corpus.rs)
//! and `fuzz/src/bin/steer.rs` hands it to AFL++. Steering is sans-IO, so
//! none of this needs DPDK.
//!
//! Input: byte 0 picks the number of lcores (1..=8), byte 1 the size of the
//! redirection table, byte 2 the lcore the frame landed on; the rest is the
//! Ethernet frame.
//!
//! Invariants, checked with `assert!` (a violation is a finding):
//! - no panic;
//! - [`classify`] agrees with [`reference_classify`], written separately
//!   from the byte offsets of RFC 791/793 and RFC 826: a TCP tuple only for
//!   an unfragmented IPv4 TCP packet whose ports are in the frame, an ARP
//!   reply only for ARP opcode 2, anything else (short, malformed, VLAN,
//!   other protocols) is `Other` and stays where it landed;
//! - the owner of a flow is below the number of lcores and equals the owner
//!   that the bit-by-bit Toeplitz hash ([`toeplitz`]) over the tuple bytes
//!   read straight from the frame gives through a round-robin table;
//! - the return-path rule holds: for a backend connection with the flow's
//!   tuple as its replies, exactly the owner's lcore accepts the local port
//!   ([`Steering::local_port_lands_on`]).
//!
//! The key is not symmetric (Microsoft's verification key), so the two
//! directions of a connection may have different owners; nothing here
//! expects otherwise.

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use crate::steer::{FlowTuple, FrameKind, RSS_KEY, Steering, classify, toeplitz};

/// Most lcores the target steers across.
pub const MAX_LCORES: u16 = 8;

/// Redirection-table sizes byte 1 chooses from (0: the software default;
/// 96: not a power of two, which a port can report).
pub const RETA_SIZES: [usize; 4] = [0, 64, 96, 512];

/// Where the data path sends a frame (what `engine`'s lanes do with
/// [`classify`] and [`Steering::owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Handled on the lcore it landed on: its flow is this lcore's, or it
    /// is not steered (the defined default for anything but TCP and ARP
    /// replies).
    Local,
    /// Handed over to the lcore that owns its flow.
    HandTo(u16),
    /// An ARP reply: handled here and copied to every other lcore.
    Everyone,
}

/// What one run of the target saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// How the frame was classified.
    pub kind: FrameKind,
    /// Where it went.
    pub route: Route,
}

/// The decoded header of an input.
#[derive(Debug, Clone, Copy)]
struct Setup {
    lcores: u16,
    reta_size: usize,
    landed_on: u16,
}

impl Setup {
    fn decode(b0: u8, b1: u8, b2: u8) -> Setup {
        let lcores = u16::from(b0) % MAX_LCORES + 1;
        Setup {
            lcores,
            reta_size: RETA_SIZES[usize::from(b1) % RETA_SIZES.len()],
            landed_on: u16::from(b2) % lcores,
        }
    }

    fn index(&self) -> usize {
        let reta = RETA_SIZES.iter().position(|&r| r == self.reta_size);
        usize::from(self.lcores - 1) * RETA_SIZES.len() + reta.unwrap_or(0)
    }
}

/// One [`Steering`] per (lcores, table size), built on first use: building
/// one fills a 12 KiB lookup table, too slow to repeat per input.
fn steering_for(setup: &Setup) -> &'static Steering {
    const N: usize = MAX_LCORES as usize * RETA_SIZES.len();
    static CACHE: [OnceLock<Steering>; N] = [const { OnceLock::new() }; N];
    CACHE[setup.index()].get_or_init(|| Steering::new(setup.lcores, setup.reta_size))
}

/// The route of a frame that landed on lcore `landed_on`.
pub fn route(steering: &Steering, landed_on: u16, frame: &[u8]) -> (FrameKind, Route) {
    let kind = classify(frame);
    let route = match kind {
        FrameKind::Tcp(t) => match steering.owner(&t) {
            owner if owner == landed_on => Route::Local,
            owner => Route::HandTo(owner),
        },
        FrameKind::ArpReply => Route::Everyone,
        FrameKind::Other => Route::Local,
    };
    (kind, route)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The steering class of an Ethernet II frame, read with plain offsets:
/// EtherType at 12; ARP opcode at 14 + 6; IPv4 version/IHL at 14, flags and
/// fragment offset at 20, protocol at 23, addresses at 26 and 30, and the
/// TCP ports at the start of the IPv4 payload.
pub fn reference_classify(frame: &[u8]) -> FrameKind {
    const ETH: usize = 14;
    match be16(frame, 12) {
        Some(0x0806) if be16(frame, ETH + 6) == Some(2) => FrameKind::ArpReply,
        Some(0x0800) => {
            let Some(&ver_ihl) = frame.get(ETH) else {
                return FrameKind::Other;
            };
            let header_len = usize::from(ver_ihl & 0x0f) * 4;
            let flags_frag = be16(frame, ETH + 6).unwrap_or(0);
            let more_fragments = flags_frag & 0x2000 != 0;
            let offset = flags_frag & 0x1fff;
            let tcp = frame.get(ETH + 9) == Some(&6);
            let ports_at = ETH + header_len;
            if ver_ihl >> 4 != 4 || header_len < 20 || !tcp || more_fragments || offset != 0 {
                return FrameKind::Other;
            }
            let addr = |at: usize| {
                frame
                    .get(at..at + 4)
                    .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]))
            };
            match (
                addr(ETH + 12),
                addr(ETH + 16),
                frame.get(ports_at..ports_at + 4),
            ) {
                (Some(src), Some(dst), Some(p)) => FrameKind::Tcp(FlowTuple {
                    src,
                    dst,
                    sport: u16::from_be_bytes([p[0], p[1]]),
                    dport: u16::from_be_bytes([p[2], p[3]]),
                }),
                _ => FrameKind::Other,
            }
        }
        _ => FrameKind::Other,
    }
}

/// The RSS input of a classified TCP frame, copied from the frame itself:
/// source and destination address, then source and destination port.
fn rss_input_from_frame(frame: &[u8]) -> [u8; 12] {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let mut input = [0u8; 12];
    input[..8].copy_from_slice(&frame[26..34]);
    input[8..].copy_from_slice(&frame[14 + ihl..14 + ihl + 4]);
    input
}

/// The owner by the bit-by-bit hash and a round-robin table of
/// `reta_size` entries (the software default when 0).
fn reference_owner(setup: &Setup, input: &[u8; 12]) -> u16 {
    let size = if setup.reta_size == 0 {
        crate::steer::SOFT_RETA_SIZE
    } else {
        setup.reta_size
    };
    if setup.lcores == 1 {
        return 0;
    }
    let bucket = toeplitz(&RSS_KEY, input) as usize % size;
    (bucket % usize::from(setup.lcores)) as u16
}

/// Checks the owner of a TCP flow against the reference and the
/// return-path rule.
fn check_owner(steering: &Steering, setup: &Setup, frame: &[u8], t: &FlowTuple) -> u16 {
    let input = rss_input_from_frame(frame);
    assert_eq!(t.rss_input(), input, "tuple differs from the frame's bytes");
    let owner = steering.owner(t);
    assert!(
        owner < setup.lcores,
        "owner {owner} of {} lcores",
        setup.lcores
    );
    assert_eq!(
        owner,
        reference_owner(setup, &input),
        "owner differs: {t:?}"
    );
    if setup.lcores > 1 {
        assert_eq!(steering.hash(t), toeplitz(&RSS_KEY, &input), "hash {t:?}");
    }
    let accepting: Vec<u16> = (0..setup.lcores)
        .filter(|&q| steering.local_port_lands_on(q, t.src, t.sport, t.dst, t.dport))
        .collect();
    assert_eq!(accepting, [owner], "return path of {t:?}");
    owner
}

/// The fuzz target.
pub fn steer(data: &[u8]) -> Outcome {
    let (setup, frame) = match data {
        [b0, b1, b2, frame @ ..] => (Setup::decode(*b0, *b1, *b2), frame),
        _ => (Setup::decode(0, 0, 0), data),
    };
    let steering = steering_for(&setup);
    let (kind, route) = route(steering, setup.landed_on, frame);
    assert_eq!(kind, reference_classify(frame), "classification differs");
    match (kind, route) {
        (FrameKind::Tcp(t), route) => {
            let owner = check_owner(steering, &setup, frame, &t);
            let expected = if owner == setup.landed_on {
                Route::Local
            } else {
                Route::HandTo(owner)
            };
            assert_eq!(route, expected);
        }
        (FrameKind::ArpReply, route) => assert_eq!(route, Route::Everyone),
        (FrameKind::Other, route) => assert_eq!(route, Route::Local, "the default is local"),
    }
    Outcome { kind, route }
}

/// A seed: a named input.
#[derive(Debug, Clone)]
pub struct Seed {
    /// File name in the corpus directory.
    pub name: String,
    /// The input (three setup bytes, then the frame).
    pub input: Vec<u8>,
}

/// An Ethernet II frame: zero MACs, `ethertype`, `payload`.
fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header (no checksum: steering does not read it) with `options`
/// and `proto`, followed by `payload`.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let ihl = 5 + options.len() / 4;
    let total = (ihl * 4 + payload.len()) as u16;
    let mut p = vec![0x40 | ihl as u8, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(options);
    p.extend_from_slice(payload);
    p
}

/// A 20-byte TCP header (SYN) from `sport` to `dport`.
fn tcp_header(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    ethernet(0x0800, &ipv4(src, dst, 6, &[], &tcp_header(sport, dport)))
}

/// Frames of every class, malformed ones included.
fn seed_frames() -> Vec<(&'static str, Vec<u8>)> {
    let (client, us) = ([66, 9, 149, 187], [161, 142, 100, 80]);
    let tcp = tcp_frame(client, us, 2794, 1766);
    let mut frames = vec![
        ("tcp-ms-vector", tcp.clone()),
        (
            "tcp-backend-reply",
            tcp_frame([10, 0, 0, 2], [10, 0, 0, 1], 9001, 50000),
        ),
        (
            "tcp-client-443",
            tcp_frame([192, 0, 2, 7], [10, 0, 0, 1], 51234, 443),
        ),
        ("tcp-ports-zero", tcp_frame([0; 4], [0; 4], 0, 0)),
        ("tcp-all-ones", tcp_frame([255; 4], [255; 4], 65535, 65535)),
        (
            "tcp-ip-options",
            ethernet(
                0x0800,
                &ipv4(client, us, 6, &[1, 1, 1, 0], &tcp_header(80, 8080)),
            ),
        ),
        (
            "tcp-ports-only",
            ethernet(0x0800, &ipv4(client, us, 6, &[], &[0x1f, 0x90, 0x00, 0x50])),
        ),
        ("udp", ethernet(0x0800, &ipv4(client, us, 17, &[], &[0; 8]))),
        (
            "icmp",
            ethernet(0x0800, &ipv4(client, us, 1, &[], &[8, 0, 0, 0])),
        ),
        ("arp-request", ethernet(0x0806, &[0, 1, 8, 0, 6, 4, 0, 1])),
        (
            "arp-reply",
            ethernet(0x0806, &[0, 1, 8, 0, 6, 4, 0, 2, 2, 0, 0]),
        ),
        ("ipv6", ethernet(0x86dd, &[0x60; 40])),
        ("vlan-tcp", {
            let mut f = tcp.clone();
            f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
            f
        }),
        ("short", vec![0x08, 0x00, 0x45]),
        ("empty", Vec::new()),
    ];
    let mut frag = tcp.clone();
    frag[14 + 7] = 0x10;
    frames.push(("tcp-fragment-offset", frag));
    let mut first = tcp.clone();
    first[14 + 6] = 0x20;
    frames.push(("tcp-first-fragment", first));
    let mut bad_ihl = tcp.clone();
    bad_ihl[14] = 0x44;
    frames.push(("tcp-ihl-4", bad_ihl));
    let mut long_ihl = tcp.clone();
    long_ihl[14] = 0x4f;
    frames.push(("tcp-ihl-15-truncated", long_ihl));
    let mut v6_version = tcp.clone();
    v6_version[14] = 0x65;
    frames.push(("tcp-version-6", v6_version));
    frames.push(("tcp-truncated-ports", tcp[..14 + 20 + 3].to_vec()));
    frames
}

/// The seed corpus: every frame under a few lcore/table settings.
pub fn seeds() -> Vec<Seed> {
    let setups: [(u8, u8); 3] = [(1, 0), (3, 1), (7, 3)];
    let mut seeds = Vec::new();
    for (i, (name, frame)) in seed_frames().into_iter().enumerate() {
        let (lcores, reta) = setups[i % setups.len()];
        let mut input = vec![lcores, reta, i as u8];
        input.extend_from_slice(&frame);
        seeds.push(Seed {
            name: name.to_string(),
            input,
        });
    }
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_cover_every_route() {
        let routes: Vec<Route> = seeds().iter().map(|s| steer(&s.input).route).collect();
        assert!(routes.contains(&Route::Everyone));
        assert!(routes.contains(&Route::Local));
        assert!(routes.iter().any(|r| matches!(r, Route::HandTo(_))));
    }

    #[test]
    fn every_prefix_of_every_seed_is_handled() {
        for seed in seeds() {
            for cut in 0..seed.input.len() {
                steer(&seed.input[..cut]);
            }
        }
    }
}

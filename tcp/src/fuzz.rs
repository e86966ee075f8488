//! Fuzz target for the stack's receive path: frame parsing, the demux to
//! connections, listeners and TIME-WAIT records, and what each sends back;
//! its seed corpus; and the invariants it checks.
//!
//! Stable Rust has no cargo-fuzz, so the target is a plain function:
//! `tcp/fuzz/corpus/ingress/` is replayed by `cargo test`
//! (tests/fuzz_corpus.rs) and `fuzz/src/bin/tcp_ingress.rs` hands it to
//! AFL++.
//!
//! Input: byte 0 configures the stack (medium, backlog, `max_time_wait`,
//! buffer sizes, keep-alive, `time_wait`); the rest is a script of steps
//! (see [`Step`]): raw frames, TCP segments built from fields (with
//! sequence and acknowledgement numbers either given or taken from what
//! the stack sent on that 4-tuple, so scripts reach established
//! connections and TIME-WAIT), a handshake helper, the application's calls
//! (accept, send, recv, shutdown, close, abort, connect, re-listen), ARP,
//! ICMP and UDP frames, and clock advances. The stack polls after every
//! step; in Ethernet mode the harness answers its ARP requests.
//!
//! Invariants, checked with `assert!` (a violation is a finding):
//! - no panic (the fuzz build has overflow checks: no count wraps);
//! - every frame the stack sends is well formed, checked without smoltcp
//!   (IPv4 header, lengths, [`packets::internet_checksum`] over the IPv4
//!   header, the TCP pseudo-header and segment, ICMP; sane TCP flags);
//! - it sends TCP only to 4-tuples a frame to us came from or the
//!   application connected, ICMP only to sources of frames to us, and ARP
//!   only from our own MAC and address;
//! - the counters agree: frames in and out equal what the wire carried,
//!   every counter only grows, half-open plus queued connections stay
//!   within the backlog, connections are at most those plus the handles
//!   accepted or opened, TIME-WAIT records stay within `max_time_wait` and
//!   match the memory report, and every record created is accounted for;
//! - events name only the listener and handles the application holds, and
//!   calls on a held handle never say it is invalid;
//! - after the script, two minutes of silence (polled) expire every
//!   TIME-WAIT record and half-open connection and every connection the
//!   application gave up: what remains is what it holds or has not
//!   accepted.
//!
//! `cargo afl` builds with `cfg(fuzzing)`, under which smoltcp accepts TCP
//! segments whatever their checksum (so does the stack's own check, which
//! uses smoltcp's). A finding from such a build is replayed with `cargo
//! test`, where checksums count; if it needs a bad checksum, repair it (in
//! a built segment, clear bit 5 of `who`) before calling it a bug.

mod packets;
mod seeds;
mod steps;

use std::collections::{BTreeMap, HashSet};

use smoltcp::phy::{Device, Medium};
use smoltcp::wire::{EthernetAddress, HardwareAddress, Ipv4Address, Ipv4Cidr};

use crate::wire::{self, WirePort};
use crate::{ConnId, Duration, Event, Instant, ListenerId, Stack, StackConfig, Stats, TcpError};
use packets::{Emitted, LISTEN_PORT, OUR_ADDR, OUR_MAC, PEER_ADDRS, Segment};

pub use packets::internet_checksum;
pub use seeds::{Seed, seeds};
pub use steps::{App, Number, SegmentStep, Step};

/// Most script steps per run (keeps one execution cheap).
const MAX_STEPS: usize = 64;

/// A 4-tuple from the peer's side: its address and port, and our port.
type Tuple = ([u8; 4], u16, u16);

/// What the harness knows of one 4-tuple's sequence spaces.
#[derive(Debug, Clone, Copy, Default)]
struct Track {
    /// The peer's next sequence number (after what the harness sent).
    peer_next: u32,
    /// The stack's next sequence number (after what it sent last).
    our_next: u32,
}

/// What one run of the target saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngressOutcome {
    /// Frames given to the stack.
    pub frames_in: u64,
    /// Frames it sent.
    pub frames_out: u64,
    /// A connection completed its handshake (accept queue or connect).
    pub established: bool,
    /// The stack's counters at the end of the script (before the sweep).
    pub stats: Stats,
}

/// The stack under test, the peer's view of the wire, and the
/// application's handles.
struct Harness {
    stack: Stack,
    dev: WirePort,
    peer: WirePort,
    ethernet: bool,
    now: Instant,
    backlog: usize,
    max_time_wait: usize,
    listener: ListenerId,
    /// Handles the application holds (accepted or connected, not closed).
    held: Vec<ConnId>,
    /// Handles ever accepted or opened.
    opened: usize,
    tracks: BTreeMap<Tuple, Track>,
    /// Sources of IPv4 frames to us.
    sources: HashSet<[u8; 4]>,
    frames_in: u64,
    frames_out: u64,
    established: bool,
    last_stats: Stats,
}

/// Decoded configuration byte.
fn stack_config(b: u8) -> (StackConfig, bool, usize) {
    let ethernet = b & 1 != 0;
    let hw = if ethernet {
        HardwareAddress::Ethernet(EthernetAddress(OUR_MAC))
    } else {
        HardwareAddress::Ip
    };
    let [a, b1, c, d] = OUR_ADDR;
    let mut cfg = StackConfig::new(hw, Ipv4Cidr::new(Ipv4Address::new(a, b1, c, d), 24));
    cfg.seed = 0x5eed;
    cfg.max_time_wait = 1 + usize::from((b >> 3) & 3);
    if b & 0x20 != 0 {
        cfg.socket.rx_buffer = 512;
        cfg.socket.tx_buffer = 512;
    }
    if b & 0x40 != 0 {
        cfg.socket.keep_alive = Some(Duration::from_secs(1));
    }
    cfg.time_wait = if b & 0x80 != 0 {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(60)
    };
    (cfg, ethernet, 1 + usize::from((b >> 1) & 3))
}

impl Harness {
    fn new(config: u8) -> Self {
        let (cfg, ethernet, backlog) = stack_config(config);
        let max_time_wait = cfg.max_time_wait;
        let medium = if ethernet {
            Medium::Ethernet
        } else {
            Medium::Ip
        };
        let mtu = if ethernet { 1514 } else { 1500 };
        let (dev, peer) = wire::pair(medium, mtu, 4096);
        let now = Instant::from_secs(10);
        let mut stack = Stack::new(cfg, dev.capabilities(), now).expect("valid config");
        let listener = stack.listen(LISTEN_PORT, backlog).expect("listen");
        Harness {
            stack,
            dev,
            peer,
            ethernet,
            now,
            backlog,
            max_time_wait,
            listener,
            held: Vec::new(),
            opened: 0,
            tracks: BTreeMap::new(),
            sources: HashSet::new(),
            frames_in: 0,
            frames_out: 0,
            established: false,
            last_stats: Stats::default(),
        }
    }

    /// Put a frame (IPv4 packet, wrapped for the medium) on the wire.
    fn inject_packet(&mut self, packet: &[u8]) {
        let frame = if self.ethernet {
            let src: [u8; 4] = packet
                .get(12..16)
                .and_then(|s| s.try_into().ok())
                .unwrap_or([0; 4]);
            packets::ethernet(OUR_MAC, packets::peer_mac(src), 0x0800, packet)
        } else {
            packet.to_vec()
        };
        self.inject_frame(&frame);
    }

    /// Put a frame on the wire as it is, noting what it shows the stack.
    fn inject_frame(&mut self, frame: &[u8]) {
        if let Some(seen) = packets::parse_injected(self.ethernet, frame) {
            self.sources.insert(seen.src);
            if let Some((peer_port, our_port)) = seen.ports {
                self.tracks
                    .entry((seen.src, peer_port, our_port))
                    .or_default();
            }
        }
        self.peer.inject(frame);
        self.frames_in += 1;
    }

    /// Send a segment, tracking the peer's sequence space.
    fn send_segment(&mut self, s: &Segment, bad_checksum: bool) {
        let key = (s.peer.0, s.peer.1, s.our_port);
        let packet = s.packet(bad_checksum);
        self.inject_packet(&packet);
        if !bad_checksum {
            let t = self.tracks.entry(key).or_default();
            t.peer_next = s.seq.wrapping_add(s.seq_len());
        }
    }

    /// Poll, check what came out, answer ARP requests, check the counters.
    fn poll(&mut self) {
        for _ in 0..3 {
            let connections = self.stack.connection_count();
            self.stack.poll(self.now, &mut self.dev);
            self.drain_events();
            let arp_requests = self.collect_output(connections);
            if arp_requests.is_empty() {
                break;
            }
            for addr in arp_requests {
                self.inject_frame(&packets::arp_from_peer(2, addr));
            }
        }
        self.check_counters();
    }

    /// Take and check every frame the stack sent; returns the peer
    /// addresses it asked ARP about.
    fn collect_output(&mut self, connections_before: usize) -> Vec<[u8; 4]> {
        let mut arp = Vec::new();
        let mut n = 0;
        while let Some(frame) = self.peer.take_incoming() {
            n += 1;
            match packets::parse_emitted(self.ethernet, &frame) {
                Ok(e) => self.check_emitted(e, &mut arp),
                Err(why) => panic!("malformed frame from the stack ({why}): {frame:02x?}"),
            }
        }
        self.frames_out += n;
        let conns = connections_before.max(self.stack.connection_count()) as u64;
        let bound = 8 + 32 * (conns + 1) + self.frames_in;
        assert!(n <= bound, "{n} frames out from one poll");
        arp
    }

    fn check_emitted(&mut self, e: Emitted, arp: &mut Vec<[u8; 4]>) {
        match e {
            Emitted::Tcp {
                peer,
                our_port,
                seq,
                flags,
                seq_len,
            } => {
                let track = self.tracks.get_mut(&(peer.0, peer.1, our_port));
                let track = track.unwrap_or_else(|| panic!("TCP to an unknown 4-tuple {peer:?}"));
                if flags & packets::flags::RST == 0 {
                    track.our_next = seq.wrapping_add(seq_len);
                }
            }
            Emitted::Icmp(dst) => assert!(self.sources.contains(&dst), "ICMP to {dst:?}"),
            Emitted::Arp(1, target) => {
                assert!(self.ethernet, "ARP on an IP medium");
                if PEER_ADDRS.contains(&target) {
                    arp.push(target);
                }
            }
            Emitted::Arp(_, target) => {
                assert!(PEER_ADDRS.contains(&target), "ARP reply to {target:?}");
            }
        }
    }

    /// Events name only our listener and handles we hold.
    fn drain_events(&mut self) {
        while let Some(e) = self.stack.poll_event() {
            match e {
                Event::Accept(l) => {
                    assert_eq!(l, self.listener, "Accept for another listener");
                    self.established = true;
                }
                Event::Connected(c) => {
                    assert!(self.held.contains(&c), "Connected({c:?}) not held");
                    self.established = true;
                }
                Event::Readable(c) | Event::Writable(c) | Event::Closed(c) | Event::Reset(c) => {
                    assert!(self.held.contains(&c), "{e:?} for a handle not held");
                }
            }
        }
    }

    /// The stack's counters against the wire, the backlog and each other.
    fn check_counters(&mut self) {
        let s = self.stack.stats();
        let l = &self.last_stats;
        let pairs = [
            (s.rx_frames, l.rx_frames),
            (s.tx_frames, l.tx_frames),
            (s.syn_admitted, l.syn_admitted),
            (s.syn_evicted, l.syn_evicted),
            (s.syn_dropped, l.syn_dropped),
            (s.syn_bad_checksum, l.syn_bad_checksum),
            (s.time_wait_created, l.time_wait_created),
            (s.time_wait_reused, l.time_wait_reused),
            (s.time_wait_expired, l.time_wait_expired),
            (s.time_wait_evicted, l.time_wait_evicted),
            (s.time_wait_acks, l.time_wait_acks),
            (s.timer_fires, l.timer_fires),
        ];
        assert!(
            pairs.iter().all(|(now, before)| now >= before),
            "a counter went back"
        );
        assert_eq!(s.rx_frames, self.frames_in, "frames received");
        assert_eq!(s.tx_frames, self.frames_out, "frames sent");
        assert!(s.syn_admitted >= s.syn_evicted);
        let tw = self.stack.time_wait_count();
        assert!(tw <= self.max_time_wait, "{tw} TIME-WAIT records");
        let gone = s.time_wait_reused + s.time_wait_expired + s.time_wait_evicted;
        assert!(
            s.time_wait_created >= gone + tw as u64,
            "TIME-WAIT records unaccounted"
        );
        let m = self.stack.memory_usage();
        assert_eq!(m.time_wait, tw);
        assert!(m.time_wait_queue >= tw, "a record without an expiry");
        assert_eq!(m.connections, self.stack.connection_count());
        let (half, queued) = self.listener_counts();
        assert!(
            half + queued <= self.backlog,
            "{half} half-open + {queued} queued"
        );
        let conns = self.stack.connection_count();
        assert!(
            conns >= half + queued && conns <= half + queued + self.opened,
            "{conns} connections"
        );
        self.last_stats = s;
    }

    fn listener_counts(&mut self) -> (usize, usize) {
        let half = self
            .stack
            .half_open_len(self.listener)
            .expect("our listener");
        let queued = self
            .stack
            .accept_queue_len(self.listener)
            .expect("our listener");
        (half, queued)
    }
}

/// The end of a call on a held handle: anything but "invalid handle".
fn held_call<T>(r: Result<T, TcpError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(TcpError::InvalidHandle) => panic!("a held handle was invalid"),
        Err(_) => None,
    }
}

/// The configuration byte and steps an input decodes to (for triage: what
/// a crashing input does).
pub fn decode_script(data: &[u8]) -> (u8, Vec<Step>) {
    let Some((&config, script)) = data.split_first() else {
        return (0, Vec::new());
    };
    let mut c = steps::Script::new(script);
    let mut out = Vec::new();
    while !c.is_empty() && out.len() < MAX_STEPS {
        out.push(Step::decode(&mut c));
    }
    (config, out)
}

/// The fuzz target.
pub fn ingress(data: &[u8]) -> IngressOutcome {
    let Some((&config, script)) = data.split_first() else {
        return IngressOutcome::default();
    };
    let mut h = Harness::new(config);
    let mut c = steps::Script::new(script);
    let mut n = 0;
    while !c.is_empty() && n < MAX_STEPS {
        let step = Step::decode(&mut c);
        h.run(step);
        h.poll();
        n += 1;
    }
    let outcome = IngressOutcome {
        frames_in: h.frames_in,
        frames_out: h.frames_out,
        established: h.established,
        stats: h.stack.stats(),
    };
    h.sweep();
    outcome
}

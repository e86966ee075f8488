//! The script language of the ingress target: each [`Step`] decodes from
//! (and encodes to) a few bytes, and the harness runs it.

use super::packets::{self, LISTEN_PORT, PEER_ADDRS, Segment, flags};
use super::{Harness, Track, Tuple, held_call};
use crate::Duration;

/// A cursor over the script. Reads past the end give zeros.
#[derive(Debug)]
pub(super) struct Script<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Script<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Script { data, pos: 0 }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos += n;
        self.data[start..end].to_vec()
    }
}

/// The application's calls (on the held handle a step names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// Accept every queued connection.
    Accept,
    /// Send `arg * 8` bytes.
    Send,
    /// Read everything queued.
    Recv,
    /// Send a FIN, keep reading.
    Shutdown,
    /// Close gracefully and give up the handle.
    Close,
    /// Reset and give up the handle.
    Abort,
    /// Connect to a peer's port 9000 + `arg % 4`.
    Connect,
    /// Stop listening and listen again.
    Relisten,
}

const APPS: [App; 8] = [
    App::Accept,
    App::Send,
    App::Recv,
    App::Shutdown,
    App::Close,
    App::Abort,
    App::Connect,
    App::Relisten,
];

/// Sequence or acknowledgement number of a built segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    /// What the harness tracked for the 4-tuple, plus a small offset.
    Tracked(i8),
    /// As given.
    Absolute(u32),
}

/// A TCP segment built from fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStep {
    /// Bits 0-2: peer port (and address); bit 3: pick among the 4-tuples
    /// seen instead; bit 4: to a closed port; bit 5: bad checksum.
    pub who: u8,
    /// TCP flag bits.
    pub flags: u8,
    /// Bits 0-1: window class; 2-4: options (MSS, window scale, SACK
    /// permitted); 5-7: payload length class.
    pub extra: u8,
    /// Sequence number.
    pub seq: Number,
    /// Acknowledgement number.
    pub ack: Number,
    /// Payload length for length class 6.
    pub len: u8,
}

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A frame as it is (IPv4 packet, or Ethernet frame on that medium).
    Raw(Vec<u8>),
    /// A TCP segment built from fields.
    Segment(SegmentStep),
    /// A SYN with this ISN from a peer port to the listener, then the ACK of
    /// the stack's SYN-ACK.
    Handshake {
        /// Peer index (as in [`SegmentStep::who`]).
        peer: u8,
        /// The peer's ISN.
        isn: u32,
    },
    /// An application call on held handle `target` (modulo their number).
    App {
        /// Which call.
        action: App,
        /// Which handle.
        target: u8,
        /// Its argument.
        arg: u8,
    },
    /// Advance the clock (low 6 bits times 1 ms, 50 ms, 1 s or 10 s).
    Advance(u8),
    /// An ARP request or reply from a peer.
    Arp {
        /// Reply (else request).
        reply: bool,
        /// Which peer address.
        peer: u8,
    },
    /// An ICMP echo request or a UDP datagram from a peer.
    Datagram {
        /// ICMP (else UDP).
        icmp: bool,
        /// Which peer address.
        peer: u8,
        /// Payload length.
        len: u8,
    },
    /// FIN+ACK with the tracked numbers on the 4-tuple `who` picks.
    PeerClose {
        /// As in [`SegmentStep::who`].
        who: u8,
    },
}

const WINDOWS: [u16; 4] = [65535, 0, 1, 512];
const LENGTHS: [usize; 8] = [0, 1, 10, 100, 536, 1400, 0, 0];

fn number(c: &mut Script<'_>, absolute: bool) -> Number {
    if absolute {
        Number::Absolute(c.u32())
    } else {
        Number::Tracked(c.u8() as i8)
    }
}

fn put_number(out: &mut Vec<u8>, n: Number) {
    match n {
        Number::Absolute(v) => out.extend_from_slice(&v.to_be_bytes()),
        Number::Tracked(d) => out.push(d as u8),
    }
}

impl Step {
    /// Decode one step; the low 3 bits of its first byte say which.
    pub(super) fn decode(c: &mut Script<'_>) -> Step {
        let op = c.u8();
        let p = op >> 3;
        match op & 7 {
            0 => {
                let n = usize::from(c.u8());
                Step::Raw(c.take(n))
            }
            1 => {
                let (who, flags, extra) = (c.u8(), c.u8(), c.u8());
                let seq = number(c, who & 0x40 != 0);
                let ack = number(c, who & 0x80 != 0);
                let len = if extra >> 5 == 6 { c.u8() } else { 0 };
                Step::Segment(SegmentStep {
                    who,
                    flags,
                    extra,
                    seq,
                    ack,
                    len,
                })
            }
            2 => Step::Handshake {
                peer: p,
                isn: c.u32(),
            },
            3 => Step::App {
                action: APPS[usize::from(p & 7)],
                target: p >> 3,
                arg: c.u8(),
            },
            4 => Step::Advance(c.u8()),
            5 => Step::Arp {
                reply: p & 1 != 0,
                peer: p >> 1,
            },
            6 => Step::Datagram {
                icmp: p & 1 != 0,
                peer: p >> 1,
                len: c.u8(),
            },
            _ => Step::PeerClose { who: p },
        }
    }

    /// The bytes [`Step::decode`] reads back as this step (fields out of
    /// range are truncated to what the encoding holds).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Step::Raw(bytes) => {
                let n = bytes.len().min(255);
                let mut out = vec![0, n as u8];
                out.extend_from_slice(&bytes[..n]);
                out
            }
            Step::Segment(s) => {
                let mut out = vec![1, s.who, s.flags, s.extra];
                put_number(&mut out, s.seq);
                put_number(&mut out, s.ack);
                if s.extra >> 5 == 6 {
                    out.push(s.len);
                }
                out
            }
            Step::Handshake { peer, isn } => {
                let mut out = vec![2 | peer << 3];
                out.extend_from_slice(&isn.to_be_bytes());
                out
            }
            Step::App {
                action,
                target,
                arg,
            } => {
                let a = APPS.iter().position(|x| x == action).unwrap_or(0) as u8;
                vec![3 | (a | target << 3) << 3, *arg]
            }
            Step::Advance(b) => vec![4, *b],
            Step::Arp { reply, peer } => vec![5 | (u8::from(*reply) | peer << 1) << 3],
            Step::Datagram { icmp, peer, len } => {
                vec![6 | (u8::from(*icmp) | peer << 1) << 3, *len]
            }
            Step::PeerClose { who } => vec![7 | who << 3],
        }
    }
}

/// A payload of `len` pattern bytes.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(salt))
        .collect()
}

/// Options a segment carries, by bits 2-4 of `extra`.
fn options(extra: u8) -> Vec<u8> {
    let mut o = Vec::new();
    if extra & 0x04 != 0 {
        o.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    }
    if extra & 0x08 != 0 {
        o.extend_from_slice(&[1, 3, 3, 7]);
    }
    if extra & 0x10 != 0 {
        o.extend_from_slice(&[4, 2]);
    }
    o
}

impl Harness {
    /// The 4-tuple `who` names: a peer port to the listener (or a closed
    /// port), or one of the 4-tuples seen so far.
    fn tuple_for(&self, who: u8) -> Tuple {
        let known = self.tracks.len();
        if who & 0x08 != 0 && known > 0 {
            let idx = usize::from(who & 7) % known;
            return *self.tracks.keys().nth(idx).expect("in range");
        }
        let p = who & 7;
        let addr = PEER_ADDRS[usize::from(p >> 2)];
        let our_port = if who & 0x10 != 0 { 81 } else { LISTEN_PORT };
        (addr, 40000 + u16::from(p & 3), our_port)
    }

    fn track(&self, t: &Tuple) -> Track {
        self.tracks.get(t).copied().unwrap_or_default()
    }

    fn segment(&mut self, s: &SegmentStep) {
        let t = self.tuple_for(s.who);
        let track = self.track(&t);
        let resolve = |n: Number, base: u32| match n {
            Number::Absolute(v) => v,
            Number::Tracked(d) => base.wrapping_add_signed(i32::from(d)),
        };
        let len = match s.extra >> 5 {
            6 => usize::from(s.len),
            class => LENGTHS[usize::from(class)],
        };
        let seg = Segment {
            peer: (t.0, t.1),
            our_port: t.2,
            seq: resolve(s.seq, track.peer_next),
            ack: resolve(s.ack, track.our_next),
            flags: s.flags,
            window: WINDOWS[usize::from(s.extra & 3)],
            options: options(s.extra),
            payload: pattern(len, s.flags),
        };
        self.send_segment(&seg, s.who & 0x20 != 0);
    }

    fn handshake(&mut self, peer: u8, isn: u32) {
        let t = self.tuple_for(peer & 7);
        let syn = Segment {
            peer: (t.0, t.1),
            our_port: t.2,
            seq: isn,
            ack: 0,
            flags: flags::SYN,
            window: 65535,
            options: vec![2, 4, 0x05, 0xb4],
            payload: Vec::new(),
        };
        self.send_segment(&syn, false);
        self.poll();
        let ack = Segment {
            seq: isn.wrapping_add(1),
            ack: self.track(&t).our_next,
            flags: flags::ACK,
            options: Vec::new(),
            ..syn
        };
        self.send_segment(&ack, false);
    }

    fn peer_close(&mut self, who: u8) {
        let t = self.tuple_for(who);
        let track = self.track(&t);
        let fin = Segment {
            peer: (t.0, t.1),
            our_port: t.2,
            seq: track.peer_next,
            ack: track.our_next,
            flags: flags::FIN | flags::ACK,
            window: 65535,
            options: Vec::new(),
            payload: Vec::new(),
        };
        self.send_segment(&fin, false);
    }

    /// Run one step (the caller polls after it).
    pub(super) fn run(&mut self, step: Step) {
        match step {
            Step::Raw(frame) => self.inject_frame(&frame),
            Step::Segment(s) => self.segment(&s),
            Step::Handshake { peer, isn } => self.handshake(peer, isn),
            Step::App {
                action,
                target,
                arg,
            } => self.app(action, target, arg),
            Step::Advance(b) => {
                let unit = [1, 50, 1000, 10_000][usize::from(b >> 6)];
                self.now += Duration::from_millis(u64::from(b & 0x3f) * unit);
            }
            Step::Arp { reply, peer } => {
                let addr = PEER_ADDRS[usize::from(peer & 1)];
                self.inject_frame(&packets::arp_from_peer(if reply { 2 } else { 1 }, addr));
            }
            Step::Datagram { icmp, peer, len } => {
                let addr = PEER_ADDRS[usize::from(peer & 1)];
                let data = pattern(usize::from(len % 64), len);
                let packet = if icmp {
                    packets::icmp_echo(addr, u16::from(len), &data)
                } else {
                    packets::udp(addr, 5000, 53, &data)
                };
                self.inject_packet(&packet);
            }
            Step::PeerClose { who } => self.peer_close(who),
        }
    }

    /// An application call; on a handle, anything but "invalid handle".
    fn app(&mut self, action: App, target: u8, arg: u8) {
        let conn = (!self.held.is_empty()).then(|| usize::from(target) % self.held.len());
        match (action, conn) {
            (App::Accept, _) => {
                while let Ok(Some(c)) = self.stack.accept(self.listener) {
                    self.held.push(c);
                    self.opened += 1;
                }
            }
            (App::Connect, _) => self.connect(target, arg),
            (App::Relisten, _) => {
                self.stack.unlisten(self.listener).expect("unlisten ours");
                self.listener = self
                    .stack
                    .listen(LISTEN_PORT, self.backlog)
                    .expect("listen again");
            }
            (_, None) => {}
            (App::Send, Some(i)) => {
                let data = pattern(usize::from(arg) * 8, arg);
                held_call(self.stack.send_slice(self.held[i], &data));
            }
            (App::Recv, Some(i)) => {
                let mut buf = [0u8; 2048];
                while let Some(n) = held_call(self.stack.recv_slice(self.held[i], &mut buf)) {
                    if n == 0 {
                        break;
                    }
                }
            }
            (App::Shutdown, Some(i)) => {
                held_call(self.stack.shutdown(self.held[i]));
            }
            (App::Close, Some(i)) => {
                let c = self.held.swap_remove(i);
                self.stack.close(c).expect("close a held handle");
            }
            (App::Abort, Some(i)) => {
                let c = self.held.swap_remove(i);
                self.stack.abort(c).expect("abort a held handle");
            }
        }
    }

    fn connect(&mut self, target: u8, arg: u8) {
        let [a, b, c, d] = PEER_ADDRS[usize::from(target & 1)];
        let remote = smoltcp::wire::Ipv4Address::new(a, b, c, d);
        let port = 9000 + u16::from(arg % 4);
        if let Ok(conn) = self.stack.connect(remote, port) {
            let tuple = self.stack.tuple(conn).expect("a new handle");
            self.tracks
                .entry(([a, b, c, d], port, tuple.local_port))
                .or_default();
            self.held.push(conn);
            self.opened += 1;
        }
    }

    /// Two minutes of silence, polled every 10 s: every TIME-WAIT record,
    /// half-open connection and given-up connection must be gone.
    pub(super) fn sweep(&mut self) {
        for _ in 0..13 {
            self.now += Duration::from_secs(10);
            self.poll();
        }
        assert_eq!(
            self.stack.time_wait_count(),
            0,
            "TIME-WAIT records outlived time_wait"
        );
        let (half, queued) = self.listener_counts();
        assert_eq!(
            half, 0,
            "half-open connections outlived the handshake timeout"
        );
        let conns = self.stack.connection_count();
        assert_eq!(
            conns,
            self.held.len() + queued,
            "connections given up linger"
        );
    }
}

//! The seed corpus of the ingress target: scripts that reach every path of
//! the receive side (listener, established connections, TIME-WAIT with its
//! answers, reuse and eviction, closed ports, junk).

use super::packets::{self, PEER_ADDRS, flags};
use super::steps::{App, Number, SegmentStep, Step};

/// A seed: a named input.
#[derive(Debug, Clone)]
pub struct Seed {
    /// File name in the corpus directory.
    pub name: String,
    /// The input (configuration byte, then the encoded steps).
    pub input: Vec<u8>,
}

/// Configuration bits (see `stack_config`).
const ETHERNET: u8 = 0x01;
const BACKLOG_4: u8 = 0x06;
const MAX_TIME_WAIT_4: u8 = 0x18;
const SMALL_BUFFERS: u8 = 0x20;
const KEEP_ALIVE: u8 = 0x40;
const SHORT_TIME_WAIT: u8 = 0x80;

/// A segment with tracked numbers (offsets `seq`, `ack`) on the tuple
/// `who` names, no options, a 65535 window and length class `len_class`.
fn seg(who: u8, flags: u8, seq: i8, ack: i8, len_class: u8) -> Step {
    Step::Segment(SegmentStep {
        who,
        flags,
        extra: len_class << 5,
        seq: Number::Tracked(seq),
        ack: Number::Tracked(ack),
        len: 0,
    })
}

/// A SYN with an absolute sequence number and options.
fn syn(who: u8, isn: u32) -> Step {
    Step::Segment(SegmentStep {
        who: who | 0x40,
        flags: flags::SYN,
        extra: 0x1c,
        seq: Number::Absolute(isn),
        ack: Number::Tracked(0),
        len: 0,
    })
}

fn app(action: App, target: u8, arg: u8) -> Step {
    Step::App {
        action,
        target,
        arg,
    }
}

/// Seconds of clock (up to 63).
fn secs(s: u8) -> Step {
    Step::Advance(0x80 | s.min(63))
}

fn millis(ms: u8) -> Step {
    Step::Advance(ms.min(63))
}

/// Handshake from peer 0, accept, 100 bytes each way.
fn established(isn: u32) -> Vec<Step> {
    vec![
        Step::Handshake { peer: 0, isn },
        app(App::Accept, 0, 0),
        seg(0, flags::ACK | flags::PSH, 0, 0, 3),
        app(App::Recv, 0, 0),
        app(App::Send, 0, 12),
        millis(5),
        seg(0, flags::ACK, 0, 0, 0),
    ]
}

/// From established: we close first, the peer ACKs and sends its FIN:
/// TIME-WAIT on our side.
fn into_time_wait(isn: u32) -> Vec<Step> {
    let mut s = established(isn);
    s.extend([
        app(App::Close, 0, 0),
        seg(0, flags::ACK, 0, 0, 0),
        Step::PeerClose { who: 0 },
    ]);
    s
}

/// A retransmitted FIN, a pure ACK, a RST: ACK, nothing, nothing.
fn time_wait_answers() -> Vec<Step> {
    vec![
        seg(0, flags::FIN | flags::ACK, -1, 0, 0),
        seg(0, flags::ACK, 0, 0, 0),
        seg(0, flags::RST, 0, 0, 0),
    ]
}

/// Frames that are not for any connection, or not TCP, or malformed.
fn junk() -> Vec<Step> {
    let good = packets::Segment {
        peer: (PEER_ADDRS[0], 40000),
        our_port: 80,
        seq: 1,
        ack: 0,
        flags: flags::SYN,
        window: 100,
        options: Vec::new(),
        payload: Vec::new(),
    }
    .packet(false);
    let mut fragment = good.clone();
    fragment[6] = 0x20;
    let mut options = good.clone();
    options[0] = 0x46;
    let mut short_tcp = good.clone();
    short_tcp[32] = 0x10;
    vec![
        Step::Raw(vec![0x45, 0, 0]),
        Step::Raw(fragment),
        Step::Raw(options),
        Step::Raw(short_tcp),
        Step::Raw(good[..30].to_vec()),
        Step::Datagram {
            icmp: true,
            peer: 0,
            len: 8,
        },
        Step::Datagram {
            icmp: false,
            peer: 1,
            len: 3,
        },
        Step::Raw(good),
    ]
}

/// A named script: file name, configuration byte, steps.
type Script = (&'static str, u8, Vec<Step>);

/// Handshakes, data, closes from either side, TIME-WAIT and its answers.
fn connection_scripts() -> Vec<Script> {
    vec![
        ("syn-only", BACKLOG_4, vec![syn(0, 1000)]),
        ("established-data", BACKLOG_4, established(1000)),
        ("peer-closes-first", BACKLOG_4, {
            let mut s = established(7);
            s.extend([
                Step::PeerClose { who: 0 },
                app(App::Recv, 0, 0),
                app(App::Close, 0, 0),
            ]);
            s.push(seg(0, flags::ACK, 0, 0, 0));
            s
        }),
        ("time-wait", 0, {
            let mut s = into_time_wait(5000);
            s.extend(time_wait_answers());
            s.extend([secs(59), secs(2)]);
            s
        }),
        ("time-wait-reuse", 0, {
            let mut s = into_time_wait(5000);
            s.extend([syn(0x08, 0x4000_0000), seg(0x08, flags::ACK, 1, 0, 0)]);
            s.extend([
                app(App::Accept, 0, 0),
                seg(0x08, flags::ACK | flags::PSH, 1, 0, 2),
            ]);
            s
        }),
        ("time-wait-old-syn", 0, {
            let mut s = into_time_wait(0x7000_0000);
            s.push(Step::Segment(SegmentStep {
                who: 0x08,
                flags: flags::SYN,
                extra: 0,
                seq: Number::Tracked(-100),
                ack: Number::Tracked(0),
                len: 0,
            }));
            s
        }),
        ("short-time-wait", SHORT_TIME_WAIT, {
            let mut s = into_time_wait(9);
            s.extend([secs(1), Step::PeerClose { who: 0 }, secs(3)]);
            s
        }),
    ]
}

/// The backlog, bad checksums, closed ports, junk, re-listening.
fn listener_scripts() -> Vec<Script> {
    vec![
        (
            "syn-flood",
            0,
            (0..6).map(|p| syn(p, 100 * u32::from(p))).collect(),
        ),
        (
            "accept-queue-full",
            0,
            vec![
                Step::Handshake { peer: 0, isn: 1 },
                syn(1, 2),
                app(App::Accept, 0, 0),
                syn(1, 2),
                seg(1, flags::ACK, 0, 0, 0),
            ],
        ),
        (
            "bad-checksum-syn",
            0,
            vec![Step::Segment(SegmentStep {
                who: 0x20 | 0x40,
                flags: flags::SYN,
                extra: 0,
                seq: Number::Absolute(77),
                ack: Number::Tracked(0),
                len: 0,
            })],
        ),
        (
            "closed-port",
            0,
            vec![
                syn(0x10, 5),
                seg(0x11, flags::ACK, 0, 9, 0),
                seg(0x12, flags::RST, 0, 0, 0),
            ],
        ),
        ("junk", 0, junk()),
        ("ethernet-junk", ETHERNET, junk()),
        (
            "relisten",
            BACKLOG_4,
            vec![
                syn(0, 1),
                syn(1, 2),
                Step::Handshake { peer: 2, isn: 3 },
                app(App::Relisten, 0, 0),
            ],
        ),
    ]
}

/// Out-of-order data, resets, simultaneous close, FIN-WAIT-2, keep-alive, zero windows.
fn state_scripts() -> Vec<Script> {
    vec![
        ("out-of-order", BACKLOG_4, {
            let mut s = established(11);
            s.extend([
                seg(0, flags::ACK, 100, 0, 2),
                seg(0, flags::ACK, 0, 0, 3),
                app(App::Recv, 0, 0),
            ]);
            s
        }),
        ("reset-established", BACKLOG_4, {
            let mut s = established(12);
            s.extend([
                seg(0, flags::RST, 0, 0, 0),
                app(App::Recv, 0, 0),
                app(App::Close, 0, 0),
            ]);
            s
        }),
        ("simultaneous-close", 0, {
            let mut s = established(13);
            s.extend([
                app(App::Close, 0, 0),
                seg(0, flags::FIN | flags::ACK, 0, -1, 0),
                seg(0, flags::ACK, 1, 0, 0),
            ]);
            s
        }),
        ("fin-wait-2", 0, {
            let mut s = established(14);
            s.extend([
                app(App::Shutdown, 0, 0),
                seg(0, flags::ACK, 0, 0, 0),
                secs(40),
            ]);
            s
        }),
        ("keep-alive", KEEP_ALIVE | BACKLOG_4, {
            let mut s = established(15);
            s.extend([secs(2), seg(0, flags::ACK, 0, 0, 0), secs(40)]);
            s
        }),
        ("zero-window", SMALL_BUFFERS | BACKLOG_4, {
            let mut s = established(16);
            s.extend([
                Step::Segment(SegmentStep {
                    who: 0,
                    flags: flags::ACK,
                    extra: 1,
                    seq: Number::Tracked(0),
                    ack: Number::Tracked(0),
                    len: 0,
                }),
                app(App::Send, 0, 255),
                secs(3),
                seg(0, flags::ACK, 0, 0, 0),
                seg(0, flags::ACK | flags::PSH, 0, 0, 5),
            ]);
            s
        }),
    ]
}

/// Active opens and TIME-WAIT eviction, also over Ethernet.
fn active_open_scripts() -> Vec<Script> {
    vec![
        (
            "connect",
            0,
            vec![
                app(App::Connect, 0, 1),
                Step::Segment(SegmentStep {
                    who: 0x08 | 0x40,
                    flags: flags::SYN | flags::ACK,
                    extra: 0x04,
                    seq: Number::Absolute(5000),
                    ack: Number::Tracked(0),
                    len: 0,
                }),
                app(App::Send, 0, 4),
                seg(0x08, flags::ACK | flags::PSH, 0, 0, 2),
                app(App::Shutdown, 0, 0),
                Step::PeerClose { who: 0x08 },
            ],
        ),
        ("time-wait-eviction", 0, {
            let mut s = into_time_wait(20);
            s.extend([
                Step::Handshake { peer: 1, isn: 21 },
                app(App::Accept, 0, 0),
                app(App::Close, 0, 0),
            ]);
            s.extend([seg(1, flags::ACK, 0, 0, 0), Step::PeerClose { who: 1 }]);
            s
        }),
        ("ethernet-time-wait", ETHERNET, {
            let mut s = vec![Step::Arp {
                reply: false,
                peer: 0,
            }];
            s.extend(into_time_wait(30));
            s.extend(time_wait_answers());
            s
        }),
        (
            "ethernet-connect",
            ETHERNET | MAX_TIME_WAIT_4,
            vec![
                app(App::Connect, 1, 2),
                Step::Segment(SegmentStep {
                    who: 0x08 | 0x40,
                    flags: flags::SYN | flags::ACK,
                    extra: 0,
                    seq: Number::Absolute(1),
                    ack: Number::Tracked(0),
                    len: 0,
                }),
                app(App::Abort, 0, 0),
            ],
        ),
    ]
}

/// Findings of the fuzzer (see tests/ingress_regressions.rs).
fn regression_scripts() -> Vec<Script> {
    let mut t = Vec::new();
    let syn_to = |dst: [u8; 4], port: u16| {
        let mut p = packets::Segment {
            peer: (PEER_ADDRS[0], 40000),
            our_port: port,
            seq: 1,
            ack: 0,
            flags: flags::SYN,
            window: 1000,
            options: Vec::new(),
            payload: Vec::new(),
        }
        .packet(false);
        // Re-address and fix the checksums by rebuilding the header sums.
        readdress(&mut p, dst);
        Step::Raw(p)
    };
    t.push((
        "regression-syn-to-broadcast",
        0,
        vec![
            syn_to([10, 77, 0, 255], 80),
            syn_to([255, 255, 255, 255], 81),
            syn_to([224, 0, 0, 1], 81),
        ],
    ));
    t.push((
        "regression-syn-before-our-syn",
        ETHERNET,
        vec![
            app(App::Connect, 1, 0),
            app(App::Connect, 0, 1),
            Step::Segment(SegmentStep {
                who: 0x08 | 0x40,
                flags: flags::SYN,
                extra: 0x04,
                seq: Number::Absolute(5000),
                ack: Number::Tracked(0),
                len: 0,
            }),
        ],
    ));
    // The SYN to 10.77.0.3 waits for ARP (one request a second); the
    // SYN-ACK acknowledges its ISN (fixed by the seed) all the same.
    t.push((
        "regression-syn-ack-before-our-syn",
        ETHERNET,
        vec![
            Step::Handshake { peer: 0, isn: 1 },
            app(App::Connect, 3, 57),
            Step::Segment(SegmentStep {
                who: 0xdb,
                flags: 0xf2,
                extra: 0xd8,
                seq: Number::Absolute(0xf501_0301),
                ack: Number::Absolute(0xe14a_34fb),
                len: 179,
            }),
        ],
    ));
    t
}

fn scripts() -> Vec<Script> {
    let mut t = connection_scripts();
    t.extend(listener_scripts());
    t.extend(state_scripts());
    t.extend(active_open_scripts());
    t.extend(regression_scripts());
    t
}

/// Point an IPv4 packet (TCP inside) at `dst`, fixing both checksums.
fn readdress(p: &mut [u8], dst: [u8; 4]) {
    p[16..20].copy_from_slice(&dst);
    p[10..12].fill(0);
    let sum = packets::internet_checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let src = [p[12], p[13], p[14], p[15]];
    let tcp_len = p.len() - 20;
    p[36..38].fill(0);
    let pseudo = packets::pseudo_header_sum(src, dst, 6, tcp_len);
    let sum = packets::internet_checksum(&p[20..], pseudo);
    p[36..38].copy_from_slice(&sum.to_be_bytes());
}

/// The seed corpus.
pub fn seeds() -> Vec<Seed> {
    scripts()
        .into_iter()
        .map(|(name, config, steps)| {
            let mut input = vec![config];
            for s in steps {
                input.extend(s.encode());
            }
            Seed {
                name: name.to_string(),
                input,
            }
        })
        .collect()
}

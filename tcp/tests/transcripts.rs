//! Transcript tests: one stack, the peer played by hand with raw segments.
//! Demux, accept queue (SYN flood beyond the backlog), RST on a closed port,
//! TIME-WAIT handling and reuse.

mod common;

use common::{A, B, config};
use dpuproxy_tcp::smoltcp::phy::{ChecksumCapabilities, Device, Medium};
use dpuproxy_tcp::smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Address, Ipv4Cidr, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber,
};
use dpuproxy_tcp::wire::{self, WirePort};
use dpuproxy_tcp::{
    ConnectOptions, Duration, Event, Instant, ListenerId, Stack, StackConfig, State, TcpError,
};

/// A segment as the peer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seg {
    src_port: u16,
    dst_port: u16,
    syn: bool,
    fin: bool,
    rst: bool,
    seq: u32,
    ack: Option<u32>,
    payload: Vec<u8>,
}

impl Seg {
    fn new(src_port: u16, dst_port: u16, seq: u32) -> Self {
        Seg {
            src_port,
            dst_port,
            syn: false,
            fin: false,
            rst: false,
            seq,
            ack: None,
            payload: Vec::new(),
        }
    }
    fn syn(mut self) -> Self {
        self.syn = true;
        self
    }
    fn fin(mut self) -> Self {
        self.fin = true;
        self
    }
    fn rst(mut self) -> Self {
        self.rst = true;
        self
    }
    fn ack(mut self, a: u32) -> Self {
        self.ack = Some(a);
        self
    }
    fn data(mut self, d: &[u8]) -> Self {
        self.payload = d.to_vec();
        self
    }
}

fn encode(src: Ipv4Address, dst: Ipv4Address, s: &Seg) -> Vec<u8> {
    let control = match (s.syn, s.fin, s.rst) {
        (true, _, _) => TcpControl::Syn,
        (_, true, _) => TcpControl::Fin,
        (_, _, true) => TcpControl::Rst,
        _ => TcpControl::None,
    };
    let tcp = TcpRepr {
        src_port: s.src_port,
        dst_port: s.dst_port,
        control,
        seq_number: TcpSeqNumber(s.seq as i32),
        ack_number: s.ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: None,
        max_seg_size: s.syn.then_some(1460),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &s.payload,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut p, &caps);
    let mut t = TcpPacket::new_unchecked(p.payload_mut());
    tcp.emit(&mut t, &IpAddress::Ipv4(src), &IpAddress::Ipv4(dst), &caps);
    buf
}

fn decode(frame: &[u8]) -> Seg {
    let p = Ipv4Packet::new_checked(frame).expect("ipv4");
    assert!(p.verify_checksum(), "stack sent a bad IPv4 checksum");
    let t = TcpPacket::new_checked(p.payload()).expect("tcp");
    assert!(
        t.verify_checksum(
            &IpAddress::Ipv4(p.src_addr()),
            &IpAddress::Ipv4(p.dst_addr())
        ),
        "stack sent a bad TCP checksum"
    );
    Seg {
        src_port: t.src_port(),
        dst_port: t.dst_port(),
        syn: t.syn(),
        fin: t.fin(),
        rst: t.rst(),
        seq: t.seq_number().0 as u32,
        ack: t.ack().then_some(t.ack_number().0 as u32),
        payload: t.payload().to_vec(),
    }
}

/// The stack under test (at B) and the hand-played peer (at A).
struct Bench {
    stack: Stack,
    dev: WirePort,
    peer: WirePort,
    now: Instant,
    events: Vec<Event>,
}

impl Bench {
    fn new(cfg: StackConfig) -> Self {
        let (dev, peer) = wire::pair(Medium::Ip, 1500, 1024);
        let now = Instant::from_secs(10);
        let stack = Stack::new(cfg, dev.capabilities(), now).unwrap();
        Bench {
            stack,
            dev,
            peer,
            now,
            events: Vec::new(),
        }
    }

    fn default() -> Self {
        Self::new(config(B, 7))
    }

    /// Deliver `s` from A, poll, return everything the stack sent.
    fn send(&mut self, s: &Seg) -> Vec<Seg> {
        self.peer.inject(&encode(A, B, s));
        self.poll()
    }

    fn poll(&mut self) -> Vec<Seg> {
        self.stack.poll(self.now, &mut self.dev);
        while let Some(e) = self.stack.poll_event() {
            self.events.push(e);
        }
        let mut out = Vec::new();
        while let Some(f) = self.peer.take_incoming() {
            out.push(decode(&f));
        }
        out
    }

    fn advance(&mut self, d: Duration) -> Vec<Seg> {
        self.now += d;
        self.poll()
    }

    /// Full handshake from peer port `port` (ISN `isn`) to our `dport`.
    /// Returns our ISN + 1.
    fn handshake(&mut self, port: u16, dport: u16, isn: u32) -> u32 {
        let out = self.send(&Seg::new(port, dport, isn).syn());
        assert_eq!(out.len(), 1, "one SYN-ACK: {out:?}");
        let sa = &out[0];
        assert!(sa.syn && sa.ack == Some(isn.wrapping_add(1)), "{sa:?}");
        let ours = sa.seq.wrapping_add(1);
        let out = self.send(&Seg::new(port, dport, isn.wrapping_add(1)).ack(ours));
        assert!(out.is_empty(), "nothing answers the handshake ACK: {out:?}");
        ours
    }
}

#[test]
fn rst_on_closed_port() {
    let mut b = Bench::default();
    // A SYN to a port nobody listens on: RST|ACK acknowledging the SYN.
    let out = b.send(&Seg::new(40000, 81, 1000).syn());
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].rst && !out[0].syn, "{:?}", out[0]);
    assert_eq!(out[0].ack, Some(1001));
    assert_eq!((out[0].src_port, out[0].dst_port), (81, 40000));
    // A stray ACK: RST with seq = the ACK number, no ACK.
    let out = b.send(&Seg::new(40001, 81, 5000).ack(777));
    assert_eq!(out.len(), 1);
    assert!(out[0].rst);
    assert_eq!(out[0].seq, 777);
    // A RST is never answered.
    assert!(b.send(&Seg::new(40002, 81, 5000).rst()).is_empty());
    // No state was made for any of them.
    assert_eq!(b.stack.connection_count(), 0);
    // With a listener on 80, port 81 still resets.
    b.stack.listen(80, 4).unwrap();
    let out = b.send(&Seg::new(40003, 81, 1).syn());
    assert!(out[0].rst);
    assert_eq!(b.stack.connection_count(), 0);
}

#[test]
fn handshake_data_and_demux_by_four_tuple() {
    let mut b = Bench::default();
    let l = b.stack.listen(80, 8).unwrap();
    // Two connections from the same peer address, different ports.
    let s1 = b.handshake(41000, 80, 100);
    let s2 = b.handshake(41001, 80, 900_000);
    assert_eq!(b.stack.accept_queue_len(l).unwrap(), 2);
    let c1 = b.stack.accept(l).unwrap().unwrap();
    let c2 = b.stack.accept(l).unwrap().unwrap();
    assert_eq!(b.stack.accept(l).unwrap(), None);
    assert_eq!(b.stack.tuple(c1).unwrap().remote_port, 41000);
    assert_eq!(b.stack.tuple(c2).unwrap().remote_port, 41001);
    // Data for each lands on its own connection only.
    b.send(&Seg::new(41001, 80, 900_001).ack(s2).data(b"two"));
    b.send(&Seg::new(41000, 80, 101).ack(s1).data(b"one!"));
    let mut buf = [0u8; 8];
    assert_eq!(b.stack.recv_slice(c1, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"one!");
    assert_eq!(b.stack.recv_slice(c2, &mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], b"two");
    // Readable was raised for both, once each.
    let readable: Vec<_> = b
        .events
        .iter()
        .filter(|e| matches!(e, Event::Readable(_)))
        .collect();
    assert_eq!(readable.len(), 2, "{:?}", b.events);
    // Our reply is sequenced after our SYN and acknowledges their data.
    b.stack.send_slice(c1, b"pong").unwrap();
    let out = b.poll();
    let d: Vec<_> = out.iter().filter(|s| !s.payload.is_empty()).collect();
    assert_eq!(d.len(), 1, "{out:?}");
    assert_eq!(d[0].payload, b"pong");
    assert_eq!((d[0].seq, d[0].ack), (s1, Some(105)));
}

#[test]
fn syn_flood_beyond_backlog_drops_oldest_half_open() {
    let mut b = Bench::default();
    let backlog = 8;
    let l = b.stack.listen(80, backlog).unwrap();
    // 20 SYNs from 20 ports: every one is answered, but only the newest
    // `backlog` stay half-open.
    let mut synacks = Vec::new();
    for i in 0..20u16 {
        let out = b.send(&Seg::new(50000 + i, 80, 1000 * u32::from(i)).syn());
        assert_eq!(out.len(), 1, "SYN {i}: {out:?}");
        assert!(out[0].syn);
        synacks.push(out[0].seq);
        assert!(b.stack.connection_count() <= backlog);
    }
    assert_eq!(b.stack.half_open_len(l).unwrap(), backlog);
    let st = b.stack.stats();
    assert_eq!(st.syn_admitted, 20);
    assert_eq!(st.syn_evicted, 12);
    // Completing an evicted handshake: the stack no longer knows it, RST.
    let out = b.send(&Seg::new(50000, 80, 1).ack(synacks[0].wrapping_add(1)));
    assert!(out.len() == 1 && out[0].rst, "{out:?}");
    // Completing the surviving ones fills the accept queue.
    for i in 12..20u16 {
        let out = b.send(
            &Seg::new(50000 + i, 80, 1000 * u32::from(i) + 1)
                .ack(synacks[usize::from(i)].wrapping_add(1)),
        );
        assert!(out.is_empty(), "{out:?}");
    }
    assert_eq!(b.stack.accept_queue_len(l).unwrap(), backlog);
    assert_eq!(b.stack.half_open_len(l).unwrap(), 0);
    assert_eq!(
        b.events.iter().filter(|e| **e == Event::Accept(l)).count(),
        backlog
    );
    // Queue full of established connections: a new SYN is dropped, silently.
    let out = b.send(&Seg::new(51000, 80, 5).syn());
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(b.stack.stats().syn_dropped, 1);
    // Accepting one makes room; the retransmitted SYN gets through.
    let c = b.stack.accept(l).unwrap().unwrap();
    assert_eq!(b.stack.tuple(c).unwrap().remote_port, 50012, "oldest first");
    let out = b.send(&Seg::new(51000, 80, 5).syn());
    assert!(out.len() == 1 && out[0].syn, "{out:?}");
}

#[test]
fn syn_with_bad_checksum_makes_no_state() {
    let mut b = Bench::default();
    b.stack.listen(80, 8).unwrap();
    let mut f = encode(A, B, &Seg::new(42000, 80, 1).syn());
    let last = f.len() - 1;
    f[last] ^= 0x40; // inside the TCP options
    b.peer.inject(&f);
    assert!(b.poll().is_empty());
    assert_eq!(b.stack.connection_count(), 0);
    assert_eq!(b.stack.stats().syn_bad_checksum, 1);
}

/// Connection from peer port 43000 that the stack closes first, ending in
/// TIME-WAIT on the stack. Returns (our snd_nxt, our rcv_nxt).
fn into_time_wait(b: &mut Bench, l: ListenerId, isn: u32) -> (u32, u32) {
    let ours = b.handshake(43000, 80, isn);
    let c = b.stack.accept(l).unwrap().unwrap();
    b.stack.close(c).unwrap();
    let out = b.poll();
    assert!(out.len() == 1 && out[0].fin, "our FIN: {out:?}");
    assert_eq!(out[0].seq, ours);
    // Peer ACKs our FIN and sends its own.
    let peer_seq = isn.wrapping_add(1);
    let out = b.send(&Seg::new(43000, 80, peer_seq).ack(ours.wrapping_add(1)));
    assert!(out.is_empty(), "{out:?}");
    let out = b.send(
        &Seg::new(43000, 80, peer_seq)
            .ack(ours.wrapping_add(1))
            .fin(),
    );
    assert!(
        out.len() == 1 && out[0].ack == Some(peer_seq.wrapping_add(1)),
        "final ACK: {out:?}"
    );
    assert_eq!(b.stack.time_wait_count(), 1);
    assert_eq!(b.stack.connection_count(), 0, "socket freed, record kept");
    (ours.wrapping_add(1), peer_seq.wrapping_add(1))
}

#[test]
fn time_wait_acks_retransmitted_fin_and_ignores_rst() {
    let mut b = Bench::default();
    let l = b.stack.listen(80, 8).unwrap();
    let (snd, rcv) = into_time_wait(&mut b, l, 5000);
    // The peer did not get our final ACK and retransmits its FIN.
    let out = b.send(&Seg::new(43000, 80, rcv.wrapping_sub(1)).ack(snd).fin());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].seq, out[0].ack), (snd, Some(rcv)));
    assert!(!out[0].fin && !out[0].rst && !out[0].syn);
    // A pure ACK is not answered (no ACK ping-pong).
    assert!(b.send(&Seg::new(43000, 80, rcv).ack(snd)).is_empty());
    // RFC 1337: a RST does not end TIME-WAIT.
    assert!(b.send(&Seg::new(43000, 80, rcv).rst()).is_empty());
    assert_eq!(b.stack.time_wait_count(), 1);
    assert_eq!(b.stack.stats().time_wait_acks, 1);
    // It expires after `time_wait` (60 s by default).
    b.advance(Duration::from_secs(59));
    assert_eq!(b.stack.time_wait_count(), 1);
    b.advance(Duration::from_secs(2));
    assert_eq!(b.stack.time_wait_count(), 0);
    assert_eq!(b.stack.stats().time_wait_expired, 1);
    // Gone: the tuple now resets like any unknown one.
    let out = b.send(&Seg::new(43000, 80, rcv).ack(snd).fin());
    assert!(out.len() == 1 && out[0].rst, "{out:?}");
}

#[test]
fn repeated_fins_restart_time_wait_without_growing_its_queue() {
    let mut b = Bench::default();
    let l = b.stack.listen(80, 8).unwrap();
    let (snd, rcv) = into_time_wait(&mut b, l, 5000);
    assert_eq!(b.stack.memory_usage().time_wait_queue, 1);
    // The peer keeps retransmitting its FIN, once a second: each is ACKed and
    // restarts 2MSL, and the record keeps its one expiry-queue entry.
    for i in 0..10 {
        b.now += Duration::from_secs(1);
        let out = b.send(&Seg::new(43000, 80, rcv.wrapping_sub(1)).ack(snd).fin());
        assert_eq!(out.len(), 1, "FIN {i}: {out:?}");
        assert_eq!((out[0].seq, out[0].ack), (snd, Some(rcv)), "FIN {i}");
        assert!(!out[0].fin && !out[0].rst && !out[0].syn, "FIN {i}");
        let m = b.stack.memory_usage();
        assert_eq!((m.time_wait, m.time_wait_queue), (1, 1), "FIN {i}");
    }
    assert_eq!(b.stack.stats().time_wait_acks, 10);
    // The record lives `time_wait` (60 s) from the last FIN: the first
    // deadline passes (its entry is queued again at the new one) ...
    b.advance(Duration::from_secs(59));
    assert_eq!(b.stack.time_wait_count(), 1);
    assert_eq!(b.stack.memory_usage().time_wait_queue, 1);
    // ... and the record expires at the restarted one.
    b.advance(Duration::from_secs(2));
    assert_eq!(b.stack.time_wait_count(), 0);
    assert_eq!(b.stack.memory_usage().time_wait_queue, 0);
    assert_eq!(b.stack.stats().time_wait_expired, 1);
}

#[test]
fn time_wait_reuse_by_new_syn() {
    let mut b = Bench::default();
    let l = b.stack.listen(80, 8).unwrap();
    let (snd, rcv) = into_time_wait(&mut b, l, 5000);
    // An old duplicate SYN (sequence number not above the old connection's)
    // gets an ACK that tells the peer where the old connection stands.
    let out = b.send(&Seg::new(43000, 80, rcv.wrapping_sub(100)).syn());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].seq, out[0].ack), (snd, Some(rcv)));
    assert!(!out[0].syn);
    assert_eq!(b.stack.time_wait_count(), 1);
    // A SYN above the old sequence space starts a new connection on the same tuple.
    reopen_from_time_wait(&mut b, l, rcv.wrapping_add(1_000_000), b"again");
}

/// Open a new connection from the port a TIME-WAIT record holds (peer ISN
/// `isn`), check the record gave way, and carry `data` over it.
fn reopen_from_time_wait(b: &mut Bench, l: ListenerId, isn: u32, data: &[u8]) {
    let ours = b.handshake(43000, 80, isn);
    assert_eq!(b.stack.stats().time_wait_reused, 1);
    assert_eq!(b.stack.time_wait_count(), 0);
    let c = b.stack.accept(l).unwrap().unwrap();
    b.send(
        &Seg::new(43000, 80, isn.wrapping_add(1))
            .ack(ours)
            .data(data),
    );
    let mut buf = [0u8; 64];
    let n = b.stack.recv_slice(c, &mut buf).unwrap();
    assert_eq!(&buf[..n], data);
}

/// A client whose clock-driven ISN went round (Linux: past half the
/// sequence space 137 s after the old connection opened) reuses its port:
/// its SYN is "below" the old `rcv_nxt`, yet outside the old connection's
/// space, so it opens a new connection at once. Before, the record ACKed
/// each SYN and ignored the client's RSTs until it expired (the soak saw
/// thousands of reconnects stall for a minute).
#[test]
fn time_wait_gives_way_to_a_syn_whose_isn_went_round() {
    let mut b = Bench::default();
    let l = b.stack.listen(80, 8).unwrap();
    let (snd, rcv) = into_time_wait(&mut b, l, 5000);
    // Just below the old space (within the guard): could be old, ACKed.
    let out = b.send(&Seg::new(43000, 80, 5000u32.wrapping_sub(4096)).syn());
    assert!(out.len() == 1 && !out[0].syn, "{out:?}");
    assert_eq!((out[0].seq, out[0].ack), (snd, Some(rcv)));
    assert_eq!(b.stack.stats().time_wait_reused, 0);
    // Half the sequence space away: a new incarnation.
    let isn2 = rcv.wrapping_sub(0x6000_0000);
    assert!(!seq_after(isn2, rcv), "below rcv_nxt, as the soak saw");
    reopen_from_time_wait(&mut b, l, isn2, b"back");
}

/// RFC 793 modular "a after b".
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[test]
fn time_wait_records_are_capped() {
    let mut cfg = config(B, 7);
    cfg.max_time_wait = 3;
    let mut b = Bench::new(cfg);
    let l = b.stack.listen(80, 8).unwrap();
    for i in 0..5u16 {
        let port = 44000 + i;
        let ours = b.handshake(port, 80, 100);
        let c = b.stack.accept(l).unwrap().unwrap();
        b.stack.close(c).unwrap();
        b.poll();
        b.send(&Seg::new(port, 80, 101).ack(ours.wrapping_add(1)).fin());
        assert!(b.stack.time_wait_count() <= 3);
    }
    assert_eq!(b.stack.time_wait_count(), 3);
    assert_eq!(b.stack.stats().time_wait_evicted, 2);
    assert_eq!(b.stack.connection_count(), 0);
}

#[test]
fn active_open_port_choice() {
    let mut cfg = config(B, 7);
    cfg.ephemeral_ports = 30000..=30009;
    let mut b = Bench::new(cfg);
    // The predicate picks the port (e.g. for RSS): only odd ports.
    let c = b
        .stack
        .connect_with(A, 80, &ConnectOptions::default(), |p| p % 2 == 1)
        .unwrap();
    let t = b.stack.tuple(c).unwrap();
    assert!(t.local_port % 2 == 1 && (30000..=30009).contains(&t.local_port));
    let out = b.poll();
    assert!(
        out.len() == 1 && out[0].syn && out[0].ack.is_none(),
        "{out:?}"
    );
    assert_eq!(out[0].src_port, t.local_port);
    // A predicate nothing satisfies: a clean error.
    assert_eq!(
        b.stack
            .connect_with(A, 80, &ConnectOptions::default(), |_| false)
            .unwrap_err(),
        TcpError::NoPort
    );
    // A fixed port already in use by this 4-tuple.
    let opts = ConnectOptions {
        local_port: Some(t.local_port),
        ..Default::default()
    };
    assert_eq!(
        b.stack.connect_with(A, 80, &opts, |_| true).unwrap_err(),
        TcpError::AddrInUse
    );
    // The same port to another destination port is a different tuple.
    assert!(b.stack.connect_with(A, 81, &opts, |_| true).is_ok());
    // All ten ports to A:80 in use: NoPort, not a panic or a loop.
    let mut opened = 1;
    while b.stack.connect(A, 80).is_ok() {
        opened += 1;
        assert!(opened <= 10);
    }
    assert_eq!(opened, 10);
    // Bad destinations.
    assert_eq!(b.stack.connect(A, 0).unwrap_err(), TcpError::Unaddressable);
    assert_eq!(
        b.stack.connect(Ipv4Address::UNSPECIFIED, 80).unwrap_err(),
        TcpError::Unaddressable
    );
}

#[test]
fn connection_refused_is_reset_event() {
    let mut b = Bench::default();
    let c = b.stack.connect(A, 80).unwrap();
    let out = b.poll();
    let syn = &out[0];
    assert!(syn.syn);
    b.send(
        &Seg::new(80, syn.src_port, 0)
            .rst()
            .ack(syn.seq.wrapping_add(1)),
    );
    assert!(b.events.contains(&Event::Reset(c)), "{:?}", b.events);
    assert_eq!(b.stack.state(c).unwrap(), State::Closed);
    assert_eq!(b.stack.recv_slice(c, &mut [0u8; 4]), Err(TcpError::Reset));
    assert_eq!(b.stack.send_slice(c, b"x"), Err(TcpError::Reset));
    // The handle stays until closed, then is invalid.
    b.stack.close(c).unwrap();
    assert_eq!(b.stack.state(c), Err(TcpError::InvalidHandle));
    assert_eq!(b.stack.connection_count(), 0);
}

#[test]
fn handshake_timeout_gives_up() {
    let mut b = Bench::default();
    let c = b.stack.connect(A, 80).unwrap();
    let mut syns = 0;
    // The peer never answers; count SYN retransmissions until the stack gives up.
    for _ in 0..10_000 {
        syns += b.poll().iter().filter(|s| s.syn).count();
        if b.events.contains(&Event::Reset(c)) {
            break;
        }
        let next = b
            .stack
            .poll_at()
            .expect("a SYN-SENT connection has a timer");
        b.now = next.max(b.now + Duration::from_micros(1));
    }
    assert!(b.events.contains(&Event::Reset(c)));
    // Initial RTO = min_rto (50 ms), doubling, within the 5 s handshake timeout.
    assert!((5..=12).contains(&syns), "{syns} SYNs");
    assert!(b.now <= Instant::from_secs(10) + Duration::from_secs(6));
}

#[test]
fn garbage_frames_never_panic() {
    let mut b = Bench::default();
    b.stack.listen(80, 8).unwrap();
    let good = encode(A, B, &Seg::new(45000, 80, 1).syn().data(b"xyz"));
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..3000 {
        let mut f = match i % 3 {
            0 => good.clone(),
            1 => good[..(next() as usize % good.len())].to_vec(),
            _ => (0..(next() % 80)).map(|_| next() as u8).collect(),
        };
        for _ in 0..(next() % 4) {
            if !f.is_empty() {
                let j = next() as usize % f.len();
                f[j] = next() as u8;
            }
        }
        b.peer.inject(&f);
        b.poll();
    }
    // Whatever was admitted stays within the backlog.
    assert!(b.stack.connection_count() <= 8);
}

#[test]
fn config_errors_are_clean() {
    let (dev, _peer) = wire::pair(Medium::Ip, 1500, 4);
    let caps = dev.capabilities();
    let now = Instant::from_secs(0);
    let mut c = config(B, 1);
    c.min_rto = Duration::from_secs(2);
    assert!(matches!(
        Stack::new(c, caps.clone(), now),
        Err(TcpError::Config(_))
    ));
    let mut c = config(B, 1);
    c.addresses.clear();
    assert!(matches!(
        Stack::new(c, caps.clone(), now),
        Err(TcpError::Config(_))
    ));
    // smoltcp holds two addresses per interface (its default
    // IFACE_MAX_ADDR_COUNT): a third is refused, not dropped.
    let mut c = config(B, 1);
    c.addresses
        .push(Ipv4Cidr::new(Ipv4Address::new(10, 78, 0, 2), 24));
    assert!(Stack::new(c.clone(), caps.clone(), now).is_ok());
    c.addresses
        .push(Ipv4Cidr::new(Ipv4Address::new(10, 79, 0, 2), 24));
    assert_eq!(
        Stack::new(c, caps.clone(), now).unwrap_err(),
        TcpError::Config("too many addresses")
    );
    let mut c = config(B, 1);
    c.hardware_addr = dpuproxy_tcp::smoltcp::wire::HardwareAddress::Ethernet(
        dpuproxy_tcp::smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 1]),
    );
    assert!(matches!(
        Stack::new(c, caps.clone(), now),
        Err(TcpError::Config(_))
    ));
    let mut c = config(B, 1);
    c.socket.rx_buffer = 0;
    assert!(matches!(
        Stack::new(c, caps.clone(), now),
        Err(TcpError::Config(_))
    ));
    let mut s = Stack::new(config(B, 1), caps, now).unwrap();
    assert_eq!(s.listen(0, 4).unwrap_err(), TcpError::Unaddressable);
    assert!(matches!(s.listen(80, 0), Err(TcpError::Config(_))));
    s.listen(80, 4).unwrap();
    assert_eq!(s.listen(80, 4).unwrap_err(), TcpError::AddrInUse);
    assert_eq!(
        s.listen_with(Some(A), 81, 4, Default::default())
            .unwrap_err(),
        TcpError::Unaddressable,
        "not our address"
    );
}

#[test]
fn active_open_skips_tuples_in_time_wait() {
    let mut cfg = config(B, 7);
    cfg.ephemeral_ports = 30000..=30000;
    let mut b = Bench::new(cfg);
    let c = b.stack.connect(A, 80).unwrap();
    let syn = b.poll().remove(0);
    assert_eq!(syn.src_port, 30000);
    let ours = syn.seq.wrapping_add(1);
    b.send(&Seg::new(80, 30000, 7000).syn().ack(ours));
    assert!(b.events.contains(&Event::Connected(c)));
    // We close first: our side ends in TIME-WAIT.
    b.stack.close(c).unwrap();
    let fin = b.poll().remove(0);
    assert!(fin.fin);
    b.send(&Seg::new(80, 30000, 7001).ack(ours.wrapping_add(1)).fin());
    assert_eq!(b.stack.time_wait_count(), 1);
    // The only ephemeral port is pinned by TIME-WAIT towards A:80 ...
    assert_eq!(b.stack.connect(A, 80).unwrap_err(), TcpError::NoPort);
    let fixed = ConnectOptions {
        local_port: Some(30000),
        ..Default::default()
    };
    assert_eq!(
        b.stack.connect_with(A, 80, &fixed, |_| true).unwrap_err(),
        TcpError::AddrInUse
    );
    // ... but free towards another destination port.
    assert!(b.stack.connect(A, 81).is_ok());
}

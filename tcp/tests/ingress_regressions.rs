//! Receive-path findings of the ingress fuzz target (`dpuproxy_tcp::fuzz`),
//! each replayed here with hand-built frames.

mod common;

use common::{A, B, MAC_A, MAC_B, config};
use dpuproxy_tcp::smoltcp::phy::{ChecksumCapabilities, Device, Medium};
use dpuproxy_tcp::smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr,
    HardwareAddress, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber,
};
use dpuproxy_tcp::wire::{self, WirePort};
use dpuproxy_tcp::{Event, Instant, Stack};

/// An IPv4 TCP segment without options from `src:sport` to `dst:dport`.
fn segment(
    (src, sport): (Ipv4Address, u16),
    (dst, dport): (Ipv4Address, u16),
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: sport,
        dst_port: dport,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
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

/// `payload` in an Ethernet frame from A's MAC to B's.
fn ethernet(ethertype: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: MAC_A,
        dst_addr: MAC_B,
        ethertype,
    };
    let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    repr.emit(&mut f);
    f.payload_mut().copy_from_slice(payload);
    buf
}

/// A's ARP reply to B.
fn arp_reply() -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: MAC_A,
        source_protocol_addr: A,
        target_hardware_addr: MAC_B,
        target_protocol_addr: B,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
    ethernet(EthernetProtocol::Arp, &buf)
}

/// Poll at `now` and take everything the stack sent.
fn poll(stack: &mut Stack, dev: &mut WirePort, peer: &mut WirePort, now: Instant) -> Vec<Vec<u8>> {
    stack.poll(now, dev);
    std::iter::from_fn(|| peer.take_incoming()).collect()
}

#[test]
fn tcp_to_a_broadcast_or_multicast_address_gets_no_reset() {
    // Found by the fuzzer: a segment for no connection went to smoltcp,
    // which answered with a RST *from* the broadcast address it was sent to
    // (RFC 1122 3.2.1.3 and 4.2.3.10: never; discard).
    let (mut dev, mut peer) = wire::pair(Medium::Ip, 1500, 64);
    let now = Instant::from_secs(1);
    let mut stack = Stack::new(config(B, 3), dev.capabilities(), now).unwrap();
    stack.listen(80, 4).unwrap();
    let to = |addr: Ipv4Address, port| segment((A, 40000), (addr, port), TcpControl::Syn, 1, None);
    for dst in [
        Ipv4Address::new(10, 77, 0, 255),
        Ipv4Address::BROADCAST,
        Ipv4Address::new(224, 0, 0, 1),
    ] {
        for port in [80, 81] {
            peer.inject(&to(dst, port));
            let out = poll(&mut stack, &mut dev, &mut peer, now);
            assert!(
                out.is_empty(),
                "answer to a SYN for {dst}:{port}: {out:02x?}"
            );
        }
    }
    assert_eq!(stack.connection_count(), 0);
    // Our own address still gets its RST on a closed port.
    peer.inject(&to(B, 81));
    assert_eq!(poll(&mut stack, &mut dev, &mut peer, now).len(), 1);
}

#[test]
fn a_syn_before_our_own_syn_left_does_not_panic() {
    // Found by the fuzzer: connect() while the peer's MAC is unknown (our
    // SYN waits for ARP), then a SYN from the peer on that 4-tuple. smoltcp
    // 0.13 took it as a simultaneous open and panicked ("attempt to
    // subtract sequence numbers with underflow") reading back the window
    // it had never advertised. The same holds when a full device holds the
    // SYN back.
    let (mut dev, mut peer) = wire::pair(Medium::Ethernet, 1514, 64);
    let mut cfg = config(B, 4);
    cfg.hardware_addr = HardwareAddress::Ethernet(MAC_B);
    let now = Instant::from_secs(1);
    let mut stack = Stack::new(cfg, dev.capabilities(), now).unwrap();
    let conn = stack.connect(A, 9000).unwrap();
    let out = poll(&mut stack, &mut dev, &mut peer, now);
    assert_eq!(out.len(), 1, "only the ARP request: {out:02x?}");
    assert_eq!(
        EthernetFrame::new_checked(&out[0][..]).unwrap().ethertype(),
        EthernetProtocol::Arp
    );
    let local_port = stack.tuple(conn).unwrap().local_port;
    let syn = segment((A, 9000), (B, local_port), TcpControl::Syn, 5000, None);
    peer.inject(&ethernet(EthernetProtocol::Ipv4, &syn));
    poll(&mut stack, &mut dev, &mut peer, now);
    // The connection goes on: once ARP resolves, our SYN leaves, and the
    // peer's SYN-ACK completes it.
    peer.inject(&arp_reply());
    let out = poll(&mut stack, &mut dev, &mut peer, now);
    let ours = out
        .iter()
        .filter_map(|f| {
            let frame = EthernetFrame::new_checked(&f[..]).ok()?;
            let ip = Ipv4Packet::new_checked(frame.payload()).ok()?;
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            (tcp.syn() && !tcp.ack()).then(|| tcp.seq_number().0 as u32)
        })
        .next()
        .expect("our SYN after ARP");
    let syn_ack = segment(
        (A, 9000),
        (B, local_port),
        TcpControl::Syn,
        5000,
        Some(ours.wrapping_add(1)),
    );
    peer.inject(&ethernet(EthernetProtocol::Ipv4, &syn_ack));
    poll(&mut stack, &mut dev, &mut peer, now);
    let events: Vec<Event> = std::iter::from_fn(|| stack.poll_event()).collect();
    assert!(events.contains(&Event::Connected(conn)), "{events:?}");
}

#[test]
fn a_syn_ack_for_a_syn_that_never_left_is_dropped() {
    // Found by the fuzzer: a SYN-ACK that acknowledges the ISN of a SYN
    // still held back (here by a full device) made smoltcp 0.13 panic the
    // same way. Only a peer that guessed the ISN can send one; it must be
    // dropped all the same. The ISN is learned from a twin stack (same
    // seed, same calls) whose SYN does leave.
    let now = Instant::from_secs(1);
    let (mut twin_dev, mut twin_peer) = wire::pair(Medium::Ip, 1500, 64);
    let mut twin = Stack::new(config(B, 5), twin_dev.capabilities(), now).unwrap();
    twin.connect(A, 9000).unwrap();
    let out = poll(&mut twin, &mut twin_dev, &mut twin_peer, now);
    let syn = Ipv4Packet::new_checked(&out[0][..]).unwrap();
    let isn = TcpPacket::new_checked(syn.payload())
        .unwrap()
        .seq_number()
        .0 as u32;

    let (mut dev, mut peer) = wire::pair(Medium::Ip, 1500, 1);
    dev.inject(b"fills the only transmit slot");
    let mut stack = Stack::new(config(B, 5), dev.capabilities(), now).unwrap();
    let conn = stack.connect(A, 9000).unwrap();
    stack.poll(now, &mut dev);
    let local_port = stack.tuple(conn).unwrap().local_port;
    let syn_ack = segment(
        (A, 9000),
        (B, local_port),
        TcpControl::Syn,
        7,
        Some(isn.wrapping_add(1)),
    );
    peer.inject(&syn_ack);
    stack.poll(now, &mut dev);
    assert!(std::iter::from_fn(|| stack.poll_event()).all(|e| e != Event::Connected(conn)));
}

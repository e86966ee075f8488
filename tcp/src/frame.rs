//! Just enough header parsing to demultiplex, and the one segment the stack
//! writes itself (the bare ACK of a TIME-WAIT record). Everything else on the
//! wire is smoltcp's.

use smoltcp::phy::{ChecksumCapabilities, Medium};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::flow::FourTuple;

const ETH_HEADER: usize = 14;

/// The demux view of a TCP segment. Read before any checksum is verified:
/// the stack only uses it to choose where the frame goes, and smoltcp
/// verifies before it acts. Paths that create state verify first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    /// Local = destination, remote = source.
    pub tuple: FourTuple,
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub fin: bool,
    pub seq: u32,
    pub payload_len: usize,
    /// Source MAC on an Ethernet medium (where a reply must go).
    pub eth_src: Option<EthernetAddress>,
}

impl Segment {
    pub(crate) fn is_pure_syn(&self) -> bool {
        self.syn && !self.ack && !self.rst && !self.fin
    }
}

/// Where the IPv4 header starts, if the frame carries IPv4.
fn ip_offset(medium: Medium, frame: &[u8]) -> Option<(usize, Option<EthernetAddress>)> {
    match medium {
        Medium::Ethernet => {
            let eth = EthernetFrame::new_checked(frame).ok()?;
            (eth.ethertype() == EthernetProtocol::Ipv4)
                .then_some((ETH_HEADER, Some(eth.src_addr())))
        }
        Medium::Ip => Some((0, None)),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Whether an Ethernet frame is ARP (the stack wakes neighbour waiters on it).
pub(crate) fn is_arp(medium: Medium, frame: &[u8]) -> bool {
    medium == Medium::Ethernet
        && EthernetFrame::new_checked(frame)
            .map(|f| f.ethertype() == EthernetProtocol::Arp)
            .unwrap_or(false)
}

/// Parse an unfragmented IPv4 TCP segment; anything else is `None`.
pub(crate) fn parse(medium: Medium, frame: &[u8]) -> Option<Segment> {
    let (off, eth_src) = ip_offset(medium, frame)?;
    let ip = Ipv4Packet::new_checked(frame.get(off..)?).ok()?;
    if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let header = usize::from(tcp.header_len());
    Some(Segment {
        tuple: FourTuple {
            local_addr: ip.dst_addr(),
            local_port: tcp.dst_port(),
            remote_addr: ip.src_addr(),
            remote_port: tcp.src_port(),
        },
        syn: tcp.syn(),
        ack: tcp.ack(),
        rst: tcp.rst(),
        fin: tcp.fin(),
        seq: tcp.seq_number().0 as u32,
        payload_len: ip.payload().len().saturating_sub(header),
        eth_src,
    })
}

/// Verify the IPv4 and TCP checksums the device did not already verify.
pub(crate) fn checksums_ok(medium: Medium, frame: &[u8], caps: &ChecksumCapabilities) -> bool {
    let Some((off, _)) = ip_offset(medium, frame) else {
        return false;
    };
    let Some(Ok(ip)) = frame.get(off..).map(Ipv4Packet::new_checked) else {
        return false;
    };
    if caps.ipv4.rx() && !ip.verify_checksum() {
        return false;
    }
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
        return false;
    };
    !caps.tcp.rx()
        || tcp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr()),
        )
}

/// What one of our own emitted segments says about the sequence space:
/// `(seq + length incl. SYN/FIN, ack, RST)`. Used to build TIME-WAIT records
/// and to tell a timeout (smoltcp sends RST) from a clean close.
pub(crate) fn our_seq_ack(medium: Medium, frame: &[u8]) -> Option<(u32, u32, bool)> {
    let (off, _) = ip_offset(medium, frame)?;
    let ip = Ipv4Packet::new_checked(frame.get(off..)?).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let header = usize::from(tcp.header_len());
    let len = ip.payload().len().saturating_sub(header) as u32
        + u32::from(tcp.syn())
        + u32::from(tcp.fin());
    Some((
        (tcp.seq_number().0 as u32).wrapping_add(len),
        tcp.ack_number().0 as u32,
        tcp.rst(),
    ))
}

/// Length of a bare ACK frame on `medium`.
pub(crate) fn ack_len(medium: Medium) -> usize {
    let l2 = if medium == Medium::Ethernet {
        ETH_HEADER
    } else {
        0
    };
    l2 + 20 + 20
}

/// A bare ACK the stack writes itself (from a TIME-WAIT record).
pub(crate) struct BareAck {
    pub medium: Medium,
    pub our_mac: Option<EthernetAddress>,
    pub peer_mac: Option<EthernetAddress>,
    pub tuple: FourTuple,
    pub seq: u32,
    pub ack: u32,
}

impl BareAck {
    /// Write into `buf` (of `ack_len` bytes).
    pub(crate) fn write(&self, buf: &mut [u8], caps: &ChecksumCapabilities) {
        let tuple = &self.tuple;
        let mut off = 0;
        if self.medium == Medium::Ethernet {
            let (Some(src), Some(dst)) = (self.our_mac, self.peer_mac) else {
                return;
            };
            let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
            EthernetRepr {
                src_addr: src,
                dst_addr: dst,
                ethertype: EthernetProtocol::Ipv4,
            }
            .emit(&mut eth);
            off = ETH_HEADER;
        }
        let tcp_repr = TcpRepr {
            src_port: tuple.local_port,
            dst_port: tuple.remote_port,
            control: TcpControl::None,
            seq_number: TcpSeqNumber(self.seq as i32),
            ack_number: Some(TcpSeqNumber(self.ack as i32)),
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        };
        let ip_repr = Ipv4Repr {
            src_addr: tuple.local_addr,
            dst_addr: tuple.remote_addr,
            next_header: IpProtocol::Tcp,
            payload_len: tcp_repr.buffer_len(),
            hop_limit: 64,
        };
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[off..]);
        ip_repr.emit(&mut ip, caps);
        let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
        tcp_repr.emit(
            &mut tcp,
            &IpAddress::Ipv4(tuple.local_addr),
            &IpAddress::Ipv4(tuple.remote_addr),
            caps,
        );
    }
}

/// `a` is after `b` in sequence space.
pub(crate) fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

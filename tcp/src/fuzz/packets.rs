//! Frames for the fuzz target, built and checked byte by byte without
//! smoltcp: the peer's side of the wire.

/// Our address, MAC and listening port.
pub const OUR_ADDR: [u8; 4] = [10, 77, 0, 2];
/// Our MAC on the Ethernet medium.
pub const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0x77, 0, 2];
/// The port the stack listens on.
pub const LISTEN_PORT: u16 = 80;
/// The peers' addresses (both on our /24).
pub const PEER_ADDRS: [[u8; 4]; 2] = [[10, 77, 0, 1], [10, 77, 0, 3]];

/// The MAC of a peer address.
pub fn peer_mac(addr: [u8; 4]) -> [u8; 6] {
    [0x02, 0, 0, addr[1], addr[2], addr[3]]
}

/// RFC 1071 Internet checksum of `data`, starting from the partial sum
/// `sum` (for a pseudo-header).
pub fn internet_checksum(data: &[u8], mut sum: u32) -> u16 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The partial sum of the TCP/UDP pseudo-header.
pub(super) fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let mut sum = 0u32;
    for pair in [
        [src[0], src[1]],
        [src[2], src[3]],
        [dst[0], dst[1]],
        [dst[2], dst[3]],
    ] {
        sum += u32::from(u16::from_be_bytes(pair));
    }
    sum + u32::from(proto) + len as u32
}

/// An IPv4 packet (20-byte header, DF, TTL 64) around `payload`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let sum = internet_checksum(&p, 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// TCP flag bits.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// A TCP segment as the peer writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Peer address and port.
    pub peer: ([u8; 4], u16),
    /// Our port.
    pub our_port: u16,
    /// Sequence and acknowledgement numbers.
    pub seq: u32,
    /// Acknowledgement number (sent whatever the ACK flag says).
    pub ack: u32,
    /// Flag bits (see [`flags`]).
    pub flags: u8,
    /// Advertised window.
    pub window: u16,
    /// Options (padded to 4 bytes here).
    pub options: Vec<u8>,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Segment {
    /// Sequence space the segment takes (payload, SYN and FIN).
    pub fn seq_len(&self) -> u32 {
        self.payload.len() as u32
            + u32::from(self.flags & flags::SYN != 0)
            + u32::from(self.flags & flags::FIN != 0)
    }

    /// The IPv4 packet, with a correct checksum unless `bad_checksum`.
    pub fn packet(&self, bad_checksum: bool) -> Vec<u8> {
        let mut options = self.options.clone();
        options.resize(options.len().div_ceil(4) * 4, 0);
        let header = 20 + options.len();
        let mut t = self.peer.1.to_be_bytes().to_vec();
        t.extend_from_slice(&self.our_port.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.extend_from_slice(&[((header / 4) as u8) << 4, self.flags]);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(&options);
        t.extend_from_slice(&self.payload);
        let sum = pseudo_header_sum(self.peer.0, OUR_ADDR, 6, t.len());
        let sum = internet_checksum(&t, sum) ^ u16::from(bad_checksum);
        t[16..18].copy_from_slice(&sum.to_be_bytes());
        ipv4(self.peer.0, OUR_ADDR, 6, &t)
    }
}

/// An ICMP echo request from `src` to us.
pub fn icmp_echo(src: [u8; 4], ident: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&ident.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(data);
    let sum = internet_checksum(&m, 0);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4(src, OUR_ADDR, 1, &m)
}

/// A UDP datagram from `src` to us.
pub fn udp(src: [u8; 4], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let len = 8 + data.len();
    let mut d = sport.to_be_bytes().to_vec();
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&(len as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(data);
    let sum = internet_checksum(&d, pseudo_header_sum(src, OUR_ADDR, 17, len));
    d[6..8].copy_from_slice(&sum.to_be_bytes());
    ipv4(src, OUR_ADDR, 17, &d)
}

/// An Ethernet II frame from `src` to `dst`.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP packet (Ethernet/IPv4) of opcode `op` from `peer` about us.
pub fn arp_from_peer(op: u16, peer: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&peer_mac(peer));
    a.extend_from_slice(&peer);
    a.extend_from_slice(if op == 2 { &OUR_MAC } else { &[0; 6] });
    a.extend_from_slice(&OUR_ADDR);
    let dst = if op == 2 { OUR_MAC } else { [0xff; 6] };
    ethernet(dst, peer_mac(peer), 0x0806, &a)
}

/// What the stack sent, as read back by [`parse_emitted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emitted {
    /// A TCP segment to `peer` from our port `our_port`.
    Tcp {
        /// Peer address and port.
        peer: ([u8; 4], u16),
        /// Our port.
        our_port: u16,
        /// Sequence number.
        seq: u32,
        /// Flag bits.
        flags: u8,
        /// Sequence space taken (payload, SYN, FIN).
        seq_len: u32,
    },
    /// ICMP to an address.
    Icmp([u8; 4]),
    /// ARP: the opcode and the address asked about or answered to.
    Arp(u16, [u8; 4]),
}

/// An address a host may send to: not 0.0.0.0, not the limited or our
/// subnet's broadcast, not multicast (224/4). (Class E, 240/4, counts as
/// unicast, as Linux has it.)
fn unicast(a: [u8; 4]) -> bool {
    let subnet_broadcast = [OUR_ADDR[0], OUR_ADDR[1], OUR_ADDR[2], 255];
    a != [0; 4] && a != [255; 4] && a != subnet_broadcast && a[0] >> 4 != 14
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Check an ARP packet the stack sent (from us, about Ethernet/IPv4).
fn parse_arp(a: &[u8]) -> Result<Emitted, String> {
    if a.len() < 28 || a[..6] != [0, 1, 8, 0, 6, 4] {
        return Err(format!("malformed ARP: {a:02x?}"));
    }
    if a[8..14] != OUR_MAC || a[14..18] != OUR_ADDR {
        return Err("ARP not from our MAC and address".into());
    }
    let op = be16(a, 6);
    if op != 1 && op != 2 {
        return Err(format!("ARP opcode {op}"));
    }
    Ok(Emitted::Arp(op, [a[24], a[25], a[26], a[27]]))
}

/// Check a TCP segment from us inside a checked IPv4 packet.
fn parse_tcp(dst: [u8; 4], t: &[u8]) -> Result<Emitted, String> {
    if t.len() < 20 {
        return Err("TCP header cut".into());
    }
    let header = usize::from(t[12] >> 4) * 4;
    if header < 20 || header > t.len() {
        return Err(format!("TCP data offset {header} of {}", t.len()));
    }
    if internet_checksum(t, pseudo_header_sum(OUR_ADDR, dst, 6, t.len())) != 0 {
        return Err("bad TCP checksum".into());
    }
    let flags = t[13];
    let (syn, rst, fin) = (
        flags & flags::SYN != 0,
        flags & flags::RST != 0,
        flags & flags::FIN != 0,
    );
    if syn && (rst || fin) || rst && fin {
        return Err(format!("TCP flags {flags:#04x}"));
    }
    let payload = (t.len() - header) as u32;
    Ok(Emitted::Tcp {
        peer: (dst, be16(t, 2)),
        our_port: be16(t, 0),
        seq: be32(t, 4),
        flags,
        seq_len: payload + u32::from(syn) + u32::from(fin),
    })
}

/// Check an IPv4 packet from us: header, checksums, then TCP or ICMP.
fn parse_ipv4(p: &[u8]) -> Result<Emitted, String> {
    if p.len() < 20 || p[0] != 0x45 {
        return Err(format!(
            "not a plain IPv4 header: {:02x?}",
            &p[..p.len().min(20)]
        ));
    }
    if usize::from(be16(p, 2)) != p.len() {
        return Err(format!(
            "IPv4 total length {} in a {}-byte packet",
            be16(p, 2),
            p.len()
        ));
    }
    if internet_checksum(&p[..20], 0) != 0 {
        return Err("bad IPv4 header checksum".into());
    }
    if be16(p, 6) & 0x3fff != 0 || p[8] == 0 {
        return Err("fragment or zero TTL".into());
    }
    if p[12..16] != OUR_ADDR {
        return Err(format!("sent from {:?}", &p[12..16]));
    }
    let dst = [p[16], p[17], p[18], p[19]];
    if !unicast(dst) {
        return Err(format!("sent to {dst:?}"));
    }
    match p[9] {
        6 => parse_tcp(dst, &p[20..]),
        1 if internet_checksum(&p[20..], 0) == 0 => Ok(Emitted::Icmp(dst)),
        1 => Err("bad ICMP checksum".into()),
        proto => Err(format!("IP protocol {proto}")),
    }
}

/// Check a frame the stack sent and say what it is. `ethernet`: the
/// medium has Ethernet headers (from our MAC).
pub fn parse_emitted(ethernet: bool, frame: &[u8]) -> Result<Emitted, String> {
    if !ethernet {
        return parse_ipv4(frame);
    }
    if frame.len() < 14 || frame[6..12] != OUR_MAC {
        return Err("Ethernet frame not from our MAC".into());
    }
    match be16(frame, 12) {
        0x0800 => {
            let e = parse_ipv4(&frame[14..])?;
            match &e {
                Emitted::Tcp { peer: (a, _), .. } | Emitted::Icmp(a)
                    if frame[..6] != peer_mac(*a) =>
                {
                    Err("IPv4 frame to the wrong MAC".into())
                }
                _ => Ok(e),
            }
        }
        0x0806 => parse_arp(&frame[14..]),
        t => Err(format!("EtherType {t:#06x}")),
    }
}

/// What an injected IPv4 packet to us shows the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    /// Its source address.
    pub src: [u8; 4],
    /// Its TCP ports (source, destination), if it is TCP.
    pub ports: Option<(u16, u16)>,
}

/// What an injected frame shows the stack, read independently.
pub fn parse_injected(ethernet: bool, frame: &[u8]) -> Option<Injected> {
    let p = if ethernet {
        if frame.len() < 14 || be16(frame, 12) != 0x0800 {
            return None;
        }
        &frame[14..]
    } else {
        frame
    };
    if p.len() < 20 || p[0] >> 4 != 4 || p[16..20] != OUR_ADDR {
        return None;
    }
    let src = [p[12], p[13], p[14], p[15]];
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let ports = (p[9] == 6 && p.len() >= ihl + 4).then(|| (be16(p, ihl), be16(p, ihl + 2)));
    Some(Injected { src, ports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data, 0), !0xddf2);
        let p = ipv4(PEER_ADDRS[0], OUR_ADDR, 6, &[]);
        assert_eq!(internet_checksum(&p[..20], 0), 0);
    }

    #[test]
    fn our_segments_parse_back() {
        let s = Segment {
            peer: (PEER_ADDRS[0], 40000),
            our_port: 80,
            seq: 7,
            ack: 0,
            flags: flags::SYN,
            window: 100,
            options: vec![2, 4, 5, 0xb4],
            payload: b"x".to_vec(),
        };
        let p = s.packet(false);
        // Swap the addresses and ports to read it as if we had sent it.
        let mut back = p.clone();
        back[12..16].copy_from_slice(&OUR_ADDR);
        back[16..20].copy_from_slice(&PEER_ADDRS[0]);
        back.swap(20, 22);
        back.swap(21, 23);
        assert!(
            parse_emitted(false, &back).is_ok(),
            "{:?}",
            parse_emitted(false, &back)
        );
        let seen = Injected {
            src: PEER_ADDRS[0],
            ports: Some((40000, 80)),
        };
        assert_eq!(parse_injected(false, &p), Some(seen));
        assert!(parse_emitted(false, &s.packet(true)).is_err());
    }
}

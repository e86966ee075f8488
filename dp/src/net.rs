//! ARP responder and ICMP echo for one IPv4 address, over raw Ethernet
//! frames. Headers are parsed as bytes (DPDK's `rte_arp_hdr` is a packed
//! struct that bindgen keeps opaque), and replies are written in place into
//! the received frame so that a reply costs no allocation: the same mbuf
//! goes back out.
//!
//! Checksums are verified and recomputed in software; nothing assumes a
//! checksum offload. A kernel peer that leaves tx checksum offload on
//! (veth default) sends partial checksums, which are counted as
//! `bad_checksum` here: turn it off with `ethtool -K <veth> tx off`.

use std::net::Ipv4Addr;

/// A MAC address.
pub type Mac = [u8; 6];

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ARP_LEN: usize = 28;
const IPPROTO_ICMP: u8 = 1;

/// What the responder did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The frame was rewritten in place into a reply: transmit it.
    Reply,
    /// Not ours or not something we answer: free it.
    Drop,
}

/// Counters of the responder. Plain integers: one responder per lcore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponderStats {
    /// Frames looked at.
    pub frames: u64,
    /// ARP requests for our address.
    pub arp_requests: u64,
    /// ARP replies written.
    pub arp_replies: u64,
    /// ICMP echo requests to our address.
    pub icmp_echo_requests: u64,
    /// ICMP echo replies written.
    pub icmp_echo_replies: u64,
    /// IPv4 header or ICMP checksum wrong (see the module docs).
    pub bad_checksum: u64,
    /// Truncated or malformed ARP/IPv4 frames.
    pub malformed: u64,
    /// Well-formed frames that are not for us or not ARP/ICMP echo.
    pub ignored: u64,
}

/// Answers ARP and ICMP echo for one address.
#[derive(Debug, Clone)]
pub struct Responder {
    mac: Mac,
    ip: Ipv4Addr,
    stats: ResponderStats,
}

impl Responder {
    /// A responder for `ip` on a port whose MAC is `mac`.
    pub fn new(mac: Mac, ip: Ipv4Addr) -> Self {
        Self {
            mac,
            ip,
            stats: ResponderStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ResponderStats {
        self.stats
    }

    /// Looks at one Ethernet frame; on [`Verdict::Reply`] the frame has been
    /// turned into the reply (same length).
    pub fn handle(&mut self, frame: &mut [u8]) -> Verdict {
        self.stats.frames += 1;
        if frame.len() < ETH_HDR {
            self.stats.malformed += 1;
            return Verdict::Drop;
        }
        match be16(frame, 12) {
            ETHERTYPE_ARP => self.arp(frame),
            ETHERTYPE_IPV4 => self.ipv4(frame),
            _ => {
                self.stats.ignored += 1;
                Verdict::Drop
            }
        }
    }

    fn arp(&mut self, frame: &mut [u8]) -> Verdict {
        if frame.len() < ETH_HDR + ARP_LEN {
            self.stats.malformed += 1;
            return Verdict::Drop;
        }
        let a = ETH_HDR;
        // htype Ethernet, ptype IPv4, hlen 6, plen 4.
        if be16(frame, a) != 1
            || be16(frame, a + 2) != ETHERTYPE_IPV4
            || frame[a + 4] != 6
            || frame[a + 5] != 4
        {
            self.stats.malformed += 1;
            return Verdict::Drop;
        }
        let op = be16(frame, a + 6);
        let target_ip = Ipv4Addr::new(frame[a + 24], frame[a + 25], frame[a + 26], frame[a + 27]);
        if op != 1 || target_ip != self.ip {
            self.stats.ignored += 1;
            return Verdict::Drop;
        }
        self.stats.arp_requests += 1;
        let mut sender_mac = [0u8; 6];
        sender_mac.copy_from_slice(&frame[a + 8..a + 14]);
        let mut sender_ip = [0u8; 4];
        sender_ip.copy_from_slice(&frame[a + 14..a + 18]);
        frame[a + 6..a + 8].copy_from_slice(&2u16.to_be_bytes());
        frame[a + 8..a + 14].copy_from_slice(&self.mac);
        frame[a + 14..a + 18].copy_from_slice(&self.ip.octets());
        frame[a + 18..a + 24].copy_from_slice(&sender_mac);
        frame[a + 24..a + 28].copy_from_slice(&sender_ip);
        frame[0..6].copy_from_slice(&sender_mac);
        frame[6..12].copy_from_slice(&self.mac);
        self.stats.arp_replies += 1;
        Verdict::Reply
    }

    fn ipv4(&mut self, frame: &mut [u8]) -> Verdict {
        let ip = &frame[ETH_HDR..];
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            self.stats.malformed += 1;
            return Verdict::Drop;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(be16(ip, 2));
        if ihl < 20 || total < ihl || total > ip.len() {
            self.stats.malformed += 1;
            return Verdict::Drop;
        }
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        // Fragments (MF set or an offset) are not reassembled: not answered.
        let fragmented = be16(ip, 6) & 0x3fff != 0;
        if dst != self.ip || ip[9] != IPPROTO_ICMP || fragmented {
            self.stats.ignored += 1;
            return Verdict::Drop;
        }
        if checksum(&ip[..ihl]) != 0 {
            self.stats.bad_checksum += 1;
            return Verdict::Drop;
        }
        let icmp_len = total - ihl;
        if icmp_len < 8 {
            self.stats.malformed += 1;
            return Verdict::Drop;
        }
        let icmp = &ip[ihl..total];
        if icmp[0] != 8 || icmp[1] != 0 {
            self.stats.ignored += 1;
            return Verdict::Drop;
        }
        self.stats.icmp_echo_requests += 1;
        if checksum(icmp) != 0 {
            self.stats.bad_checksum += 1;
            return Verdict::Drop;
        }

        // Ethernet: back to the sender.
        let mut src_mac = [0u8; 6];
        src_mac.copy_from_slice(&frame[6..12]);
        frame[0..6].copy_from_slice(&src_mac);
        frame[6..12].copy_from_slice(&self.mac);

        let ip = &mut frame[ETH_HDR..ETH_HDR + total];
        let mut src = [0u8; 4];
        src.copy_from_slice(&ip[12..16]);
        ip[16..20].copy_from_slice(&src);
        ip[12..16].copy_from_slice(&self.ip.octets());
        ip[8] = 64; // TTL
        ip[10] = 0;
        ip[11] = 0;
        let c = checksum(&ip[..ihl]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let icmp = &mut ip[ihl..];
        icmp[0] = 0; // echo reply
        icmp[2] = 0;
        icmp[3] = 0;
        let c = checksum(icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        self.stats.icmp_echo_replies += 1;
        Verdict::Reply
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The Internet checksum (RFC 1071) of `data`: 0 when `data` holds a
/// correct checksum field; otherwise the value to store in a zeroed field.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUR_MAC: Mac = [0x02, 0, 0, 0, 0, 1];
    const PEER_MAC: Mac = [0x02, 0, 0, 0, 0, 2];
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 1);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 2);

    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&PEER_IP.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        f.resize(60, 0); // Ethernet minimum, as a NIC would pad
        f
    }

    fn echo_request(dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 7];
        icmp.extend_from_slice(payload);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let total = (20 + icmp.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0xab, 0xcd, 0x40, 0, 64, IPPROTO_ICMP, 0, 0]);
        ip.extend_from_slice(&PEER_IP.octets());
        ip.extend_from_slice(&dst.octets());
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = Vec::new();
        f.extend_from_slice(&OUR_MAC);
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&icmp);
        f
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2, so the
        // checksum is its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        // Odd length pads with a zero byte.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn answers_arp_for_our_address_only() {
        let mut r = Responder::new(OUR_MAC, OUR_IP);
        let mut f = arp_request(OUR_IP);
        assert_eq!(r.handle(&mut f), Verdict::Reply);
        assert_eq!(&f[0..6], &PEER_MAC);
        assert_eq!(&f[6..12], &OUR_MAC);
        assert_eq!(be16(&f, 20), 2);
        assert_eq!(&f[22..28], &OUR_MAC);
        assert_eq!(&f[28..32], &OUR_IP.octets());
        assert_eq!(&f[32..38], &PEER_MAC);
        assert_eq!(&f[38..42], &PEER_IP.octets());

        let mut other = arp_request(Ipv4Addr::new(10, 77, 9, 3));
        let before = other.clone();
        assert_eq!(r.handle(&mut other), Verdict::Drop);
        assert_eq!(other, before, "a dropped frame is left untouched");
        let s = r.stats();
        assert_eq!((s.arp_requests, s.arp_replies, s.ignored), (1, 1, 1));
    }

    #[test]
    fn echo_reply_has_valid_checksums_and_swapped_addresses() {
        let mut r = Responder::new(OUR_MAC, OUR_IP);
        for len in [0usize, 1, 56, 1471] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut f = echo_request(OUR_IP, &payload);
            assert_eq!(r.handle(&mut f), Verdict::Reply, "len {len}");
            let ip = &f[ETH_HDR..];
            assert_eq!(checksum(&ip[..20]), 0);
            assert_eq!(checksum(&ip[20..]), 0);
            assert_eq!(&ip[12..16], &OUR_IP.octets());
            assert_eq!(&ip[16..20], &PEER_IP.octets());
            assert_eq!(ip[20], 0, "echo reply type");
            assert_eq!(&ip[24..28], &[0x12, 0x34, 0, 7], "id/seq kept");
            assert_eq!(&ip[28..], &payload[..]);
            assert_eq!(&f[0..6], &PEER_MAC);
        }
        assert_eq!(r.stats().icmp_echo_replies, 4);
    }

    #[test]
    fn partial_checksum_from_offloading_peer_is_counted_not_answered() {
        let mut r = Responder::new(OUR_MAC, OUR_IP);
        let mut f = echo_request(OUR_IP, b"hello");
        // What a veth with tx checksum offload hands over: the ICMP
        // checksum field left as the pseudo/partial value.
        f[ETH_HDR + 22] ^= 0x5a;
        assert_eq!(r.handle(&mut f), Verdict::Drop);
        assert_eq!(r.stats().bad_checksum, 1);
    }

    #[test]
    fn truncated_and_foreign_frames_are_dropped() {
        let mut r = Responder::new(OUR_MAC, OUR_IP);
        let full = echo_request(OUR_IP, b"abcdefgh");
        for cut in 0..full.len() - 8 {
            let mut f = full[..cut].to_vec();
            assert_eq!(r.handle(&mut f), Verdict::Drop, "cut at {cut}");
        }
        let mut other = echo_request(PEER_IP, b"x");
        assert_eq!(r.handle(&mut other), Verdict::Drop);
        assert_eq!(r.stats().icmp_echo_replies, 0);
    }
}

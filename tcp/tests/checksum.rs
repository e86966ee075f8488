//! The patched Internet checksum of smoltcp (`wire::ip::checksum::data`,
//! see `patches/README.md`) gives the value a plain RFC 1071 reference
//! gives: TCP segments of every length up to 2,100 bytes, at every
//! alignment, filled by smoltcp and checked against the reference (and
//! verified back by smoltcp).

use dpuproxy_tcp::smoltcp::wire::{IpAddress, Ipv4Address, TcpPacket};

/// RFC 1071 as written: 16-bit big-endian words, an odd last byte padded
/// with zero, carries folded back in; not complemented.
fn sum16(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|pair| (u64::from(pair[0]) << 8) | pair.get(1).copied().map_or(0, u64::from))
        .sum()
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The TCP checksum of `segment` (its checksum field zero) by the reference.
fn reference(src: Ipv4Address, dst: Ipv4Address, segment: &[u8]) -> u16 {
    let pseudo = sum16(&src.octets()) + sum16(&dst.octets()) + 6 + segment.len() as u64;
    !fold(pseudo + sum16(segment))
}

#[test]
fn segments_of_every_length_and_alignment_get_the_reference_checksum() {
    let (src, dst) = (
        Ipv4Address::new(10, 0, 0, 1),
        Ipv4Address::new(192, 168, 7, 255),
    );
    // Bytes that make carries: a pseudo-random run with long 0xff stretches.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..2_200)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if (i / 64) % 3 == 0 { 0xff } else { state as u8 }
        })
        .collect();
    let mut buf = vec![0u8; 8 + 20 + 2_100];
    for offset in 0..8 {
        for payload in (0..=2_100).step_by(if offset == 0 { 1 } else { 7 }) {
            let seg = &mut buf[offset..offset + 20 + payload];
            seg[20..].copy_from_slice(&bytes[offset..offset + payload]);
            seg[..20].fill(0);
            let mut pkt = TcpPacket::new_unchecked(&mut *seg);
            pkt.set_src_port(40_000 + payload as u16);
            pkt.set_dst_port(443);
            pkt.set_seq_number(dpuproxy_tcp::smoltcp::wire::TcpSeqNumber(
                payload as i32 * 7919,
            ));
            pkt.set_header_len(20);
            pkt.set_window_len(0xffff);
            pkt.set_checksum(0);
            let want = reference(src, dst, pkt.as_ref());
            pkt.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
            assert_eq!(pkt.checksum(), want, "offset {offset} payload {payload}");
            assert!(pkt.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)));
        }
    }
}

//! Drops at the kernel rx ring of an AF_PACKET vdev, which DPDK 22.11's
//! `net_af_packet` does not report: it never reads its sockets'
//! `PACKET_STATISTICS`, so a frame the kernel could not place in a full
//! ring (a burst faster than the lcore drains it) is lost without a trace
//! in `imissed`. TCP recovers by retransmitting, but when a burst of many
//! connections is lost at once their retransmissions come back in the same
//! waves and overflow the ring again; an operator needs to see that to
//! size the ring (`framecnt=` in the vdev arguments).
//!
//! [`PacketRingDrops`] finds the process's AF_PACKET sockets (the PMD's,
//! one per queue pair) and reads their statistics. Reading resets the
//! kernel's counters, so the totals are kept here; the PMD does not read
//! them, so nobody else's figures change. Linux only.

use std::os::fd::RawFd;

/// The AF_PACKET sockets of this process and the ring drops counted on
/// them so far.
#[derive(Debug, Default)]
pub struct PacketRingDrops {
    fds: Vec<RawFd>,
    dropped: u64,
}

impl PacketRingDrops {
    /// The AF_PACKET sockets open in this process now (none without an
    /// af_packet vdev). Call after the port started. Counts what their
    /// rings already dropped.
    pub fn find() -> Self {
        let fds = std::fs::read_dir("/proc/self/fd")
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
                    .filter(|&fd| is_packet_socket(fd))
                    .collect()
            })
            .unwrap_or_default();
        let mut me = Self { fds, dropped: 0 };
        me.poll();
        me
    }

    /// How many sockets are watched.
    pub fn sockets(&self) -> usize {
        self.fds.len()
    }

    /// Reads the drops since the last call into the total and returns the
    /// total. An fd that is no longer an AF_PACKET socket is forgotten.
    pub fn poll(&mut self) -> u64 {
        let mut dropped = 0;
        self.fds.retain(|&fd| match read_and_reset(fd) {
            Some(d) => {
                dropped += u64::from(d);
                true
            }
            None => false,
        });
        self.dropped += dropped;
        self.dropped
    }

    /// The drops counted so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

fn is_packet_socket(fd: RawFd) -> bool {
    let mut domain: libc::c_int = 0;
    get_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, &mut domain) && domain == libc::AF_PACKET
}

/// `tp_drops` of an AF_PACKET socket since the last read (the kernel
/// zeroes its counters on read); `None` if `fd` is not one any more.
fn read_and_reset(fd: RawFd) -> Option<u32> {
    if !is_packet_socket(fd) {
        return None;
    }
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    // A TPACKET_V3 socket's larger struct is truncated to the two leading
    // counters, which it shares.
    get_option(fd, libc::SOL_PACKET, libc::PACKET_STATISTICS, &mut st).then_some(st.tp_drops)
}

/// `getsockopt(fd, level, name)` into `out`; whether it succeeded (a fd
/// that is not a socket, or not of the option's family, fails).
fn get_option<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int, out: &mut T) -> bool {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: out is a valid, writable T and len its size; the kernel
    // writes at most len bytes. T is plain data (Copy) for every caller.
    let rc = unsafe { libc::getsockopt(fd, level, name, (out as *mut T).cast(), &mut len) };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_socket_is_not_a_packet_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        assert!(!is_packet_socket(l.as_raw_fd()));
        assert_eq!(read_and_reset(l.as_raw_fd()), None);
    }

    #[test]
    fn drops_of_a_real_packet_socket_are_counted() {
        // An AF_PACKET socket on loopback with the smallest receive buffer,
        // never read, while UDP datagrams cross loopback: the kernel drops
        // what does not fit, as it does for a full af_packet ring.
        // SAFETY: plain socket(2) call; the fd is closed below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        if fd < 0 {
            // Needs CAP_NET_RAW: root here and in CI, where it must not skip.
            assert!(
                std::env::var_os("DPUPROXY_REQUIRE_NETNS").is_none(),
                "cannot open an AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        // SAFETY: a NUL-terminated name.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = lo as i32;
        let one: libc::c_int = 1;
        // SAFETY: valid pointers and lengths for bind and setsockopt.
        unsafe {
            assert_eq!(
                libc::bind(
                    fd,
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                ),
                0
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let mut watched = PacketRingDrops::find();
        assert!(watched.fds.contains(&fd), "find() misses fd {fd}");
        let before = watched.dropped();
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let src = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            let _ = src.send_to(&[0u8; 1000], sink.local_addr().unwrap());
        }
        let after = watched.poll();
        assert!(after > before, "no drops counted: {before} -> {after}");
        // Counters were reset by the read: the total only grows.
        assert!(watched.poll() >= after);
        // SAFETY: fd is ours and open.
        unsafe { libc::close(fd) };
        watched.poll();
        assert!(!watched.fds.contains(&fd), "a closed fd stays watched");
    }
}

//! One connection state, two owners: the kernel's repair state
//! ([`repair::TcpState`]) and the userspace stack's ([`ConnState`]) are
//! converted into each other here, so a connection captured on one data
//! path can be restored on the other.
//!
//! Contract:
//! - [`to_userspace`] refuses what the userspace stack cannot continue: an
//!   IPv6 connection, and one that negotiated TCP timestamps (smoltcp sends
//!   none; a peer with PAWS would drop every segment). Nothing else is lost:
//!   sequence numbers, both queues and which send bytes went out, MSS,
//!   window scales, SACK and the windows carry over.
//! - [`to_kernel`] never fails; the kernel checks the windows when the
//!   state is restored.
//! - Windows: the kernel's `rcv_wup`/`rcv_wnd` (the last ACK sent and the
//!   window advertised with it) become `last_ack`/`last_window`; the last
//!   ACK is clamped to what arrived, and the promised right edge never moves
//!   left of it.

use std::net::{SocketAddr, SocketAddrV4};

use dpuproxy_tcp::{ConnState, FourTuple};

use crate::repair::{RepairWindow, TcpState};

/// Why a kernel connection cannot move to the userspace stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// The userspace stack is IPv4 only.
    #[error("IPv6 connections cannot move to the userspace stack")]
    Ipv6,
    /// smoltcp sends no timestamps; the peer would drop its segments.
    #[error("the connection negotiated TCP timestamps, which the userspace stack does not send")]
    Timestamps,
}

/// The userspace stack's view of a captured kernel connection.
pub fn to_userspace(k: &TcpState) -> Result<ConnState, HandoffError> {
    let (SocketAddr::V4(local), SocketAddr::V4(peer)) = (k.local, k.peer) else {
        return Err(HandoffError::Ipv6);
    };
    if k.timestamps {
        return Err(HandoffError::Timestamps);
    }
    let rcv_nxt = k.recv_seq.wrapping_add(k.recv_queue.len() as u32);
    let w = k.window;
    // The last ACK sent: never beyond what arrived; it may lie before
    // recv_seq (the application read bytes whose delayed ACK is pending),
    // which the userspace stack takes as is and acknowledges soon.
    let last_ack = if before(rcv_nxt, w.rcv_wup) {
        rcv_nxt
    } else {
        w.rcv_wup
    };
    let right_edge = max_seq(w.rcv_wup.wrapping_add(w.rcv_wnd), rcv_nxt);
    let (window_shift, peer_window_shift) = match k.wscale {
        Some((send, recv)) => (recv, Some(send)),
        None => (0, None),
    };
    Ok(ConnState {
        tuple: FourTuple {
            local_addr: *local.ip(),
            local_port: local.port(),
            remote_addr: *peer.ip(),
            remote_port: peer.port(),
        },
        send_seq: k.send_seq,
        sent: k.sent(),
        send_queue: k.send_queue.clone(),
        recv_seq: k.recv_seq,
        recv_queue: k.recv_queue.clone(),
        last_ack,
        last_window: right_edge.wrapping_sub(last_ack),
        window_shift,
        peer_window: w.snd_wnd,
        peer_window_shift,
        peer_mss: u16::try_from(k.mss).unwrap_or(u16::MAX),
        sack: k.sack,
    })
}

/// The kernel's repair state for a connection the userspace stack
/// exported. Buffer sizes are left to [`crate::repair::restore`] (zero:
/// sized from the queues).
pub fn to_kernel(u: &ConnState) -> TcpState {
    let t = u.tuple;
    let rcv_nxt = u.recv_seq.wrapping_add(u.recv_queue.len() as u32);
    TcpState {
        local: SocketAddr::V4(SocketAddrV4::new(t.local_addr, t.local_port)),
        peer: SocketAddr::V4(SocketAddrV4::new(t.remote_addr, t.remote_port)),
        send_seq: u.send_seq,
        recv_seq: u.recv_seq,
        send_queue: u.send_queue.clone(),
        unsent: u.send_queue.len() - u.sent.min(u.send_queue.len()),
        recv_queue: u.recv_queue.clone(),
        mss: u32::from(u.peer_mss),
        wscale: u.peer_window_shift.map(|send| (send, u.window_shift)),
        sack: u.sack,
        timestamps: false,
        timestamp: 0,
        window: RepairWindow {
            // The kernel takes a window update from a segment at or after
            // snd_wl1: the next one the peer sends qualifies.
            snd_wl1: rcv_nxt,
            snd_wnd: u.peer_window,
            max_window: u.peer_window,
            rcv_wnd: u.last_window,
            rcv_wup: u.last_ack,
        },
        buffers: (0, 0),
    }
}

/// Sequence-space `a < b` (RFC 793 modular comparison).
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn max_seq(a: u32, b: u32) -> u32 {
    if before(a, b) { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_state() -> TcpState {
        TcpState {
            local: "10.1.0.1:443".parse().unwrap(),
            peer: "10.1.0.2:40000".parse().unwrap(),
            send_seq: u32::MAX - 10,
            recv_seq: 1000,
            send_queue: (0..100).collect(),
            unsent: 30,
            recv_queue: vec![7; 50],
            mss: 1448,
            wscale: Some((9, 7)),
            sack: true,
            timestamps: false,
            timestamp: 0,
            window: RepairWindow {
                snd_wl1: 1040,
                snd_wnd: 64_000,
                max_window: 64_000,
                rcv_wnd: 65_536,
                rcv_wup: 1050,
            },
            buffers: (87_040, 131_072),
        }
    }

    #[test]
    fn kernel_state_maps_field_by_field() {
        let k = kernel_state();
        let u = to_userspace(&k).unwrap();
        assert_eq!(u.tuple.local_port, 443);
        assert_eq!(u.tuple.remote_addr, std::net::Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(
            (u.send_seq, u.sent, u.send_queue.len()),
            (u32::MAX - 10, 70, 100)
        );
        assert_eq!((u.recv_seq, u.recv_queue.len()), (1000, 50));
        // rcv_wup 1050 = rcv_nxt: the last ACK covered everything.
        assert_eq!((u.last_ack, u.last_window), (1050, 65_536));
        // Ours is the receive scale, the peer's the send scale.
        assert_eq!((u.window_shift, u.peer_window_shift), (7, Some(9)));
        assert_eq!((u.peer_window, u.peer_mss, u.sack), (64_000, 1448, true));
    }

    #[test]
    fn last_ack_and_right_edge_carry_over() {
        // The application read past the last ACK (delayed): the ACK stays
        // where it was, and so does the promised right edge.
        let mut k = kernel_state();
        k.window.rcv_wup = 900;
        k.window.rcv_wnd = 1000;
        let u = to_userspace(&k).unwrap();
        assert_eq!(u.last_ack, 900);
        assert_eq!(u.last_ack.wrapping_add(u.last_window), 1900);
        // A right edge behind what arrived is moved up to rcv_nxt.
        k.window.rcv_wnd = 0;
        k.window.rcv_wup = 1000;
        let u = to_userspace(&k).unwrap();
        assert_eq!(u.last_ack.wrapping_add(u.last_window), 1050);
    }

    #[test]
    fn timestamps_and_ipv6_are_refused() {
        let mut k = kernel_state();
        k.timestamps = true;
        assert_eq!(to_userspace(&k), Err(HandoffError::Timestamps));
        let mut k = kernel_state();
        k.local = "[::1]:443".parse().unwrap();
        k.peer = "[::1]:40000".parse().unwrap();
        assert_eq!(to_userspace(&k), Err(HandoffError::Ipv6));
    }

    #[test]
    fn round_trip_keeps_what_both_sides_carry() {
        let k = kernel_state();
        let back = to_kernel(&to_userspace(&k).unwrap());
        assert_eq!(back.local, k.local);
        assert_eq!(back.peer, k.peer);
        assert_eq!((back.send_seq, back.recv_seq), (k.send_seq, k.recv_seq));
        assert_eq!(back.send_queue, k.send_queue);
        assert_eq!(back.unsent, k.unsent);
        assert_eq!(back.recv_queue, k.recv_queue);
        assert_eq!(
            (back.mss, back.wscale, back.sack),
            (k.mss, k.wscale, k.sack)
        );
        assert_eq!(back.window.snd_wnd, k.window.snd_wnd);
        assert_eq!((back.window.rcv_wup, back.window.rcv_wnd), (1050, 65_536));
        // The kernel's own window checks: snd_wl1 within rcv_nxt + rcv_wnd,
        // rcv_wup not after rcv_nxt.
        let rcv_nxt = back.recv_seq.wrapping_add(back.recv_queue.len() as u32);
        assert!(!before(
            rcv_nxt.wrapping_add(back.window.rcv_wnd),
            back.window.snd_wl1
        ));
        assert!(!before(rcv_nxt, back.window.rcv_wup));
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(before(u32::MAX - 5, 3));
        assert!(!before(3, u32::MAX - 5));
        assert_eq!(max_seq(u32::MAX, 2), 2);
    }
}

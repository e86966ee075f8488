//! An established kernel TCP connection taken out of one socket and put
//! into another with `TCP_REPAIR`, the peer none the wiser (the first part
//! of a live move between data paths, after XO and CRIU).
//!
//! Contract:
//! - [`capture`] puts a connected socket into repair mode and reads
//!   everything the kernel needs to go on: both sequence numbers, the
//!   unread receive queue, the send queue (unacknowledged and unsent bytes,
//!   and which is which), MSS, window scales, SACK and timestamp options,
//!   the windows, the timestamp clock and the buffer sizes. The reads are
//!   repeated until two rounds agree (the socket still takes segments in
//!   repair mode). The socket stays in repair mode: closing it then sends
//!   nothing (no FIN, no RST).
//! - [`restore`] builds a new kernel socket from a [`TcpState`]: bound to
//!   the same local address (possible while a listener holds it),
//!   "connected" to the peer without a SYN, queues refilled, options and
//!   windows set; it then leaves repair mode with a window probe, so the
//!   connection resumes at once. The unsent tail is written after that, as
//!   any write; what does not fit is returned for the caller to write when
//!   the socket is writable. The old socket must be closed first: the
//!   kernel keeps one socket per address pair, and the connect fails with
//!   `EADDRNOTAVAIL` while the old one is open.
//! - A move to another stack (the DPDK path) keeps the old socket open
//!   until the new owner has the connection; if that fails, [`resume`]
//!   takes the old socket back and nothing is lost. A move between kernel
//!   sockets has closed the old one, so a failed [`restore`] is answered
//!   with [`reset`]: the peer gets an RST instead of waiting on a silent
//!   connection.
//! - From the capture until the old socket is closed, segments from the
//!   peer must not reach the old socket (it would acknowledge bytes the
//!   state does not hold) nor the host's stack in between (a listener on
//!   the address would answer them with RST): the caller steers or holds
//!   them. Nothing here touches the TLS state.
//!
//! Linux only; `TCP_REPAIR` needs `CAP_NET_ADMIN`.

use std::ffi::c_int;
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// `TCP_REPAIR_QUEUE` values (linux/tcp.h).
const TCP_NO_QUEUE: c_int = 0;
const TCP_RECV_QUEUE: c_int = 1;
const TCP_SEND_QUEUE: c_int = 2;
/// `TCP_REPAIR` values: on, off with a window probe, off without one.
const REPAIR_ON: c_int = 1;
const REPAIR_OFF: c_int = 0;
const REPAIR_OFF_NO_PROBE: c_int = -1;
/// `TCP_REPAIR_OPTIONS` option codes (the TCP option kinds).
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
/// How often a queue is read again when segments changed it meanwhile.
const QUEUE_READ_TRIES: usize = 16;
/// `tcp_info.tcpi_state` of an established connection.
const TCP_ESTABLISHED: u8 = 1;
/// `tcp_info.tcpi_options` bits.
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

/// `struct tcp_repair_opt`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RepairOpt {
    code: u32,
    val: u32,
}

/// `struct tcp_repair_window`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairWindow {
    /// Sequence number of the segment that last updated the send window.
    pub snd_wl1: u32,
    /// The peer's receive window (our send window), unscaled bytes.
    pub snd_wnd: u32,
    /// The largest window the peer ever offered.
    pub max_window: u32,
    /// Our receive window.
    pub rcv_wnd: u32,
    /// `rcv_nxt` when our window was last advertised.
    pub rcv_wup: u32,
}

/// Everything [`restore`] needs to continue a connection elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpState {
    /// Our address (the listener's, for an accepted connection).
    pub local: SocketAddr,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Sequence number of the first byte of `send_queue` (the oldest
    /// unacknowledged byte).
    pub send_seq: u32,
    /// Sequence number of the first byte of `recv_queue` (the oldest
    /// unread byte).
    pub recv_seq: u32,
    /// Bytes written by the application and not yet acknowledged, oldest
    /// first; the last `unsent` of them were never sent.
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of `send_queue` were never sent.
    pub unsent: usize,
    /// Bytes received and not yet read by the application.
    pub recv_queue: Vec<u8>,
    /// The MSS the peer accepts.
    pub mss: u32,
    /// Window scales (send, receive), when negotiated.
    pub wscale: Option<(u8, u8)>,
    /// SACK was negotiated.
    pub sack: bool,
    /// Timestamps were negotiated.
    pub timestamps: bool,
    /// The socket's timestamp clock (`TCP_TIMESTAMP`).
    pub timestamp: u32,
    /// Both windows.
    pub window: RepairWindow,
    /// The socket's send and receive buffer sizes (`SO_SNDBUF`,
    /// `SO_RCVBUF`, as the kernel reports them).
    pub buffers: (u32, u32),
}

impl TcpState {
    /// Bytes at the start of the send queue that were sent (and await
    /// their acknowledgement).
    pub fn sent(&self) -> usize {
        self.send_queue.len() - self.unsent.min(self.send_queue.len())
    }
}

/// Read the state of the connection on `fd` and leave the socket in
/// repair mode (see the module docs). On error the socket is taken out of
/// repair mode again (with a window probe) and goes on.
pub fn capture(socket: &impl AsFd) -> io::Result<TcpState> {
    let sock = SockRef::from(socket);
    let local = sock.local_addr()?.as_socket().ok_or_else(not_inet)?;
    let peer = sock.peer_addr()?.as_socket().ok_or_else(not_inet)?;
    let fd = sock.as_raw_fd();
    set_int(fd, libc::TCP_REPAIR, REPAIR_ON)?;
    let state = read_state(fd, local, peer);
    if state.is_err() {
        let _ = set_int(fd, libc::TCP_REPAIR, REPAIR_OFF);
    }
    state
}

/// Take a captured socket back (its restore failed elsewhere): it leaves
/// repair mode with a window probe and carries on as before the capture.
/// Nothing was lost meanwhile: in repair mode the socket kept receiving
/// and acknowledging.
pub fn resume(socket: &impl AsFd) -> io::Result<()> {
    set_int(
        SockRef::from(socket).as_raw_fd(),
        libc::TCP_REPAIR,
        REPAIR_OFF,
    )
}

/// Close a socket without a word to the peer (its connection lives on
/// elsewhere, or was never handed over): into repair mode, then closed.
pub fn close_silently(socket: impl AsFd) -> io::Result<()> {
    set_int(
        SockRef::from(&socket).as_raw_fd(),
        libc::TCP_REPAIR,
        REPAIR_ON,
    )
}

fn read_state(fd: RawFd, local: SocketAddr, peer: SocketAddr) -> io::Result<TcpState> {
    let info: libc::tcp_info = get(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    if info.tcpi_state != TCP_ESTABLISHED {
        // A FIN already exchanged would be lost: restore builds ESTABLISHED.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "only an ESTABLISHED connection can be moved (TCP state {})",
                info.tcpi_state
            ),
        ));
    }
    // Segments may still land while this reads; a round counts only when
    // both queues' ends and lengths are the same after it as before.
    let mut round = 0;
    let (recv_seq, recv_queue, send_seq, send_queue, unsent, window) = loop {
        let before = queue_marks(fd)?;
        let unsent = ioctl_len(fd, libc::SIOCOUTQNSD as _)?;
        let (recv_seq, recv_queue) = read_queue(fd, TCP_RECV_QUEUE, libc::FIONREAD)?;
        let (send_seq, send_queue) = read_queue(fd, TCP_SEND_QUEUE, libc::TIOCOUTQ)?;
        let window: RepairWindow = get(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW)?;
        if queue_marks(fd)? == before {
            break (recv_seq, recv_queue, send_seq, send_queue, unsent, window);
        }
        round += 1;
        if round == QUEUE_READ_TRIES {
            return Err(io::Error::other(
                "the connection kept changing while it was captured",
            ));
        }
    };
    // No queue selected: a window opening now must not mark unsent bytes
    // as sent (they would wait for a retransmission after a resume).
    set_int(fd, libc::TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
    let mss: u32 = get(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG)?;
    let timestamp: u32 = get(fd, libc::IPPROTO_TCP, libc::TCP_TIMESTAMP)?;
    let sndbuf: c_int = get(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    let rcvbuf: c_int = get(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
    Ok(TcpState {
        local,
        peer,
        send_seq,
        recv_seq,
        unsent: unsent.min(send_queue.len()),
        send_queue,
        recv_queue,
        mss,
        wscale: (info.tcpi_options & TCPI_OPT_WSCALE != 0)
            .then(|| window_scales(info.tcpi_snd_rcv_wscale)),
        sack: info.tcpi_options & TCPI_OPT_SACK != 0,
        timestamps: info.tcpi_options & TCPI_OPT_TIMESTAMPS != 0,
        timestamp,
        window,
        buffers: (
            u32::try_from(sndbuf).unwrap_or(0),
            u32::try_from(rcvbuf).unwrap_or(0),
        ),
    })
}

/// `tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4` as the C compiler lays out
/// the bit-fields: from the low bits on little-endian targets (x86_64,
/// aarch64 Linux), from the high bits on big-endian ones.
fn window_scales(byte: u8) -> (u8, u8) {
    if cfg!(target_endian = "little") {
        (byte & 0xf, byte >> 4)
    } else {
        (byte >> 4, byte & 0xf)
    }
}

/// A restored connection: the socket (non-blocking, out of repair mode)
/// and the part of the unsent tail it could not take yet.
#[derive(Debug)]
pub struct Restored {
    /// The connection, resumed.
    pub stream: TcpStream,
    /// Bytes still to write, in order, before any new ones.
    pub pending: Vec<u8>,
}

/// Build a socket that carries on the connection `state` describes.
pub fn restore(state: &TcpState) -> io::Result<Restored> {
    let sock = connected_in_repair(state, state.send_seq, state.recv_seq)?;
    let fd = sock.as_raw_fd();
    // A fresh socket's buffers may be too small for the queues written in
    // repair mode (the send queue would block, the receive queue fail
    // with ENOMEM), and `wmem_max`/`rmem_max` may cap a plain setsockopt:
    // the old sizes, or the queues' (with room), are forced (this needs
    // CAP_NET_ADMIN like the rest, and fixes the sizes from then on).
    let (sndbuf, rcvbuf) = state.buffers;
    force_buffer(fd, libc::SO_SNDBUFFORCE, sndbuf, state.send_queue.len())?;
    force_buffer(fd, libc::SO_RCVBUFFORCE, rcvbuf, state.recv_queue.len())?;
    sock.set_nonblocking(true)?;
    set_options(fd, state)?;
    set_int(fd, libc::TCP_TIMESTAMP, state.timestamp as c_int)?;
    set_int(fd, libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    write_queue(fd, &state.recv_queue)?;
    let sent = state.sent();
    set_int(fd, libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    write_queue(fd, &state.send_queue[..sent])?;
    // The windows are checked against rcv_nxt: set after the receive queue.
    set(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR_WINDOW,
        &state.window,
    )?;
    set_int(fd, libc::TCP_REPAIR, REPAIR_OFF)?;
    let stream: TcpStream = sock.into();
    let pending = write_what_fits(&stream, &state.send_queue[sent..])?;
    Ok(Restored { stream, pending })
}

/// A new socket in repair mode, its queues starting at `send_seq` and
/// `recv_seq`, bound to the connection's local address and "connected" to
/// its peer (in repair mode connect sends no SYN: the socket is
/// ESTABLISHED). Repair mode lets it bind where a listener already is (the
/// kernel forces address reuse for it; a later SO_REUSEADDR would undo
/// that, so none is set).
fn connected_in_repair(state: &TcpState, send_seq: u32, recv_seq: u32) -> io::Result<Socket> {
    let domain = match state.local {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    let fd = sock.as_raw_fd();
    set_int(fd, libc::TCP_REPAIR, REPAIR_ON)?;
    set_int(fd, libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    set_int(fd, libc::TCP_QUEUE_SEQ, send_seq as c_int)?;
    set_int(fd, libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    set_int(fd, libc::TCP_QUEUE_SEQ, recv_seq as c_int)?;
    sock.bind(&SockAddr::from(state.local))?;
    sock.connect(&SockAddr::from(state.peer))?;
    Ok(sock)
}

/// Force a buffer size of at least `reported` (a size as the kernel
/// reports it, which is twice what was set) and room for `queued` bytes.
fn force_buffer(fd: RawFd, opt: c_int, reported: u32, queued: usize) -> io::Result<()> {
    let want = (reported as usize).max(2 * queued + 64 * 1024) / 2;
    let want = c_int::try_from(want).unwrap_or(c_int::MAX);
    set(fd, libc::SOL_SOCKET, opt, &want)
}

/// End the connection `state` describes with an RST, when its old socket
/// is closed and it cannot be restored: a socket is rebuilt at the
/// sequence numbers the peer expects (nothing queued), taken out of repair
/// mode without a probe, and closed with a zero linger.
pub fn reset(state: &TcpState) -> io::Result<()> {
    let snd_nxt = state.send_seq.wrapping_add(state.sent() as u32);
    let rcv_nxt = state.recv_seq.wrapping_add(state.recv_queue.len() as u32);
    let sock = connected_in_repair(state, snd_nxt, rcv_nxt)?;
    set_int(sock.as_raw_fd(), libc::TCP_REPAIR, REPAIR_OFF_NO_PROBE)?;
    sock.set_linger(Some(std::time::Duration::ZERO))?;
    drop(sock);
    Ok(())
}

fn set_options(fd: RawFd, state: &TcpState) -> io::Result<()> {
    let mut opts = vec![RepairOpt {
        code: TCPOPT_MSS,
        val: state.mss,
    }];
    // Always set, as (0, 0) without scaling: the repair-mode connect has
    // already picked a receive scale from the buffer sizes, and the kernel
    // shifts the windows it advertises by it whether or not scaling was
    // negotiated, so leaving it would advertise windows 2^scale too small.
    let (snd, rcv) = state.wscale.unwrap_or((0, 0));
    opts.push(RepairOpt {
        code: TCPOPT_WINDOW,
        val: u32::from(snd) | (u32::from(rcv) << 16),
    });
    if state.sack {
        opts.push(RepairOpt {
            code: TCPOPT_SACK_PERM,
            val: 0,
        });
    }
    if state.timestamps {
        opts.push(RepairOpt {
            code: TCPOPT_TIMESTAMP,
            val: 0,
        });
    }
    let len = (opts.len() * size_of::<RepairOpt>()) as libc::socklen_t;
    // SAFETY: opts is a live array of repr(C) tcp_repair_opt of len bytes.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_OPTIONS,
            opts.as_ptr().cast(),
            len,
        )
    })
}

/// Both queues' end sequence numbers and lengths (a segment that lands
/// changes one of them).
fn queue_marks(fd: RawFd) -> io::Result<[u32; 4]> {
    let mut marks = [0u32; 4];
    for (i, (queue, len_request)) in [
        (TCP_RECV_QUEUE, libc::FIONREAD),
        (TCP_SEND_QUEUE, libc::TIOCOUTQ),
    ]
    .into_iter()
    .enumerate()
    {
        set_int(fd, libc::TCP_REPAIR_QUEUE, queue)?;
        marks[2 * i] = get(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)?;
        marks[2 * i + 1] = ioctl_len(fd, len_request)? as u32;
    }
    Ok(marks)
}

/// The sequence number of the selected queue's first byte, and its bytes
/// (read without consuming them). The socket still takes segments in
/// repair mode (bytes arrive, ACKs shrink the send queue), so the sequence
/// number and length are read before and after the peek, and the read is
/// taken only when they agree.
fn read_queue(fd: RawFd, queue: c_int, len_request: libc::Ioctl) -> io::Result<(u32, Vec<u8>)> {
    set_int(fd, libc::TCP_REPAIR_QUEUE, queue)?;
    for _ in 0..QUEUE_READ_TRIES {
        // TCP_QUEUE_SEQ is the sequence number after the queue's last byte
        // (rcv_nxt, write_seq).
        let end: u32 = get(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)?;
        let len = ioctl_len(fd, len_request)?;
        let mut buf = vec![0u8; len];
        let got = if len == 0 {
            0
        } else {
            // SAFETY: buf is writable for len bytes. In repair mode a peek
            // reads the selected queue from its start.
            let n = unsafe {
                libc::recv(
                    fd,
                    buf.as_mut_ptr().cast(),
                    len,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            n as usize
        };
        let end_after: u32 = get(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)?;
        let len_after = ioctl_len(fd, len_request)?;
        if got == len && end_after == end && len_after == len {
            return Ok((end.wrapping_sub(len as u32), buf));
        }
    }
    Err(io::Error::other(
        "the TCP queue kept changing while it was read",
    ))
}

/// Refill the selected queue in repair mode (no segment goes out).
fn write_queue(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: data is readable for its length.
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::other("repair-mode queue write made no progress"));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Write `data` as far as the socket takes it now; the rest is returned.
fn write_what_fits(mut stream: &TcpStream, mut data: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Write;
    while !data.is_empty() {
        match stream.write(data) {
            Ok(0) => break,
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(data.to_vec())
}

fn ioctl_len(fd: RawFd, request: libc::Ioctl) -> io::Result<usize> {
    let mut n: c_int = 0;
    // SAFETY: these ioctls write one int through the pointer.
    cvt(unsafe { libc::ioctl(fd, request, &mut n) })?;
    usize::try_from(n).map_err(|_| io::Error::other("negative queue length"))
}

fn set_int(fd: RawFd, opt: c_int, val: c_int) -> io::Result<()> {
    set(fd, libc::IPPROTO_TCP, opt, &val)
}

fn set<T>(fd: RawFd, level: c_int, opt: c_int, val: &T) -> io::Result<()> {
    // SAFETY: val points at size_of::<T>() readable bytes for the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (val as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
}

/// Types any bytes initialise: integers and repr(C) structs of integers.
trait PlainData: Copy {}
impl PlainData for u32 {}
impl PlainData for c_int {}
impl PlainData for RepairWindow {}
impl PlainData for libc::tcp_info {}

/// A socket option of plain-old-data type `T`.
fn get<T: PlainData>(fd: RawFd, level: c_int, opt: c_int) -> io::Result<T> {
    let mut val = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: val has room for size_of::<T>() bytes and len says so; the
    // kernel writes at most len bytes.
    cvt(unsafe { libc::getsockopt(fd, level, opt, val.as_mut_ptr().cast(), &mut len) })?;
    // SAFETY: val was zeroed and then partly or wholly overwritten by the
    // kernel; every bit pattern is a valid T (PlainData).
    Ok(unsafe { val.assume_init() })
}

fn not_inet() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket")
}

fn cvt(ret: c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

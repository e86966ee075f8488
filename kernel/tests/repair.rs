//! `repair::capture` and `repair::restore` move a live loopback connection
//! from one socket to another with unread bytes on our side and unsent,
//! unacknowledged bytes towards a peer that stopped reading; the peer's
//! socket never notices: every byte arrives once, in order, both ways.
//! Needs CAP_NET_ADMIN (CI runs as root).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use dpuproxy_kernel::repair;

/// Byte `i` of a stream named by `seed`.
fn pattern(seed: u8, from: usize, len: usize) -> Vec<u8> {
    (from..from + len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// A loopback connection: the listener (kept open, as a proxy's is), the
/// client end and our end.
fn loopback_pair() -> (TcpListener, TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    (listener, client, ours)
}

/// Read exactly `n` bytes within `limit`.
fn read_exactly(s: &mut TcpStream, n: usize, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; 64 * 1024];
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "read {} of {n} bytes in time",
            out.len()
        );
        match s.read(&mut buf[..(n - out.len()).min(64 * 1024)]) {
            Ok(0) => panic!("EOF after {} of {n} bytes", out.len()),
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read failed after {} of {n} bytes: {e}", out.len()),
        }
    }
    out
}

#[test]
fn a_connection_with_queued_bytes_both_ways_moves_to_a_new_socket() {
    move_a_connection(None);
}

/// On loopback every byte sent is acknowledged at once, so the captured
/// send queue is all unsent. Marking part of it as sent makes the restored
/// socket treat those bytes as in flight (as after a capture mid-flight):
/// written in repair mode, retransmitted when no ACK comes, and still
/// received once each.
#[test]
fn bytes_restored_as_in_flight_are_retransmitted_not_lost() {
    move_a_connection(Some(2));
}

/// Move the server side of a loopback connection; with `in_flight_part`
/// = k, the first 1/k of its send queue is restored as sent.
fn move_a_connection(in_flight_part: Option<usize>) {
    let (_listener, mut client, mut server) = loopback_pair();
    let client_port = client.local_addr().unwrap().port();

    // Some traffic first, so the sequence numbers are not the initial ones.
    client.write_all(b"hello").unwrap();
    assert_eq!(
        read_exactly(&mut server, 5, Duration::from_secs(5)),
        b"hello"
    );
    server.write_all(b"world").unwrap();
    assert_eq!(
        read_exactly(&mut client, 5, Duration::from_secs(5)),
        b"world"
    );

    // Unread on our side: 30 KB the server does not read.
    let unread = pattern(1, 0, 30_000);
    client.write_all(&unread).unwrap();
    // Unacknowledged and unsent towards the client, which stops reading:
    // the server writes until its socket takes no more.
    server.set_nonblocking(true).unwrap();
    let mut written = 0usize;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "send queue never filled");
        let chunk = pattern(2, written, 16 * 1024);
        match server.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    // Let delayed ACKs and window updates settle before the move.
    std::thread::sleep(Duration::from_millis(200));

    let mut state = repair::capture(&server).expect("capture (needs CAP_NET_ADMIN)");
    assert_eq!(state.recv_queue, unread, "the unread bytes, as they came");
    assert!(
        !state.send_queue.is_empty(),
        "a full send queue was captured"
    );
    assert!(state.unsent <= state.send_queue.len());
    assert_eq!(state.local, server.local_addr().unwrap());
    assert_eq!(state.peer.port(), client_port);
    eprintln!(
        "captured: {} unread, {} in the send queue ({} unsent), mss {}, wscale {:?}, sack {}, timestamps {}",
        state.recv_queue.len(),
        state.send_queue.len(),
        state.unsent,
        state.mss,
        state.wscale,
        state.sack,
        state.timestamps
    );
    if let Some(k) = in_flight_part {
        state.unsent = state.send_queue.len() - state.send_queue.len() / k;
    }
    // The old socket closes in repair mode: nothing goes out.
    drop(server);
    let restored = repair::restore(&state).expect("restore");
    let mut server = restored.stream;
    let mut pending = restored.pending;

    // The client reads everything the old socket had written, and a tail
    // the new one writes after the move; the new socket writes what is
    // still pending as the client's window opens.
    let after_move = pattern(3, 0, 50_000);
    let expected: Vec<u8> = pattern(2, 0, written)
        .into_iter()
        .chain(after_move.iter().copied())
        .collect();
    pending.extend_from_slice(&after_move);
    let total = expected.len();
    let reader = std::thread::spawn(move || {
        let got = read_exactly(&mut client, total, Duration::from_secs(20));
        (client, got)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} bytes never written",
            pending.len()
        );
        match server.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("write after the move: {e}"),
        }
    }
    let (client, got) = reader.join().unwrap();
    assert!(
        got == expected,
        "the client's stream differs after the move"
    );

    // Our side reads the 30 KB it had not read, then what comes next.
    server.set_nonblocking(false).unwrap();
    assert_eq!(
        read_exactly(&mut server, unread.len(), Duration::from_secs(5)),
        unread
    );
    let client = stream_across(client, &mut server, pattern(4, 0, 100_000));
    assert_eq!(
        client.local_addr().unwrap().port(),
        client_port,
        "the same client connection throughout"
    );
}

/// A capture whose move fails while the old socket is still open (as in a
/// move to another stack) costs nothing: the old socket resumes, both ways,
/// byte-exact, even for bytes the peer sent while it was in repair mode.
/// Here the move that fails is a kernel restore tried too early: the old
/// socket still holds the address pair.
#[test]
fn a_captured_socket_taken_back_carries_on() {
    let (_listener, mut client, mut server) = loopback_pair();
    let first = pattern(5, 0, 20_000);
    client.write_all(&first).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let state = repair::capture(&server).expect("capture (needs CAP_NET_ADMIN)");
    assert_eq!(state.recv_queue, first);
    // The peer goes on sending while our socket is in repair mode.
    let during = pattern(6, 0, 10_000);
    client.write_all(&during).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let early = repair::restore(&state).expect_err("the old socket holds the address pair");
    assert_eq!(early.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{early}");
    repair::resume(&server).expect("resume");
    let all: Vec<u8> = first.iter().chain(during.iter()).copied().collect();
    assert_eq!(
        read_exactly(&mut server, all.len(), Duration::from_secs(5)),
        all
    );
    stream_across(server, &mut client, pattern(7, 0, 200_000));
}

/// `from` writes `data` (on a thread of its own, so that neither side's
/// buffers limit it) while `to` reads it back byte-exact; `from` is
/// returned.
fn stream_across(mut from: TcpStream, to: &mut TcpStream, data: Vec<u8>) -> TcpStream {
    let len = data.len();
    let writer = std::thread::spawn(move || {
        from.write_all(&data).unwrap();
        (from, data)
    });
    let got = read_exactly(to, len, Duration::from_secs(10));
    let (from, data) = writer.join().unwrap();
    assert!(got == data, "{len} bytes arrived changed");
    from
}

/// A connection past ESTABLISHED (here CLOSE_WAIT: the peer sent its FIN)
/// is refused, since a restore would lose the FIN, and the socket is left
/// as it was: out of repair mode, still able to send.
#[test]
fn a_half_closed_connection_is_refused_and_left_usable() {
    let (_listener, mut client, server) = loopback_pair();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let err = repair::capture(&server).expect_err("CLOSE_WAIT is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("ESTABLISHED"), "{err}");
    stream_across(server, &mut client, pattern(8, 0, 10_000));
}

/// A connection whose old socket is closed and that is not restored is
/// ended with an RST: the peer learns at once instead of waiting on a
/// silent connection.
#[test]
fn a_connection_that_cannot_be_restored_is_reset() {
    let (_listener, mut client, mut server) = loopback_pair();
    client.write_all(b"request").unwrap();
    assert_eq!(
        read_exactly(&mut server, 7, Duration::from_secs(5)),
        b"request"
    );
    server.write_all(b"partial answer").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let state = repair::capture(&server).expect("capture (needs CAP_NET_ADMIN)");
    drop(server);
    repair::reset(&state).expect("reset");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let err = loop {
        let mut buf = [0u8; 64];
        match client.read(&mut buf) {
            Ok(0) => panic!("a FIN, not an RST, after {got:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

//! Two stacks over the in-memory wire: lifecycle, events, timers, corruption.

mod common;

use common::*;
use dpuproxy_tcp::{ConnId, Duration, Event, SocketConfig, State, TcpError};

fn read_all(p: &mut Pair, on_b: bool, c: ConnId, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    assert!(p.run_until(100_000, |p| {
        let s = if on_b { &mut p.b } else { &mut p.a };
        if let Ok(n) = s.recv_slice(c, &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got.len() >= want
    }));
    got
}

#[test]
fn connect_exchange_close() {
    let mut p = Pair::default_pair(1);
    let (c, s) = established(&mut p);
    assert_eq!(p.a.send_slice(c, b"hello").unwrap(), 5);
    assert_eq!(read_all(&mut p, true, s, 5), b"hello");
    assert!(p.b_events.contains(&Event::Readable(s)));
    p.a.close(c).unwrap();
    assert!(p.run_until(1000, |p| p.b.state(s).unwrap() == State::CloseWait));
    // End of stream: Readable again, then Finished.
    assert!(
        p.b_events
            .iter()
            .filter(|e| **e == Event::Readable(s))
            .count()
            >= 2
    );
    assert_eq!(p.b.recv_slice(s, &mut [0u8; 4]), Err(TcpError::Finished));
    p.b.close(s).unwrap();
    assert!(p.run_until(10_000, |p| p.a.connection_count() == 0
        && p.b.connection_count() == 0));
    // The side that closed first keeps a TIME-WAIT record, the other nothing.
    assert_eq!(p.a.time_wait_count(), 1);
    assert_eq!(p.b.time_wait_count(), 0);
    // Released handles are invalid.
    assert_eq!(p.a.state(c), Err(TcpError::InvalidHandle));
    assert_eq!(p.b.send_slice(s, b"x"), Err(TcpError::InvalidHandle));
}

#[test]
fn simultaneous_close() {
    let mut p = Pair::default_pair(2);
    let (c, s) = established(&mut p);
    // Both send a FIN before either sees the other's: FIN-WAIT-1 → CLOSING → TIME-WAIT.
    p.a.shutdown(c).unwrap();
    p.b.shutdown(s).unwrap();
    let n = p.step();
    assert!(n >= 2);
    let mut saw_closing = false;
    assert!(p.run_until(10_000, |p| {
        saw_closing |=
            p.a.state(c).unwrap() == State::Closing || p.b.state(s).unwrap() == State::Closing;
        p.a_events.contains(&Event::Closed(c)) && p.b_events.contains(&Event::Closed(s))
    }));
    assert!(saw_closing, "the FINs crossed");
    // Both ends are in TIME-WAIT, as compact records; the sockets are gone.
    assert_eq!(p.a.time_wait_count(), 1);
    assert_eq!(p.b.time_wait_count(), 1);
    assert_eq!(p.a.state(c).unwrap(), State::Closed);
    assert!(!p.a_events.contains(&Event::Reset(c)));
    assert_eq!(p.a.recv_slice(c, &mut [0u8; 1]), Err(TcpError::Finished));
    p.a.close(c).unwrap();
    p.b.close(s).unwrap();
    assert_eq!(p.a.connection_count() + p.b.connection_count(), 0);
    let mem = p.a.memory_usage();
    assert_eq!((mem.connections, mem.buffers), (0, 0));
}

#[test]
fn unread_data_survives_a_clean_close() {
    let mut p = Pair::default_pair(3);
    let (c, s) = established(&mut p);
    p.b.send_slice(s, b"last words").unwrap();
    p.b.shutdown(s).unwrap();
    // A closes too without reading; once its FIN is acknowledged A's socket
    // (and its buffers) are dropped, the unread bytes kept for the caller.
    assert!(p.run_until(1000, |p| p.b.state(s).unwrap() == State::FinWait2));
    p.a.shutdown(c).unwrap();
    assert!(p.run_until(10_000, |p| p.a_events.contains(&Event::Closed(c))));
    assert_eq!(
        p.a.memory_usage().buffers,
        10,
        "only the unread bytes are held"
    );
    // B closed first: B holds the TIME-WAIT record.
    assert_eq!((p.a.time_wait_count(), p.b.time_wait_count()), (0, 1));
    assert_eq!(p.a.recv_queue(c).unwrap(), 10);
    let mut buf = [0u8; 32];
    assert_eq!(p.a.recv_slice(c, &mut buf).unwrap(), 10);
    assert_eq!(&buf[..10], b"last words");
    assert_eq!(p.a.recv_slice(c, &mut buf), Err(TcpError::Finished));
}

#[test]
fn peer_abort_is_reset() {
    let mut p = Pair::default_pair(4);
    let (c, s) = established(&mut p);
    p.b.abort(s).unwrap();
    assert!(p.run_until(1000, |p| p.a_events.contains(&Event::Reset(c))));
    assert!(!p.a_events.contains(&Event::Closed(c)));
    assert_eq!(p.a.send_slice(c, b"x"), Err(TcpError::Reset));
    assert_eq!(p.a.time_wait_count(), 0);
}

#[test]
fn writable_after_a_short_write() {
    let mut p = Pair::default_pair(5);
    let (c, s) = established(&mut p);
    let big = vec![7u8; 64 * 1024];
    let n = p.a.send_slice(c, &big).unwrap();
    assert_eq!(
        n,
        SocketConfig::default().tx_buffer,
        "a short write fills the buffer"
    );
    assert_eq!(p.a.send_room(c).unwrap(), 0);
    // The peer reads; ACKs free the buffer; Writable is raised once.
    let mut sink = vec![0u8; 65536];
    assert!(p.run_until(10_000, |p| {
        let _ = p.b.recv_slice(s, &mut sink);
        p.a_events.contains(&Event::Writable(c))
    }));
    assert!(p.a.send_room(c).unwrap() > 0);
    assert_eq!(
        p.a_events
            .iter()
            .filter(|e| **e == Event::Writable(c))
            .count(),
        1
    );
}

#[test]
fn bulk_both_ways_is_byte_exact() {
    let mut p = Pair::default_pair(6);
    let (c, s) = established(&mut p);
    let total = 300_000u64;
    let (mut a_out, mut a_in, mut b_out, mut b_in) = (
        Stream::default(),
        Stream::default(),
        Stream::default(),
        Stream::default(),
    );
    assert!(p.run_until(200_000, |p| {
        send_pattern(&mut p.a, c, 1, &mut a_out, total);
        send_pattern(&mut p.b, s, 2, &mut b_out, total);
        let _ = recv_pattern(&mut p.b, s, 1, &mut b_in);
        let _ = recv_pattern(&mut p.a, c, 2, &mut a_in);
        a_in.received == total && b_in.received == total
    }));
    assert_eq!((a_in.bad, b_in.bad), (0, 0));
}

#[test]
fn idle_connections_cost_no_timers() {
    let mut p = Pair::default_pair(7);
    let l = p.b.listen(80, 256).unwrap();
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(p.a.connect(B, 80).unwrap());
    }
    assert!(p.run_until(10_000, |p| {
        while let Ok(Some(_)) = p.b.accept(l) {}
        p.a_events
            .iter()
            .filter(|e| matches!(e, Event::Connected(_)))
            .count()
            == 200
            && p.b.accept_queue_len(l).unwrap() == 0
            && p.b.connection_count() == 200
    }));
    // Exchange a byte on each so retransmit and delayed-ACK timers have run.
    for &c in &clients {
        p.a.send_slice(c, b"x").unwrap();
    }
    for _ in 0..2000 {
        let n = p.step();
        p.advance(n > 0);
    }
    // Now idle: nothing is scheduled, and a long quiet period fires no timer
    // and sends nothing (smoltcp's own timeout would have killed these).
    let fires = (p.a.stats().timer_fires, p.b.stats().timer_fires);
    let frames = p.a.stats().tx_frames + p.b.stats().tx_frames;
    assert_eq!(p.a.poll_at(), None, "client has nothing scheduled");
    assert_eq!(p.b.poll_at(), None, "server has nothing scheduled");
    p.now += Duration::from_secs(3600);
    for _ in 0..10 {
        p.step();
        p.now += Duration::from_secs(60);
    }
    assert_eq!((p.a.stats().timer_fires, p.b.stats().timer_fires), fires);
    assert_eq!(p.a.stats().tx_frames + p.b.stats().tx_frames, frames);
    for &c in &clients {
        assert_eq!(p.a.state(c).unwrap(), State::Established);
    }
}

#[test]
fn user_timeout_resets_when_data_goes_unacknowledged() {
    let mut p = Pair::default_pair(8);
    let (c, _s) = established(&mut p);
    // The peer vanishes: every frame A sends is lost.
    p.faults(
        dpuproxy_tcp::fault::Faults {
            drop: 1.0,
            ..Default::default()
        },
        Default::default(),
    );
    let start = p.now;
    p.a.send_slice(c, b"anyone there?").unwrap();
    assert!(p.run_until(100_000, |p| p.a_events.contains(&Event::Reset(c))));
    let took = p.now - start;
    // Default user timeout: 30 s (retransmissions back off up to 3 s).
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(35),
        "{took}"
    );
}

#[test]
fn corrupted_segment_is_never_delivered() {
    let mut p = Pair::default_pair(9);
    let (c, s) = established(&mut p);
    p.a.send_slice(c, b"payload!").unwrap();
    // Send from A only, then pull A's data segment off the wire.
    p.a.poll(p.now, &mut p.da);
    let frame = p.db.inner_mut().take_incoming().expect("A sent a segment");
    assert_eq!(&frame[frame.len() - 8..], b"payload!");
    for i in 0..frame.len() {
        let mut bad = frame.clone();
        bad[i] ^= 0x20;
        p.da.inner_mut().inject(&bad);
        p.b.poll(p.now, &mut p.db);
        assert_eq!(
            p.b.recv_queue(s).unwrap(),
            0,
            "byte {i} corrupted yet delivered"
        );
        while p.da.inner_mut().take_incoming().is_some() {}
    }
    p.da.inner_mut().inject(&frame);
    p.b.poll(p.now, &mut p.db);
    assert_eq!(p.b.recv_queue(s).unwrap(), 8);
}

#[test]
fn unlisten_resets_queued_connections() {
    let mut p = Pair::default_pair(10);
    let l = p.b.listen(80, 16).unwrap();
    let c = p.a.connect(B, 80).unwrap();
    assert!(p.run_until(1000, |p| p.b.accept_queue_len(l).unwrap() == 1));
    p.b.unlisten(l).unwrap();
    assert!(p.run_until(1000, |p| p.a_events.contains(&Event::Reset(c))));
    assert_eq!(p.b.connection_count(), 0);
    assert_eq!(p.b.accept(l), Err(TcpError::InvalidHandle));
    // The port is free again.
    p.b.listen(80, 4).unwrap();
}

#[test]
fn ethernet_arp_and_time_wait_ack() {
    use dpuproxy_tcp::smoltcp::wire::{
        EthernetFrame, EthernetProtocol, IpAddress, Ipv4Packet, TcpPacket,
    };
    let mut p = Pair::ethernet(11);
    let l = p.b.listen(80, 4).unwrap();
    let start = p.now;
    let c = p.a.connect(B, 80).unwrap();
    assert!(p.run_until(1000, |p| p.a_events.contains(&Event::Connected(c))));
    // The SYN waited for ARP; the ARP reply woke it at once rather than
    // after smoltcp's neighbour-miss silence (1 s of smoltcp time = 50 ms).
    assert!(
        p.now - start < Duration::from_millis(5),
        "{}",
        p.now - start
    );
    assert!(p.run_until(1000, |p| p.b.accept_queue_len(l).unwrap() == 1));
    let s = p.b.accept(l).unwrap().unwrap();
    p.a.send_slice(c, b"over ethernet").unwrap();
    assert_eq!(read_all(&mut p, true, s, 13), b"over ethernet");
    // A closes first; B answers with its FIN, which we hold on to.
    p.a.close(c).unwrap();
    assert!(p.run_until(1000, |p| p.b.state(s).unwrap() == State::CloseWait));
    p.b.close(s).unwrap();
    p.b.poll(p.now, &mut p.db);
    // (A port's `take_incoming` takes what the other side sent; `inject`
    // sends as this side.)
    let fin = p.da.inner_mut().take_incoming().expect("B's FIN");
    // Deliver it to A: TIME-WAIT.
    p.db.inner_mut().inject(&fin);
    p.a.poll(p.now, &mut p.da);
    assert_eq!(p.a.time_wait_count(), 1);
    let first_ack = p.db.inner_mut().take_incoming().expect("A's final ACK");
    // The FIN again (our ACK "was lost"): the TIME-WAIT record answers.
    p.db.inner_mut().inject(&fin);
    p.a.poll(p.now, &mut p.da);
    assert_eq!(p.a.stats().time_wait_acks, 1);
    let ack =
        p.db.inner_mut()
            .take_incoming()
            .expect("ACK from the record");
    let eth = EthernetFrame::new_checked(&ack[..]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (MAC_A, MAC_B));
    assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum());
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(tcp.verify_checksum(&IpAddress::Ipv4(A), &IpAddress::Ipv4(B)));
    assert!(tcp.ack() && !tcp.fin() && !tcp.syn() && !tcp.rst());
    // Same numbers as the ACK the socket itself sent.
    let eth0 = EthernetFrame::new_checked(&first_ack[..]).unwrap();
    let ip0 = Ipv4Packet::new_checked(eth0.payload()).unwrap();
    let tcp0 = TcpPacket::new_checked(ip0.payload()).unwrap();
    assert_eq!(
        (tcp.seq_number(), tcp.ack_number()),
        (tcp0.seq_number(), tcp0.ack_number())
    );
}

#[test]
fn buffers_start_small_and_grow_with_use() {
    let mut p = Pair::default_pair(17);
    let (c, s) = established(&mut p);
    // A new connection holds 2 KiB + 1 KiB of buffers, not the configured
    // maxima (8 KiB + 4 KiB by default).
    assert_eq!(p.a.memory_usage().buffers, 2048 + 1024);
    assert_eq!(p.b.memory_usage().buffers, 2048 + 1024);
    // A small exchange does not grow them.
    assert_eq!(p.a.send_slice(c, b"ping"), Ok(4));
    let mut got = Vec::new();
    assert!(p.run_until(1000, |p| {
        let mut buf = [0u8; 16];
        let n = p.b.recv_slice(s, &mut buf).unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
        got == b"ping"
    }));
    assert_eq!(p.b.memory_usage().buffers, 2048 + 1024);
    // Bulk one way, read late: the receiver's buffer grows to its maximum
    // (the window opens with it), the sender's too; every byte arrives.
    let total = 100_000u64;
    let (mut out, mut inn) = (Stream::default(), Stream::default());
    let mut step = 0;
    assert!(p.run_until(100_000, |p| {
        step += 1;
        send_pattern(&mut p.a, c, 3, &mut out, total);
        if step % 50 == 0 {
            let _ = recv_pattern(&mut p.b, s, 3, &mut inn);
        }
        inn.received == total
    }));
    assert_eq!(inn.bad, 0);
    assert_eq!(
        p.a.memory_usage().buffers,
        2048 + 4096,
        "sender grew its send buffer"
    );
    assert_eq!(
        p.b.memory_usage().buffers,
        8192 + 1024,
        "receiver grew its receive buffer"
    );
    // The send room counts the growth still allowed.
    assert_eq!(p.b.send_room(s), Ok(4096));
}

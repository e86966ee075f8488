//! Handoff: an established connection exported from one stack and imported
//! into another (or back) continues byte-exact in both directions, with
//! queues in flight, under loss, reordering and duplication, and the peer
//! never sees a RST or a new handshake.

mod common;

use common::*;
use dpuproxy_tcp::fault::Faults;
use dpuproxy_tcp::{ConnId, ConnState, Event, Stack, State, TcpError};

/// A fresh stack for B's address on B's side of the wire.
fn fresh_b(p: &Pair, seed: u64) -> Stack {
    use dpuproxy_tcp::smoltcp::phy::Device;
    Stack::new(config(B, seed), p.db.capabilities(), p.now).unwrap()
}

/// Move B's connection `s` into a fresh stack that takes B's place on the
/// wire; returns the new handle and the carried state.
fn move_b(p: &mut Pair, s: ConnId, seed: u64) -> (ConnId, ConnState) {
    let state = p.b.export(p.now, s).unwrap();
    let mut next = fresh_b(p, seed);
    let s2 = next.import(&state, None).unwrap();
    let mut old = std::mem::replace(&mut p.b, next);
    assert!(old.unhold(&state.tuple));
    assert_eq!(old.connection_count(), 0);
    assert_eq!(old.held_count(), 0);
    (s2, state)
}

/// Both directions: A sends `total` bytes of stream 1, B sends `total` of
/// stream 2; B's connection is moved to a new stack every `move_every`
/// steps (never when 0). Returns (A's view, B's view) of both streams and
/// the number of moves.
fn exchange_with_moves(
    p: &mut Pair,
    total: u64,
    move_every: usize,
    max_steps: usize,
) -> ([Stream; 2], [Stream; 2], usize) {
    let (c, mut s) = established(p);
    let (mut a_out, mut a_in, mut b_out, mut b_in) = Default::default();
    let mut moves = 0;
    for step in 0..max_steps {
        send_pattern(&mut p.a, c, 1, &mut a_out, total);
        send_pattern(&mut p.b, s, 2, &mut b_out, total);
        // B reads in bursts only, so its receive queue is often non-empty
        // when it moves; A reads every other step, so B's send queue backs up.
        if step % 7 == 0 {
            recv_pattern(&mut p.b, s, 1, &mut b_in).unwrap();
        }
        if step % 2 == 0 {
            recv_pattern(&mut p.a, c, 2, &mut a_in).unwrap();
        }
        if a_in.received == total && b_in.received == total {
            break;
        }
        if move_every > 0 && step % move_every == move_every - 1 {
            s = move_b(p, s, 1000 + moves as u64).0;
            moves += 1;
        }
        let n = p.step();
        p.advance(n > 0);
    }
    let resets = p
        .a_events
        .iter()
        .filter(|e| matches!(e, Event::Reset(_)))
        .count();
    assert_eq!(resets, 0, "A saw a reset");
    assert_eq!(p.a.state(c).unwrap(), State::Established);
    ([a_out, a_in], [b_out, b_in], moves)
}

#[test]
fn moved_connection_continues_byte_exact() {
    let mut p = Pair::default_pair(11);
    let total = 400_000;
    let ([_, a_in], [_, b_in], moves) = exchange_with_moves(&mut p, total, 40, 200_000);
    assert!(moves >= 5, "only {moves} moves");
    assert_eq!((a_in.received, a_in.bad), (total, 0));
    assert_eq!((b_in.received, b_in.bad), (total, 0));
    assert_eq!(p.b.stats().imported, 1);
}

#[test]
fn moves_under_loss_reordering_and_duplication() {
    let mut p = Pair::default_pair(12);
    let f = Faults {
        drop: 0.05,
        reorder: 0.05,
        duplicate: 0.02,
        ..Faults::default()
    };
    p.faults(f, f);
    let total = 200_000;
    let ([_, a_in], [_, b_in], moves) = exchange_with_moves(&mut p, total, 30, 2_000_000);
    assert!(moves >= 5, "only {moves} moves");
    assert_eq!((a_in.received, a_in.bad), (total, 0));
    assert_eq!((b_in.received, b_in.bad), (total, 0));
}

#[test]
fn carried_state_holds_queues_in_flight() {
    let mut p = Pair::default_pair(13);
    let (c, s) = established(&mut p);
    // A sends 3000 bytes B does not read; B sends more than A's window can
    // take while A does not read.
    let (mut a_out, mut b_out) = (Stream::default(), Stream::default());
    send_pattern(&mut p.a, c, 1, &mut a_out, 3000);
    // B keeps writing until A's receive window and B's send buffer are full.
    p.run_until(500, |p| {
        send_pattern(&mut p.b, s, 2, &mut b_out, 20_000);
        false
    });
    let state = p.b.export(p.now, s).unwrap();
    assert_eq!(state.recv_queue.len(), 3000);
    assert!(!state.send_queue.is_empty());
    assert!(state.sent <= state.send_queue.len());
    assert_eq!(state.last_ack, state.recv_seq.wrapping_add(3000));
    // The queues are the streams' bytes at the right offsets.
    let first_unacked = b_out.sent - state.send_queue.len() as u64;
    for (i, b) in state.send_queue.iter().enumerate() {
        assert_eq!(
            *b,
            dpuproxy_tcp::pattern::pattern(2, first_unacked + i as u64)
        );
    }
    for (i, b) in state.recv_queue.iter().enumerate() {
        assert_eq!(*b, dpuproxy_tcp::pattern::pattern(1, i as u64));
    }
    // The handle is gone; the 4-tuple is held.
    assert_eq!(p.b.send_slice(s, b"x"), Err(TcpError::InvalidHandle));
    assert_eq!(p.b.held_count(), 1);
}

#[test]
fn held_tuple_drops_frames_silently_and_take_back_resumes() {
    let mut p = Pair::default_pair(14);
    let (c, s) = established(&mut p);
    let state = p.b.export(p.now, s).unwrap();
    // A sends to the held 4-tuple (a send buffer's worth): nothing answers,
    // nothing resets.
    let mut a_out = Stream::default();
    send_pattern(&mut p.a, c, 1, &mut a_out, 5000);
    let tx_before = p.b.stats().tx_frames;
    p.run_until(2000, |p| p.b.stats().held_drops >= 3);
    assert!(
        p.b.stats().held_drops >= 3,
        "A's retransmissions were not seen"
    );
    assert_eq!(p.b.stats().tx_frames, tx_before, "B answered a held tuple");
    assert!(p.a_events.iter().all(|e| !matches!(e, Event::Reset(_))));
    // Taking it back in the same stack: the connection goes on.
    let s2 = p.b.import(&state, None).unwrap();
    assert_eq!(p.b.held_count(), 0);
    let mut b_in = Stream::default();
    assert!(p.run_until(20_000, |p| {
        send_pattern(&mut p.a, c, 1, &mut a_out, 5000);
        recv_pattern(&mut p.b, s2, 1, &mut b_in).unwrap();
        b_in.received == 5000
    }));
    assert_eq!(b_in.bad, 0);
    assert!(!p.b_events.contains(&Event::Connected(s2)));
}

#[test]
fn export_refuses_connections_not_established() {
    let mut p = Pair::default_pair(15);
    let (c, s) = established(&mut p);
    p.a.shutdown(c).unwrap();
    assert!(p.run_until(1000, |p| p.b.state(s) == Ok(State::CloseWait)));
    assert_eq!(p.b.export(p.now, s), Err(TcpError::InvalidState));
    // Still B's, still usable.
    assert_eq!(p.b.send_slice(s, b"bye"), Ok(3));
    assert_eq!(p.b.held_count(), 0);
}

#[test]
fn import_refuses_bad_states_and_leaves_nothing_behind() {
    let mut p = Pair::default_pair(16);
    let (_c, s) = established(&mut p);
    let state = p.b.export(p.now, s).unwrap();
    let mut other = fresh_b(&p, 99);

    let foreign = ConnState {
        tuple: dpuproxy_tcp::FourTuple {
            local_addr: A,
            ..state.tuple
        },
        ..state.clone()
    };
    assert_eq!(other.import(&foreign, None), Err(TcpError::Unaddressable));

    // An acknowledgement beyond the bytes received, or sent bytes beyond
    // the queue: refused.
    let ahead = ConnState {
        last_ack: state.recv_seq.wrapping_add(10),
        ..state.clone()
    };
    assert_eq!(other.import(&ahead, None), Err(TcpError::InvalidState));
    let oversent = ConnState {
        sent: state.send_queue.len() + 1,
        ..state.clone()
    };
    assert_eq!(other.import(&oversent, None), Err(TcpError::InvalidState));
    assert_eq!(other.connection_count(), 0);

    // The 4-tuple of a live connection is refused; a held one is taken.
    let live = other.import(&state, None).unwrap();
    assert_eq!(other.import(&state, None), Err(TcpError::AddrInUse));
    assert_eq!(other.connection_count(), 1);
    assert_eq!(other.state(live), Ok(State::Established));
    assert_eq!(p.b.import(&state, None).map(|_| ()), Ok(()));
}

#[test]
fn export_right_after_a_read_whose_ack_is_still_delayed() {
    let mut p = Pair::default_pair(18);
    let (c, s) = established(&mut p);
    let (mut out, mut inn) = (Stream::default(), Stream::default());
    send_pattern(&mut p.a, c, 1, &mut out, 600);
    // Step only until the bytes are in B's receive queue, read them at
    // once, and export before B's delayed ACK (1 ms) can leave.
    assert!(p.run_until(1000, |p| p.b.recv_queue(s).unwrap_or(0) == 600));
    recv_pattern(&mut p.b, s, 1, &mut inn).unwrap();
    let state = p.b.export(p.now, s).unwrap();
    assert!(
        state.last_ack.wrapping_sub(state.recv_seq) as i32 <= 0 && state.last_ack != state.recv_seq,
        "the ACK for the read bytes had not left: last_ack {} recv_seq {}",
        state.last_ack,
        state.recv_seq
    );
    // The new owner continues, and acknowledges what the old one read.
    let mut next = fresh_b(&p, 77);
    let s2 = next.import(&state, None).unwrap();
    p.b = next;
    let total = 5000;
    assert!(p.run_until(50_000, |p| {
        send_pattern(&mut p.a, c, 1, &mut out, total);
        recv_pattern(&mut p.b, s2, 1, &mut inn).unwrap();
        inn.received == total
    }));
    assert_eq!(inn.bad, 0);
    assert!(p.a_events.iter().all(|e| !matches!(e, Event::Reset(_))));
}

#[test]
fn a_connection_moved_into_a_closed_window_probes_it() {
    let mut p = Pair::default_pair(19);
    let (c, s) = established(&mut p);
    let total = 40_000u64;
    let (mut out, mut inn) = (Stream::default(), Stream::default());
    // A does not read: its window closes with B's data in flight.
    p.run_until(3000, |p| {
        send_pattern(&mut p.b, s, 2, &mut out, total);
        false
    });
    let state = p.b.export(p.now, s).unwrap();
    assert_eq!(state.peer_window, 0, "A's window is closed");
    assert!(!state.send_queue.is_empty());
    // A reads now: its window update reaches only the held 4-tuple and is
    // lost. Only a probe from the new owner can find the open window.
    recv_pattern(&mut p.a, c, 2, &mut inn).unwrap();
    p.run_until(200, |_| false);
    let mut next = fresh_b(&p, 78);
    let s2 = next.import(&state, None).unwrap();
    p.b = next;
    assert!(p.run_until(200_000, |p| {
        send_pattern(&mut p.b, s2, 2, &mut out, total);
        recv_pattern(&mut p.a, c, 2, &mut inn).unwrap();
        inn.received == total
    }));
    assert_eq!(inn.bad, 0);
}

#[test]
fn a_hold_nobody_releases_expires() {
    let mut p = Pair::default_pair(20);
    let (_c, s) = established(&mut p);
    let state = p.b.export(p.now, s).unwrap();
    assert_eq!(p.b.held_count(), 1);
    // The hold (30 s by default) is one of the stack's deadlines: idle
    // stepping reaches it, and not before.
    let t0 = p.now;
    assert!(p.run_until(10_000, |p| p.b.held_count() == 0));
    let waited = p.now - t0;
    assert!(
        waited >= dpuproxy_tcp::Duration::from_secs(30)
            && waited < dpuproxy_tcp::Duration::from_secs(31),
        "released after {waited}"
    );
    assert_eq!(p.b.stats().held_expired, 1);
    assert!(!p.b.unhold(&state.tuple));
    // A released hold does not expire a later one of the same 4-tuple.
    let mut q = Pair::default_pair(21);
    let (_c, s) = established(&mut q);
    let state = q.b.export(q.now, s).unwrap();
    let s2 = q.b.import(&state, None).unwrap();
    q.now += dpuproxy_tcp::Duration::from_secs(10);
    q.step();
    let state = q.b.export(q.now, s2).unwrap();
    q.now += dpuproxy_tcp::Duration::from_secs(25);
    q.step();
    assert_eq!(
        q.b.held_count(),
        1,
        "the first hold's expiry left the second alone"
    );
    assert!(q.b.unhold(&state.tuple));
    assert_eq!(q.b.stats().held_expired, 0);
}

#[test]
fn tuples_list_live_connections_but_not_held_ones() {
    let mut p = Pair::default_pair(17);
    let (_c, s) = established(&mut p);
    let tuple = p.b.tuple(s).unwrap();
    let listed: Vec<_> = p.b.tuples().copied().collect();
    assert_eq!(listed, [tuple], "B's one connection");
    let state = p.b.export(p.now, s).unwrap();
    assert_eq!(state.tuple, tuple);
    assert_eq!(p.b.tuples().count(), 0, "a held 4-tuple is not listed");
    p.b.import(&state, None).unwrap();
    assert_eq!(p.b.tuples().copied().collect::<Vec<_>>(), [tuple]);
}

#[test]
fn an_import_takes_over_a_time_wait_record_of_the_same_tuple() {
    let mut p = Pair::default_pair(18);
    let (c, s) = established(&mut p);
    let state = p.b.export(p.now, s).unwrap();
    let s = p.b.import(&state, None).unwrap();
    // B closes first, A follows: B keeps a TIME-WAIT record of the tuple.
    p.b.close(s).unwrap();
    let mut a_closed = false;
    let reached = p.run_until(20_000, |p| {
        if !a_closed && p.a.state(c) == Ok(State::CloseWait) {
            p.a.close(c).unwrap();
            a_closed = true;
        }
        p.b.time_wait_count() == 1
    });
    assert!(reached, "B never reached TIME-WAIT");
    assert_eq!(p.b.tuples().copied().collect::<Vec<_>>(), [state.tuple]);
    // A connection of that tuple moving in (say, one the kernel opened on
    // a port whose old incarnation B remembers) takes the record's place.
    let id =
        p.b.import(&state, None)
            .expect("the TIME-WAIT record is taken over");
    assert_eq!(p.b.time_wait_count(), 0);
    assert_eq!(p.b.tuple(id).unwrap(), state.tuple);
}

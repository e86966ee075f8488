//! TIME-WAIT records: what is left of a connection after both FINs, in
//! place of its socket (see the crate doc).
//!
//! `settle` turns a socket that reached TIME-WAIT with nothing left to send
//! into a record (our and the peer's next sequence numbers, an expiry) in
//! the flow table, with one entry in the expiry queue. A record re-ACKs a
//! retransmitted FIN and restarts its 2MSL, ignores RSTs (RFC 1337), answers
//! an old SYN or a stray segment (data, SYN or FIN) with a bare ACK, and
//! gives way to a SYN for a listener that cannot belong to the old
//! connection (see [`is_new_incarnation`]). Records expire after
//! `time_wait`; beyond `max_time_wait` the oldest are dropped first.
//! Everything that reaches a record is checksum-verified first.

use smoltcp::phy::{Medium, TxToken};
use smoltcp::time::Instant;

use super::Stack;
use crate::flow::{FlowEntry, FourTuple, TimeWait};
use crate::frame::{self, Segment};

/// Room kept around the old connection's sequence space: more than any
/// receive window the peer could have been given, so that a new
/// incarnation's first window cannot overlap segments of the old one.
const OLD_SPACE_MARGIN: u32 = 1 << 20;

/// Whether a pure SYN reaching TIME-WAIT record `tw` opens a new
/// incarnation of the connection. RFC 1122 4.2.2.13 admits a SYN above
/// the old sequence space (`seq > rcv_nxt`). That alone refuses a client
/// whose clock-driven ISN (Linux: 64 ns ticks, past half the sequence
/// space every 137 s) went round since the old connection opened: the
/// record would answer its SYNs with ACKs, ignore its RSTs (RFC 1337) and
/// keep the client out until the record expires. So a SYN is also new
/// when it lies outside the old connection's space `[peer_isn,
/// rcv_nxt]` with [`OLD_SPACE_MARGIN`] on both sides: an old duplicate can
/// only carry a sequence number from that space. Without `peer_isn` (a
/// connection we opened), only the RFC 1122 rule applies.
pub(super) fn is_new_incarnation(seq: u32, tw: &TimeWait) -> bool {
    if frame::seq_gt(seq, tw.rcv_nxt) {
        return true;
    }
    let Some(isn) = tw.peer_isn else {
        return false;
    };
    let low = isn.wrapping_sub(OLD_SPACE_MARGIN);
    let guarded = u64::from(tw.rcv_nxt.wrapping_sub(isn)) + 2 * u64::from(OLD_SPACE_MARGIN);
    if guarded >= 1 << 31 {
        // The old connection moved gigabytes: too big a space to judge by.
        return false;
    }
    u64::from(seq.wrapping_sub(low)) > guarded
}

impl Stack {
    pub(super) fn ingress_time_wait<T: TxToken>(
        &mut self,
        now: Instant,
        vnow: Instant,
        frame: &[u8],
        tx: T,
        seg: &Segment,
        tw: TimeWait,
    ) {
        if !frame::checksums_ok(self.medium, frame, &self.caps.checksum) {
            return;
        }
        if seg.rst {
            // RFC 1337: a RST must not cut TIME-WAIT short.
            return;
        }
        if seg.is_pure_syn() {
            if is_new_incarnation(seg.seq, &tw)
                && let Some(l) = self.listener_for(seg)
            {
                // A new incarnation of the connection (RFC 1122 4.2.2.13).
                self.flows.remove(&seg.tuple);
                self.tw_count -= 1;
                self.stats.time_wait_reused += 1;
                self.admit(l, vnow, frame, tx, seg, true);
                return;
            }
            self.time_wait_ack(tx, seg, tw);
            return;
        }
        if seg.fin || seg.syn || seg.payload_len > 0 {
            // Our final ACK was lost (or this is a stray): say where we are.
            self.time_wait_ack(tx, seg, tw);
            if seg.fin {
                // Restart 2MSL. The record keeps its one queue entry, which
                // follows the new deadline when it comes up (`pop_time_wait`).
                let expires_us = now.total_micros().saturating_add(self.tw_duration_us());
                if let Some(FlowEntry::TimeWait(r)) = self.flows.get_mut(&seg.tuple) {
                    r.expires_us = expires_us;
                }
            }
        }
    }

    fn time_wait_ack<T: TxToken>(&mut self, tx: T, seg: &Segment, tw: TimeWait) {
        if self.medium == Medium::Ethernet && (seg.eth_src.is_none() || self.our_mac.is_none()) {
            return;
        }
        let len = frame::ack_len(self.medium);
        let ack = frame::BareAck {
            medium: self.medium,
            our_mac: self.our_mac,
            peer_mac: seg.eth_src,
            tuple: seg.tuple,
            seq: tw.snd_nxt,
            ack: tw.rcv_nxt,
        };
        let caps = &self.caps.checksum;
        tx.consume(len, |buf| ack.write(buf, caps));
        self.stats.tx_frames += 1;
        self.stats.time_wait_acks += 1;
    }

    fn tw_duration_us(&self) -> i64 {
        i64::try_from(self.cfg.time_wait.total_micros()).unwrap_or(i64::MAX / 4)
    }

    pub(super) fn expire_time_wait(&mut self, now: Instant) {
        let now_us = now.total_micros();
        while self.tw_queue.next_at().is_some_and(|at| at <= now_us) {
            if self.pop_time_wait() {
                self.stats.time_wait_expired += 1;
            }
        }
    }

    /// Take the queue entry with the earliest deadline. If that is still its
    /// record's deadline, remove the record (true). If the record's 2MSL was
    /// restarted since, queue the entry again at the new deadline; if the
    /// record is gone, drop the entry.
    fn pop_time_wait(&mut self) -> bool {
        let Some((tuple, expires)) = self.tw_queue.pop() else {
            return false;
        };
        match self.flows.get(&tuple) {
            Some(FlowEntry::TimeWait(tw)) if tw.expires_us == expires => {
                self.flows.remove(&tuple);
                self.tw_count -= 1;
                true
            }
            Some(FlowEntry::TimeWait(tw)) if tw.expires_us > expires => {
                self.tw_queue.push(tw.expires_us, tuple);
                false
            }
            _ => false,
        }
    }

    pub(super) fn enter_time_wait(
        &mut self,
        tuple: FourTuple,
        snd_nxt: u32,
        rcv_nxt: u32,
        peer_isn: Option<u32>,
    ) {
        let expires_us = self
            .now
            .total_micros()
            .saturating_add(self.tw_duration_us());
        let prev = self.flows.insert(
            tuple,
            FlowEntry::TimeWait(TimeWait {
                expires_us,
                snd_nxt,
                rcv_nxt,
                peer_isn,
            }),
        );
        if !matches!(prev, Some(FlowEntry::TimeWait(_))) {
            self.tw_count += 1;
            self.tw_queue.push(expires_us, tuple);
        }
        self.stats.time_wait_created += 1;
        while self.tw_count > self.cfg.max_time_wait {
            if self.pop_time_wait() {
                self.stats.time_wait_evicted += 1;
            }
        }
    }
}

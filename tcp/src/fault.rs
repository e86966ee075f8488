//! A fault-injecting `Device` wrapper for tests and the benchmark.
//!
//! Faults are applied to the frames transmitted to the inner device (received
//! frames pass through untouched; on a wire joining two stacks, each side's
//! transmit faults are the other side's receive faults). They are drawn from
//! a seeded SplitMix64, so a seed replays the same faults for the same
//! traffic.
//! - drop: the frame vanishes;
//! - duplicate: the frame is delivered twice;
//! - reorder: the frame is held back until 1 to 3 later frames have passed
//!   (or 1 ms of the caller's clock has gone by, so the last frame of a burst
//!   is not held forever);
//! - corrupt: one byte past the link-layer header is XORed with a non-zero
//!   value. The Internet checksums cover every byte from the IP header on, so
//!   the stack must drop every corrupted frame; a real NIC's FCS check is what
//!   covers the Ethernet header, which is why that is left alone.

use std::collections::VecDeque;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::{Duration, Instant};

use crate::flow::splitmix;

/// The longest a reordered frame is held (in the caller's clock).
const REORDER_WINDOW: Duration = Duration::from_millis(1);

/// Fault probabilities, each within 0.0 ..= 1.0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Probability that a frame is dropped.
    pub drop: f64,
    /// Probability that a frame is held back behind later ones.
    pub reorder: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability that one byte of a frame is corrupted.
    pub corrupt: f64,
}

/// What was done to the transmitted frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Frames that entered the fault stage.
    pub frames: u64,
    /// Dropped.
    pub dropped: u64,
    /// Held back behind later frames.
    pub reordered: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Corrupted.
    pub corrupted: u64,
    /// Lost because the inner device had no transmit slot when a held or
    /// duplicated frame was due.
    pub lost_full: u64,
}

#[derive(Debug)]
struct Held {
    frame: Vec<u8>,
    /// Later frames still to let pass.
    remaining: u32,
    deadline: Instant,
}

#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((splitmix(&mut self.0) >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn below(&mut self, n: u64) -> u64 {
        splitmix(&mut self.0) % n.max(1)
    }
}

#[derive(Debug)]
struct State {
    rng: Rng,
    faults: Faults,
    stats: FaultStats,
    held: Vec<Held>,
    /// Frames due for delivery (released or duplicated).
    due: VecDeque<Vec<u8>>,
    skip: usize,
}

impl State {
    fn decide(&mut self) -> (Fate, bool, bool) {
        let f = self.faults;
        let dropped = self.rng.chance(f.drop);
        let corrupt = !dropped && self.rng.chance(f.corrupt);
        let dup = !dropped && self.rng.chance(f.duplicate);
        let hold = !dropped && self.rng.chance(f.reorder);
        let stats = &mut self.stats;
        stats.frames += 1;
        stats.dropped += u64::from(dropped);
        stats.corrupted += u64::from(corrupt);
        stats.duplicated += u64::from(dup);
        stats.reordered += u64::from(hold);
        let fate = if dropped {
            Fate::Drop
        } else if hold {
            Fate::Hold
        } else {
            Fate::Pass
        };
        (fate, corrupt, dup)
    }

    fn corrupt(&mut self, frame: &mut [u8]) {
        if frame.len() > self.skip {
            let i = self.skip + self.rng.below((frame.len() - self.skip) as u64) as usize;
            frame[i] ^= 1 + self.rng.below(255) as u8;
        }
    }

    /// A frame passed through: count it against held frames, release those
    /// whose turn (or time) has come.
    fn pass(&mut self, now: Instant, passed: bool) {
        let mut i = 0;
        while i < self.held.len() {
            let h = &mut self.held[i];
            if passed {
                h.remaining = h.remaining.saturating_sub(1);
            }
            if h.remaining == 0 || h.deadline <= now {
                let h = self.held.swap_remove(i);
                self.due.push_back(h.frame);
            } else {
                i += 1;
            }
        }
    }
}

/// Wraps any device and injects faults into what is sent (see the module doc).
#[derive(Debug)]
pub struct FaultyDevice<D> {
    inner: D,
    state: State,
}

/// Decision for one frame.
enum Fate {
    Drop,
    Hold,
    Pass,
}

impl<D: Device> FaultyDevice<D> {
    /// Wrap `inner`; no faults until set.
    pub fn new(inner: D, seed: u64) -> Self {
        let skip = if inner.capabilities().medium == Medium::Ethernet {
            14
        } else {
            0
        };
        Self {
            inner,
            state: State {
                rng: Rng(seed),
                faults: Faults::default(),
                stats: FaultStats::default(),
                held: Vec::new(),
                due: VecDeque::new(),
                skip,
            },
        }
    }

    /// Faults applied to frames transmitted to the inner device.
    pub fn set_tx_faults(&mut self, faults: Faults) {
        self.state.faults = faults;
    }

    /// Counters for transmitted frames.
    pub fn stats(&self) -> FaultStats {
        self.state.stats
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device, mutably.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// When `flush` next has something to send: the earliest time a held
    /// frame is released on its own, or the distant past if frames are already
    /// due (`None`: nothing held or due).
    pub fn poll_at(&self) -> Option<Instant> {
        let due = (!self.state.due.is_empty()).then_some(Instant::from_micros(i64::MIN));
        self.state.held.iter().map(|h| h.deadline).chain(due).min()
    }

    /// Send frames whose time has come.
    pub fn flush(&mut self, now: Instant) {
        self.state.pass(now, false);
        while let Some(frame) = self.state.due.pop_front() {
            match self.inner.transmit(now) {
                Some(t) => phy::TxToken::consume(t, frame.len(), |b| b.copy_from_slice(&frame)),
                None => self.state.stats.lost_full += 1,
            }
        }
    }
}

/// Transmit token: applies the faults.
pub struct FaultyTx<'a, T> {
    inner: Option<T>,
    state: &'a mut State,
    now: Instant,
}

impl<T> core::fmt::Debug for FaultyTx<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FaultyTx").finish_non_exhaustive()
    }
}

impl<T: phy::TxToken> phy::TxToken for FaultyTx<'_, T> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let Self { inner, state, now } = self;
        let (fate, corrupt, dup) = state.decide();
        let mut scratch;
        let (r, frame) = match (fate, inner) {
            (Fate::Pass, Some(t)) => {
                return t.consume(len, |buf| {
                    let r = f(buf);
                    if dup {
                        state.due.push_back(buf.to_vec());
                    }
                    if corrupt {
                        state.corrupt(buf);
                    }
                    state.pass(now, true);
                    r
                });
            }
            (Fate::Drop, _) | (_, None) => {
                scratch = vec![0u8; len];
                (f(&mut scratch), None)
            }
            (Fate::Hold, Some(_)) => {
                scratch = vec![0u8; len];
                let r = f(&mut scratch);
                (r, Some(scratch))
            }
        };
        if let Some(mut frame) = frame {
            if corrupt {
                state.corrupt(&mut frame);
            }
            if dup {
                state.due.push_back(frame.clone());
            }
            let remaining = 1 + state.rng.below(3) as u32;
            state.held.push(Held {
                frame,
                remaining,
                deadline: now + REORDER_WINDOW,
            });
        }
        r
    }
}

/// Received frames pass through unchanged (faults are drawn on transmit),
/// so the frames waiting are the inner device's.
impl<D: crate::RxPeek> crate::RxPeek for FaultyDevice<D> {
    fn peek_rx(&self, ahead: usize, f: &mut dyn FnMut(&[u8])) {
        self.inner.peek_rx(ahead, f);
    }
}

impl<D: Device> Device for FaultyDevice<D> {
    type RxToken<'a>
        = D::RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = FaultyTx<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.flush(now);
        // Received frames pass through. A reply uses the inner device's
        // paired token, but only if `transmit` would give a token now: a
        // reply meeting a full device is discarded by the fault stage like
        // any frame sent without a slot (no reorder or corruption drawn), so
        // a seed draws the same faults whatever the device does with a paired
        // token it has no room for.
        let can_reply = self.inner.transmit(now).is_some();
        let FaultyDevice { inner, state } = self;
        let (rx, tx) = inner.receive(now)?;
        Some((
            rx,
            FaultyTx {
                inner: can_reply.then_some(tx),
                state,
                now,
            },
        ))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        self.flush(now);
        let FaultyDevice { inner, state } = self;
        let t = inner.transmit(now)?;
        Some(FaultyTx {
            inner: Some(t),
            state,
            now,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}
